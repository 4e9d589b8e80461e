"""Metrics: the Prometheus text exactly, escaping, cumulative buckets, the JSON snapshot."""

from __future__ import annotations

import pytest

from tcmd.observe.metrics import Counter, Gauge, Histogram, Registry, standard


def test_prometheus_text_of_a_small_registry() -> None:
    r = Registry()
    jobs = r.counter("jobs_total", "Jobs done.", ["outcome"])
    temp = r.gauge("temperature", "Current temperature.")
    latency = r.histogram("latency_seconds", "Latency.", [0.1, 1])
    jobs.inc(outcome="ok")
    jobs.inc(2, outcome="ok")
    jobs.inc(outcome="bad")
    temp.set(21.5)
    for value in (0.05, 0.1, 0.5, 3):
        latency.observe(value)
    assert r.prometheus() == (
        "# HELP jobs_total Jobs done.\n"
        "# TYPE jobs_total counter\n"
        'jobs_total{outcome="bad"} 1\n'
        'jobs_total{outcome="ok"} 3\n'
        "# HELP temperature Current temperature.\n"
        "# TYPE temperature gauge\n"
        "temperature 21.5\n"
        "# HELP latency_seconds Latency.\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{le="0.1"} 2\n'
        'latency_seconds_bucket{le="1"} 3\n'
        'latency_seconds_bucket{le="+Inf"} 4\n'
        "latency_seconds_sum 3.65\n"
        "latency_seconds_count 4\n"
    )


def test_unlabelled_metrics_show_zero_and_labelled_ones_nothing_until_used() -> None:
    r = Registry()
    r.counter("a_total", "A.")
    r.gauge("b", "B.", ["x"])
    r.histogram("c", "C.", [1])
    assert r.prometheus() == (
        "# HELP a_total A.\n# TYPE a_total counter\na_total 0\n"
        "# HELP b B.\n# TYPE b gauge\n"
        "# HELP c C.\n# TYPE c histogram\n"
        'c_bucket{le="1"} 0\nc_bucket{le="+Inf"} 0\nc_sum 0\nc_count 0\n'
    )


def test_label_values_and_help_are_escaped() -> None:
    r = Registry()
    g = r.gauge("g", 'Help with \\ and "quotes"\nand a newline.', ["path"])
    g.set(1, path='C:\\dir "x"\nnext')
    assert r.prometheus().splitlines() == [
        '# HELP g Help with \\\\ and "quotes"\\nand a newline.',
        "# TYPE g gauge",
        'g{path="C:\\\\dir \\"x\\"\\nnext"} 1',
    ]


def test_histogram_buckets_are_cumulative_with_labels() -> None:
    h = Histogram("h", "H.", [1, 2, 5], ["kind"])
    for value in (0.5, 1, 1.5, 2, 4, 9, 9):
        h.observe(value, kind="a")
    h.observe(3, kind="b")
    lines = h.exposition()
    assert lines[:6] == [
        'h_bucket{kind="a",le="1"} 2',
        'h_bucket{kind="a",le="2"} 4',
        'h_bucket{kind="a",le="5"} 5',
        'h_bucket{kind="a",le="+Inf"} 7',
        'h_sum{kind="a"} 27',
        'h_count{kind="a"} 7',
    ]
    assert lines[6:] == [
        'h_bucket{kind="b",le="1"} 0',
        'h_bucket{kind="b",le="2"} 0',
        'h_bucket{kind="b",le="5"} 1',
        'h_bucket{kind="b",le="+Inf"} 1',
        'h_sum{kind="b"} 3',
        'h_count{kind="b"} 1',
    ]


def test_snapshot() -> None:
    r = Registry()
    r.counter("c_total", "C.", ["x"]).inc(x=1)
    r.gauge("g", "G.").set(2.5)
    r.histogram("h", "H.", [1, 10]).observe(5)
    assert r.snapshot() == {
        "c_total": {
            "type": "counter",
            "help": "C.",
            "samples": [{"labels": {"x": "1"}, "value": 1}],
        },
        "g": {"type": "gauge", "help": "G.", "samples": [{"labels": {}, "value": 2.5}]},
        "h": {
            "type": "histogram",
            "help": "H.",
            "samples": [
                {"labels": {}, "buckets": {"1": 0, "10": 1, "+Inf": 1}, "count": 1, "sum": 5.0}
            ],
        },
    }


def test_registry_returns_the_existing_metric_and_refuses_another_shape() -> None:
    r = Registry()
    c = r.counter("x_total", "X.", ["a"])
    assert r.counter("x_total", "X.", ["a"]) is c
    with pytest.raises(ValueError, match="another shape"):
        r.counter("x_total", "X.", ["b"])
    with pytest.raises(ValueError, match="another shape"):
        r.gauge("x_total", "X.", ["a"])
    h = r.histogram("h", "H.", [1, 2])
    with pytest.raises(ValueError, match="another shape"):
        r.histogram("h", "H.", [1, 3])
    assert r.histogram("h", "H.", [1, 2]) is h


def test_labels_must_match_exactly() -> None:
    c = Counter("c_total", "C.", ["a", "b"])
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(a="1")
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(a="1", b="2", z="3")
    c.inc(a=1, b=None)  # values become strings
    assert c.value(a="1", b="None") == 1


def test_refusals() -> None:
    with pytest.raises(ValueError, match="decrease"):
        Counter("c_total", "C.").inc(-1)
    with pytest.raises(ValueError, match="metric name"):
        Counter("bad-name", "B.")
    with pytest.raises(ValueError, match="label name"):
        Histogram("h", "H.", [1], ["le"])
    with pytest.raises(ValueError, match="label name"):
        Gauge("g", "G.", ["value"])
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "H.", [2, 1])


def test_gauge_set_inc_and_remove() -> None:
    g = Gauge("g", "G.", ["instance"])
    g.set(0.9, instance="S1")
    g.inc(-0.4, instance="S1")
    g.set(1, instance="S2")
    assert g.value(instance="S1") == pytest.approx(0.5)
    g.remove(instance="S2")
    assert [s["labels"] for s in g.snapshot()["samples"]] == [{"instance": "S1"}]
    g.clear()
    assert g.snapshot()["samples"] == []


def test_collectors_run_before_each_export() -> None:
    r = Registry()
    g = r.gauge("live", "Live things.", ["state"])
    states = {"idle": 2}

    def collect() -> None:
        for state, n in states.items():
            g.set(n, state=state)

    r.before_collect(collect)
    assert 'live{state="idle"} 2' in r.prometheus()
    states["idle"] = 5
    assert r.snapshot()["live"]["samples"] == [{"labels": {"state": "idle"}, "value": 5}]


def test_standard_metrics() -> None:
    r = Registry()
    m = standard(r)
    m.tasks.inc(outcome="completed")
    m.task_duration.observe(42)
    m.queue_wait.observe(0.3)
    m.health_score.set(0.75, instance="S1")
    m.recoveries.inc(action="restart", outcome="ok")
    m.instances.set(3, state="idle")
    m.hook_events.inc(event="Stop")
    assert standard(r).tasks is m.tasks  # finding them again, not making twins
    text = r.prometheus()
    for line in (
        'tcm_tasks_total{outcome="cancelled"} 0',
        'tcm_tasks_total{outcome="completed"} 1',
        'tcm_task_duration_seconds_bucket{le="60"} 1',
        'tcm_queue_wait_seconds_bucket{le="0.5"} 1',
        'tcm_instance_health_score{instance="S1"} 0.75',
        'tcm_recoveries_total{action="restart",outcome="ok"} 1',
        'tcm_instances{state="idle"} 3',
        'tcm_hook_events_total{event="Stop"} 1',
    ):
        assert line in text.splitlines()

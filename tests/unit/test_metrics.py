"""Metrics: the Prometheus text exactly, escaping, cumulative buckets, the JSON snapshot."""

from __future__ import annotations

import socket

import pytest

from tcmd.observe.metrics import Counter, Gauge, Histogram, Registry, standard

NODE = "n1"


def test_prometheus_text_of_a_small_registry() -> None:
    r = Registry(node=NODE)
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
        'jobs_total{node="n1",outcome="ok"} 3.0\n'
        'jobs_total{node="n1",outcome="bad"} 1.0\n'
        "# HELP temperature Current temperature.\n"
        "# TYPE temperature gauge\n"
        'temperature{node="n1"} 21.5\n'
        "# HELP latency_seconds Latency.\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{le="0.1",node="n1"} 2.0\n'
        'latency_seconds_bucket{le="1.0",node="n1"} 3.0\n'
        'latency_seconds_bucket{le="+Inf",node="n1"} 4.0\n'
        'latency_seconds_count{node="n1"} 4.0\n'
        'latency_seconds_sum{node="n1"} 3.65\n'
    )


def test_every_series_carries_the_node_and_the_node_defaults_to_the_hostname() -> None:
    r = Registry()
    assert r.node == socket.gethostname()
    standard(r).recoveries.inc(action="restart", outcome="ok")
    series = [line for line in r.prometheus().splitlines() if not line.startswith("#")]
    assert series
    assert all(f'node="{r.node}"' in line for line in series)
    assert "_created" not in r.prometheus()  # prometheus_client's creation times left out
    with pytest.raises(ValueError, match="label name"):
        r.gauge("g", "G.", ["node"])  # the node is the registry's, never a caller's


def test_each_daemon_has_its_own_registry() -> None:
    a, b = Registry(node="a"), Registry(node="b")
    standard(a).tasks.inc(outcome="failed")
    assert standard(b).tasks.value(outcome="failed") == 0  # no process-global state
    assert 'tcm_tasks_total{node="b",outcome="failed"} 0.0' in b.prometheus()


def test_unlabelled_metrics_show_zero_and_labelled_ones_nothing_until_used() -> None:
    r = Registry(node=NODE)
    r.counter("a_total", "A.")
    r.gauge("b", "B.", ["x"])
    r.histogram("c", "C.", [1])
    assert r.prometheus() == (
        '# HELP a_total A.\n# TYPE a_total counter\na_total{node="n1"} 0.0\n'
        "# HELP b B.\n# TYPE b gauge\n"
        "# HELP c C.\n# TYPE c histogram\n"
        'c_bucket{le="1.0",node="n1"} 0.0\nc_bucket{le="+Inf",node="n1"} 0.0\n'
        'c_count{node="n1"} 0.0\nc_sum{node="n1"} 0.0\n'
    )


def test_label_values_and_help_are_escaped() -> None:
    r = Registry(node=NODE)
    g = r.gauge("g", 'Help with \\ and "quotes"\nand a newline.', ["path"])
    g.set(1, path='C:\\dir "x"\nnext')
    assert r.prometheus().splitlines() == [
        '# HELP g Help with \\\\ and "quotes"\\nand a newline.',
        "# TYPE g gauge",
        'g{node="n1",path="C:\\\\dir \\"x\\"\\nnext"} 1.0',
    ]


def test_histogram_buckets_are_cumulative_with_labels() -> None:
    r = Registry(node=NODE)
    h = r.histogram("h", "H.", [1, 2, 5], ["kind"])
    for value in (0.5, 1, 1.5, 2, 4, 9, 9):
        h.observe(value, kind="a")
    h.observe(3, kind="b")
    lines = r.prometheus().splitlines()[2:]
    assert lines[:6] == [
        'h_bucket{kind="a",le="1.0",node="n1"} 2.0',
        'h_bucket{kind="a",le="2.0",node="n1"} 4.0',
        'h_bucket{kind="a",le="5.0",node="n1"} 5.0',
        'h_bucket{kind="a",le="+Inf",node="n1"} 7.0',
        'h_count{kind="a",node="n1"} 7.0',
        'h_sum{kind="a",node="n1"} 27.0',
    ]
    assert lines[6:] == [
        'h_bucket{kind="b",le="1.0",node="n1"} 0.0',
        'h_bucket{kind="b",le="2.0",node="n1"} 0.0',
        'h_bucket{kind="b",le="5.0",node="n1"} 1.0',
        'h_bucket{kind="b",le="+Inf",node="n1"} 1.0',
        'h_count{kind="b",node="n1"} 1.0',
        'h_sum{kind="b",node="n1"} 3.0',
    ]
    assert h.snapshot()["samples"][1] == {
        "labels": {"kind": "b"},
        "buckets": {"1": 0, "2": 0, "5": 1, "+Inf": 1},
        "count": 1,
        "sum": 3.0,
    }


def test_snapshot_is_the_json_face_without_the_node() -> None:
    r = Registry(node=NODE)
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
    assert [type(s["value"]) for s in r.snapshot()["c_total"]["samples"]] == [int]  # as before


def test_registry_returns_the_existing_metric_and_refuses_another_shape() -> None:
    r = Registry(node=NODE)
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
    c = Counter("c_total", "C.", ["a", "b"], node=NODE)
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(a="1")
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(a="1", b="2", z="3")
    c.inc(a=1, b=None)  # values become strings
    assert c.value(a="1", b="None") == 1


def test_refusals() -> None:
    with pytest.raises(ValueError, match="decrease"):
        Counter("c_total", "C.", node=NODE).inc(-1)
    with pytest.raises(ValueError, match="metric name"):
        Counter("bad-name_total", "B.", node=NODE)
    with pytest.raises(ValueError, match="_total"):
        Counter("jobs", "J.", node=NODE)
    with pytest.raises(ValueError, match="label name"):
        Histogram("h", "H.", [1], ["le"], node=NODE)
    with pytest.raises(ValueError, match="label name"):
        Gauge("g", "G.", ["value"], node=NODE)
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "H.", [2, 1], node=NODE)


def test_gauge_set_inc_and_remove() -> None:
    g = Gauge("g", "G.", ["instance"], node=NODE)
    g.set(0.9, instance="S1")
    g.inc(-0.4, instance="S1")
    g.set(1, instance="S2")
    assert g.value(instance="S1") == pytest.approx(0.5)
    g.remove(instance="S2")
    g.remove(instance="never-set")  # nothing to forget: no error
    assert [s["labels"] for s in g.snapshot()["samples"]] == [{"instance": "S1"}]
    g.clear()
    assert g.snapshot()["samples"] == []
    g.set_all({("S1",): 1, ("S2",): 2})
    g.set_all({("S2",): 3, ("S3",): 4})  # what a collector does: S1 is gone
    assert [(s["labels"]["instance"], s["value"]) for s in g.snapshot()["samples"]] == [
        ("S2", 3),
        ("S3", 4),
    ]
    with pytest.raises(ValueError, match="takes labels"):
        g.set_all({("S1", "x"): 1})


def test_collectors_run_before_each_export() -> None:
    r = Registry(node=NODE)
    g = r.gauge("live", "Live things.", ["state"])
    states = {"idle": 2}

    def collect() -> None:
        for state, n in states.items():
            g.set(n, state=state)

    r.before_collect(collect)
    assert 'live{node="n1",state="idle"} 2.0' in r.prometheus()
    states["idle"] = 5
    assert r.snapshot()["live"]["samples"] == [{"labels": {"state": "idle"}, "value": 5}]


def test_standard_metrics() -> None:
    r = Registry(node=NODE)
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
        'tcm_tasks_total{node="n1",outcome="cancelled"} 0.0',
        'tcm_tasks_total{node="n1",outcome="completed"} 1.0',
        'tcm_task_duration_seconds_bucket{le="60.0",node="n1"} 1.0',
        'tcm_queue_wait_seconds_bucket{le="0.5",node="n1"} 1.0',
        'tcm_instance_health_score{instance="S1",node="n1"} 0.75',
        'tcm_recoveries_total{action="restart",node="n1",outcome="ok"} 1.0',
        'tcm_instances{node="n1",state="idle"} 3.0',
        'tcm_hook_events_total{event="Stop",node="n1"} 1.0',
    ):
        assert line in text.splitlines()

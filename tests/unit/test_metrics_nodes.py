"""NodeSum: two nodes' JSON snapshots shown side by side, counters and histograms summed."""

from __future__ import annotations

from typing import Any

import orjson

from tcmd.observe.metrics import Registry, standard
from tcmd.observe.nodes import ALL, NodeSum


def two_nodes() -> dict[str, dict[str, Any]]:
    """The JSON faces two daemons would publish, through JSON as they travel."""
    a, b = Registry(node="a"), Registry(node="b")
    ma, mb = standard(a), standard(b)
    ma.tasks.inc(3, outcome="completed")
    mb.tasks.inc(2, outcome="completed")
    mb.tasks.inc(outcome="failed")
    ma.task_duration.observe(4)
    mb.task_duration.observe(40)
    mb.task_duration.observe(4000)
    ma.health_score.set(100, instance="exec_1")
    mb.health_score.set(40, instance="exec_2")
    mb.hook_events.inc(5, event="Stop")  # a series only one node has
    return {n: orjson.loads(orjson.dumps(r.snapshot())) for n, r in (("a", a), ("b", b))}


def samples(view: dict[str, Any], name: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = view[name]["samples"]
    return result


def test_counters_per_node_and_summed() -> None:
    view = NodeSum(two_nodes()).snapshot()
    assert view["tcm_tasks_total"]["type"] == "counter"
    completed = [
        s for s in samples(view, "tcm_tasks_total") if s["labels"]["outcome"] == "completed"
    ]
    assert completed == [
        {"labels": {"node": "a", "outcome": "completed"}, "value": 3},
        {"labels": {"node": "b", "outcome": "completed"}, "value": 2},
        {"labels": {"node": ALL, "outcome": "completed"}, "value": 5},
    ]
    assert samples(view, "tcm_hook_events_total") == [
        {"labels": {"node": "b", "event": "Stop"}, "value": 5},
        {"labels": {"node": ALL, "event": "Stop"}, "value": 5},
    ]


def test_histograms_summed_bucket_by_bucket() -> None:
    view = NodeSum(two_nodes()).snapshot()
    total = samples(view, "tcm_task_duration_seconds")[-1]
    assert total["labels"] == {"node": ALL}
    assert (total["count"], total["sum"]) == (3, 4044.0)
    assert total["buckets"]["5"] == 1 and total["buckets"]["60"] == 2
    assert total["buckets"]["7200"] == 3 and total["buckets"]["+Inf"] == 3


def test_gauges_are_shown_per_node_not_summed() -> None:
    view = NodeSum(two_nodes()).snapshot()
    assert samples(view, "tcm_instance_health_score") == [
        {"labels": {"node": "a", "instance": "exec_1"}, "value": 100},
        {"labels": {"node": "b", "instance": "exec_2"}, "value": 40},
    ]


def test_prometheus_text_with_a_node_label_per_node_and_the_totals() -> None:
    lines = NodeSum(two_nodes()).prometheus().splitlines()
    for line in (
        "# TYPE tcm_tasks_total counter",
        'tcm_tasks_total{node="a",outcome="completed"} 3.0',
        'tcm_tasks_total{node="b",outcome="completed"} 2.0',
        'tcm_tasks_total{node="*",outcome="completed"} 5.0',
        'tcm_tasks_total{node="*",outcome="failed"} 1.0',
        "# TYPE tcm_task_duration_seconds histogram",
        'tcm_task_duration_seconds_bucket{le="60.0",node="*"} 2.0',
        'tcm_task_duration_seconds_count{node="*"} 3.0',
        'tcm_task_duration_seconds_sum{node="*"} 4044.0',
        'tcm_instance_health_score{instance="exec_2",node="b"} 40.0',
    ):
        assert line in lines
    assert not any("_created" in line for line in lines)
    assert not any('tcm_instance_health_score{instance="exec_1",node="*"' in ln for ln in lines)


def test_nodes_that_disagree_are_shown_but_not_summed() -> None:
    a, b = Registry(node="a"), Registry(node="b")
    a.histogram("h_seconds", "H.", [1, 2]).observe(1)
    b.histogram("h_seconds", "H.", [1, 5]).observe(1)  # another version's buckets
    a.counter("x_total", "X.").inc()
    b.gauge("x_total", "X.").set(7)  # another type under the same name
    view = NodeSum({"a": a.snapshot(), "b": b.snapshot()}).snapshot()
    assert [s["labels"] for s in samples(view, "h_seconds")] == [{"node": "a"}, {"node": "b"}]
    assert samples(view, "x_total") == [
        {"labels": {"node": "a"}, "value": 1},
        {"labels": {"node": ALL}, "value": 1},
    ]
    NodeSum({"a": a.snapshot(), "b": b.snapshot()}).prometheus()  # still valid text


def test_no_nodes_no_samples() -> None:
    assert NodeSum({}).snapshot() == {}
    assert NodeSum({}).prometheus() == ""

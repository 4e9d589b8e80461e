"""Task graphs, pure logic: checking dependsOn, readiness and cancellation, hand-over."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from tcmd.store.jsonfile import JsonFileStore
from tcmd.work.graph import Graph, GraphError, check
from tcmd.work.handoff import RESULT_CAP_CHARS, RESULTS_HEADING, TOTAL_CAP_CHARS, Outcome, hand_over
from tcmd.work.queue.base import Job, JobState, RetryPolicy
from tcmd.work.queue.local import LocalJobQueue
from tcmd.work.waiting import Waiting


def test_check_names_unknown_ids_self_dependencies_and_one_cycle() -> None:
    check([("a", []), ("b", ["a"]), ("c", ["a", "b"])])
    with pytest.raises(
        GraphError, match=r"tasks\[1\]\.dependsOn: b depends on 'x', which is no task"
    ):
        check([("a", []), ("b", ["x"])])
    with pytest.raises(GraphError, match=r"tasks\[0\]\.dependsOn: a depends on itself"):
        check([("a", ["a"])])
    with pytest.raises(GraphError, match=r"^tasks: dependsOn makes a cycle: a -> b -> a$"):
        check([("a", ["b"]), ("b", ["a"])])
    with pytest.raises(GraphError) as err:  # the cycle behind a root and a tail
        check([("r", []), ("a", ["r", "c"]), ("b", ["a"]), ("c", ["b"]), ("t", ["c"])])
    assert err.value.field == "tasks"
    assert str(err.value).endswith("a -> b -> c -> a")


def test_check_is_linear_for_ten_thousand_tasks_and_twenty_thousand_edges() -> None:
    tasks = [(f"t{i}", [f"t{i - 1}", f"t{i - 2}"] if i > 1 else []) for i in range(10_000)]
    began = time.perf_counter()
    check(tasks)
    assert time.perf_counter() - began < 0.5


def diamond(**kw: object) -> Graph:
    return Graph({"b": ["a"], "c": ["a"], "d": ["b", "c"]}, pending=["b", "c", "d"], **kw)  # type: ignore[arg-type]


def test_a_diamond_releases_in_order() -> None:
    g = diamond()
    assert g.end("a", completed=True, why="") == (["b", "c"], [])
    assert g.end("b", completed=True, why="") == ([], [])
    assert g.end("b", completed=True, why="") == ([], [])  # a second report changes nothing
    assert g.end("c", completed=True, why="") == (["d"], [])
    assert not g.pending


def test_a_failure_cancels_its_dependents_transitively_unless_they_run_anyway() -> None:
    g = Graph({"b": ["a"], "c": ["b"], "d": ["c"]}, pending=["b", "c", "d"])
    assert g.end("a", completed=False, why="dependency a failed") == (
        [],
        [("b", "dependency a failed"), ("c", "dependency a failed"), ("d", "dependency a failed")],
    )
    g = diamond(run_anyway=["d"])
    g.end("a", completed=True, why="")
    assert g.end("b", completed=False, why="dependency b failed") == ([], [])
    assert g.end("c", completed=True, why="") == (["d"], [])


def test_cancel_all_ends_the_waiting_ones() -> None:
    g = diamond()
    g.end("a", completed=True, why="")
    assert g.cancel_all() == ["d"]  # b and c were released
    assert g.end("c", completed=True, why="") == ([], [])


def test_hand_over_fills_placeholders_and_appends_the_rest() -> None:
    task = {"instruction": "merge {{b.result}} with {{ c.result }}", "context": "why"}
    done = [
        Outcome("b", True, "B's text"),
        Outcome("c", False, "boom", "failed"),
        Outcome("e", True, "E"),
    ]
    out = hand_over(task, done, for_shell=False)
    assert out["instruction"] == "merge B's text with [dependency c failed: boom]"
    assert out["context"] == f"why\n\n{RESULTS_HEADING}\n\n### e (completed)\nE"
    assert task["instruction"].startswith("merge {{")  # the template is kept
    shell = hand_over(
        {"instruction": "echo {{b.result}}"}, [Outcome("b", True, "it's $(x)")], for_shell=True
    )
    assert shell["instruction"] == "echo " + shlex.quote("it's $(x)")
    assert "context" not in shell


def test_hand_over_caps_each_result_and_the_total() -> None:
    big = "x" * (RESULT_CAP_CHARS * 2) + "END"
    outcomes = [Outcome(f"t{i}", True, big) for i in range(5)]
    out = hand_over({"instruction": "go"}, outcomes, for_shell=False)
    sections = out["context"].split("### ")[1:]
    assert all(s.rstrip().endswith("END") for s in sections[:3])  # the end is kept
    assert all(len(s) <= RESULT_CAP_CHARS + 40 for s in sections)
    assert len(out["context"]) <= TOTAL_CAP_CHARS + 400
    assert "characters cut]" in sections[0]


def test_after_a_crash_the_graph_is_rebuilt_from_the_job_states(tmp_path: Path) -> None:
    """A dies completed before its dependents were released (kill -9 in between): the
    next start releases them, with A's result, and never touches A again."""
    tasks = {
        "A": {"id": "A", "instruction": "a"},
        "B": {"id": "B", "instruction": "b {{A.result}}", "dependsOn": ["A"]},
        "C": {"id": "C", "instruction": "c", "dependsOn": ["A"]},
        "D": {"id": "D", "instruction": "d", "dependsOn": ["B", "C"]},
    }
    job_ids = {t: f"job_{i}" for i, t in enumerate(tasks, 1)}
    once = RetryPolicy(attempts=1)
    jobs = [
        Job(job_ids[t], "run_1", t, task, manager_id="m1", retry=once) for t, task in tasks.items()
    ]

    def opened() -> tuple[JsonFileStore, LocalJobQueue, Waiting]:
        store = JsonFileStore(tmp_path / "store")
        store.open()
        queue = LocalJobQueue(store)
        queue.load()
        return store, queue, Waiting(store, queue, lambda m: True)

    store, queue, waiting = opened()
    waiting.add("run_1", "claude", job_ids, jobs[1:])
    queue.put(jobs[0])
    waiting.submitted("run_1", shared=False)
    taken = queue.take("m1", time.time())
    assert taken is not None and taken.task_id == "A"
    queue.complete("job_1", "A-said", {})  # ... and tcmd dies before waiting.ended
    store.close()

    store, queue, waiting = opened()
    waiting.load({"run_1": ("claude", job_ids)})
    assert [j.task_id for j in queue.jobs(state=JobState.QUEUED)] == ["B", "C"]
    assert queue.get("job_2").task["instruction"] == "b A-said"
    assert RESULTS_HEADING in queue.get("job_3").task["context"]
    assert waiting.row("run_1", "D")["waitingOn"] == ["B", "C"]
    assert queue.get("job_1").attempts == 1
    b = queue.take("m1", time.time())
    assert b is not None and b.task_id == "B"
    waiting.ended(queue.fail(b.job_id, "boom", time.time()))  # its only attempt
    assert queue.get("job_4").state is JobState.CANCELLED
    assert queue.get("job_4").last_error == "dependency B failed"
    assert waiting.pending("run_1") == 0
    store.close()

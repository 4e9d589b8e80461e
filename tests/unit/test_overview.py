"""The instance tree of `tree` and `top`, built from the daemon's rows."""

from __future__ import annotations

from typing import Any

from tcmctl import overview


def row(iid: str, parent: str | None, status: str = "ready", **extra: Any) -> dict[str, Any]:
    return {"instanceId": iid, "parentId": parent, "status": status, "stateSince": 100.0, **extra}


def test_build_nests_by_parent_and_orders_ids_by_number() -> None:
    rows = [
        row("spec_1_1_10", "mgr_1_1"),
        row("mgr_1_1", "exec_1"),
        row("exec_1", None),
        row("spec_1_1_2", "mgr_1_1", "busy"),
        row("spec_1_2_1", "mgr_1_2"),  # its manager is terminated: not listed
    ]
    roots = overview.build(
        rows,
        [{"instanceId": "spec_1_1_2", "verdict": "stuck", "score": 40}],
        [{"instanceId": "spec_1_1_2", "taskId": "t1", "runId": "run_3", "attempts": 2}],
    )
    assert [n.id for n in roots] == ["exec_1", "spec_1_2_1"]
    assert [(d, n.id) for d, n in overview.walk(roots)] == [
        (0, "exec_1"),
        (1, "mgr_1_1"),
        (2, "spec_1_1_2"),
        (2, "spec_1_1_10"),
        (0, "spec_1_2_1"),
    ]
    busy = roots[0].children[0].children[0]
    assert (busy.verdict, busy.score) == ("stuck", 40)
    assert overview.cells(2, busy, now=112.5) == [
        "    spec_1_1_2",
        "busy",
        "12s",
        "stuck",
        "",
        "t1 (run_3) try 2",
    ]
    nested = roots[0].to_json(now=112.5)
    assert nested["children"][0]["children"][0]["timeInStateS"] == 12.5


def test_doing_and_memory() -> None:
    mgr = overview.Node(
        row(
            "mgr_1_1",
            "exec_1",
            parallelExecution={
                "active": 2,
                "maxConcurrent": 3,
                "queued": 4,
                "completed": 5,
                "failed": 1,
            },
            memoryMb=300.4,
        )
    )
    assert overview.doing(mgr) == "2/3 active, 4 queued, 5 done, 1 failed"
    assert overview.memory(mgr.row) == "300M"
    assert overview.memory({"memoryMb": None}) is None
    assert overview.memory({"memoryMb": 1536.0}) == "1.5G"
    failed = overview.Node(row("exec_2", None, "errored", lastError="rate_limit"))
    assert overview.doing(failed) == "error: rate_limit"


def test_age() -> None:
    assert overview.age(None) == "-"
    assert overview.age(4.25) == "4.2s"
    assert overview.age(42.9) == "42s"
    assert overview.age(185) == "3m05s"
    assert overview.age(2 * 3600 + 600) == "2h10m"
    assert overview.age(3 * 86_400 + 4 * 3600) == "3d04h"


def test_render_hides_an_empty_memory_column_and_cuts_to_width() -> None:
    roots = overview.build([row("exec_1", None, lastError="x" * 200)])
    text = overview.render(roots, now=101.0, width=60)
    assert "MEM" not in text.splitlines()[0]
    assert all(len(line) <= 60 for line in text.splitlines())
    assert text.splitlines()[1].endswith("…")
    assert overview.render([]) == "(no instances)"

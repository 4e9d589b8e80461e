"""The pure parts of merge-back and overlap: order, parsing, names, shared paths."""

from __future__ import annotations

import pytest

from tcmd.errors import InvalidParams
from tcmd.work.merge import (
    Candidate,
    check_branch_name,
    merge_order,
    parse_merge_tree,
    parse_version,
    shown,
)
from tcmd.work.overlap import annotate, shared_paths


def cands(*specs: tuple[str, tuple[str, ...]]) -> list[Candidate]:
    return [Candidate(t, f"tcm/run_1/{t}", True, depends_on=deps) for t, deps in specs]


def order(*specs: tuple[str, tuple[str, ...]]) -> list[str]:
    return [c.task_id for c in merge_order(cands(*specs))]


def test_task_order_without_dependencies() -> None:
    assert order(("c", ()), ("a", ()), ("b", ())) == ["c", "a", "b"]


def test_dependencies_first_then_task_order() -> None:
    # d depends on b and c; a depends on d: a moves after d, the rest keep their order
    assert order(("a", ("d",)), ("b", ()), ("c", ()), ("d", ("b", "c"))) == ["b", "c", "d", "a"]
    # a task that becomes ready goes before later ready tasks in task order
    assert order(("x", ()), ("y", ("x",)), ("z", ())) == ["x", "y", "z"]


def test_unknown_dependencies_self_and_cycles_do_not_lose_tasks() -> None:
    assert order(("a", ("gone",)), ("b", ("b",))) == ["a", "b"]
    assert order(("a", ("b",)), ("b", ("a",)), ("c", ())) == ["c", "a", "b"]


def test_parse_merge_tree() -> None:
    tree = "d0998a4b25be37048dda539a2abdd69ed90b4d67"
    assert parse_merge_tree(f"{tree}\0") == (tree, [])
    # a path once per conflicting stage in some git versions: listed once
    assert parse_merge_tree(f"{tree}\0f\0dir/g h\0f\0") == (tree, ["f", "dir/g h"])


def test_paths_that_are_not_utf8_are_shown_escaped() -> None:
    raw = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # as os.fsdecode gives it
    assert shown(raw) == "caf\\xe9.txt"
    assert shown("ü ✓") == "ü ✓"


def test_parse_version() -> None:
    assert parse_version("git version 2.39.5\n") == (2, 39)
    assert parse_version("git version 2.37.1 (Apple Git-137.1)") == (2, 37)
    assert parse_version("something else") is None


@pytest.mark.parametrize(
    "bad", ["", "-rf", "--force", "refs/heads/x", "@", "x@{1}", "a\nb", "a\x7fb", "x" * 256]
)
def test_branch_names_refused_before_git(bad: str) -> None:
    with pytest.raises(InvalidParams, match="into") as caught:
        check_branch_name(bad)
    assert caught.value.data == {"field": "into"}


def test_good_branch_names_pass() -> None:
    for name in ("main", "feature/x-1", "release-2.0", "ünï"):
        check_branch_name(name)


def test_shared_paths() -> None:
    files = {"a": ["x", "y"], "b": ["y", "z"], "c": ["y", "x"], "d": []}
    assert shared_paths(files) == {"x": ["a", "c"], "y": ["a", "b", "c"]}
    assert shared_paths({"a": ["x"]}) == {}


def test_annotate_caps_and_counts() -> None:
    status = {"tasks": [{"taskId": "a"}, {"taskId": "b"}, {"taskId": "queued"}]}
    many = [f"f{i:04}" for i in range(500)]
    annotate(status, {"files": {"a": many, "b": ["f0001"]}, "shared": {"f0001": ["a", "b"]}})
    a, b, queued = status["tasks"]
    assert len(a["changedFiles"]) == 200 and a["changedCount"] == 500
    assert b["changedFiles"] == ["f0001"] and "changedFiles" not in queued
    assert status["overlap"] == [{"path": "f0001", "taskIds": ["a", "b"]}]
    assert status["overlapCount"] == 1

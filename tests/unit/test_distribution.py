from __future__ import annotations

import random
from collections import Counter

import pytest

from tcmd.work.distribution import (
    STRATEGIES,
    Assignment,
    ManagerLoad,
    capacity_aware,
    distribute,
    least_loaded,
    round_robin,
)

TASKS = [f"t{i}" for i in range(1, 11)]


def idle(n: int, limit: int = 3) -> list[ManagerLoad]:
    return [ManagerLoad(f"m{i}", active=0, queued=0, limit=limit) for i in range(1, n + 1)]


def sizes(assignments: list[Assignment]) -> list[int]:
    return [len(a.task_ids) for a in assignments]


def owner(assignments: list[Assignment]) -> dict[str, str | None]:
    return {t: a.manager_id for a in assignments for t in a.task_ids}


# round-robin


def test_round_robin_deals_ten_over_three_from_zero() -> None:
    out, nxt = round_robin(TASKS, idle(3), 0)
    assert [a.manager_id for a in out] == ["m1", "m2", "m3"]
    assert sizes(out) == [4, 3, 3]
    assert out[0].task_ids == ["t1", "t4", "t7", "t10"]
    assert out[1].task_ids == ["t2", "t5", "t8"]
    assert nxt == 1


def test_round_robin_position_carries_across_calls() -> None:
    _, pos = round_robin(TASKS, idle(3), 0)
    out, pos = round_robin(["a", "b"], idle(3), pos)
    assert [a.task_ids for a in out] == [[], ["a"], ["b"]]
    assert pos == 0
    out, pos = round_robin(["c"], idle(3), pos)
    assert [a.task_ids for a in out] == [["c"], [], []]
    assert pos == 1


def test_round_robin_ignores_load() -> None:
    managers = [ManagerLoad("busy", 9, 9, 3), ManagerLoad("idle", 0, 0, 3)]
    out, _ = round_robin(["a", "b"], managers, 0)
    assert [a.task_ids for a in out] == [["a"], ["b"]]


def test_round_robin_start_beyond_n_wraps() -> None:
    out, nxt = round_robin(["a"], idle(3), 7)
    assert [a.task_ids for a in out] == [[], ["a"], []]
    assert nxt == 2


# least-loaded


def test_least_loaded_original_example() -> None:
    managers = [ManagerLoad("m1", 1, 0, 3), ManagerLoad("m2", 2, 0, 3), ManagerLoad("m3", 0, 0, 3)]
    out = least_loaded(TASKS, managers)
    assert sizes(out) == [4, 2, 4]
    # Loads 1,2,0: t1 lifts m3 to 1, the tie m1/m3 goes to m1, and so on.
    expected = {
        "t1": "m3", "t2": "m1", "t3": "m3", "t4": "m1", "t5": "m2",
        "t6": "m3", "t7": "m1", "t8": "m2", "t9": "m3", "t10": "m1",
    }  # fmt: skip
    assert owner(out) == expected
    assert out[0].task_ids == ["t2", "t4", "t7", "t10"]  # task order kept


def test_least_loaded_counts_queued_too() -> None:
    managers = [ManagerLoad("m1", 0, 5, 3), ManagerLoad("m2", 3, 0, 3)]
    out = least_loaded(["a", "b"], managers)
    assert [a.task_ids for a in out] == [[], ["a", "b"]]


def test_least_loaded_ties_go_to_manager_order() -> None:
    out = least_loaded(["a", "b", "c", "d"], idle(3))
    assert [a.task_ids for a in out] == [["a", "d"], ["b"], ["c"]]


# capacity-aware


def test_capacity_aware_fills_free_slots_then_pool() -> None:
    managers = [ManagerLoad("m1", 1, 0, 3), ManagerLoad("m2", 3, 0, 3), ManagerLoad("m3", 0, 2, 3)]
    out = capacity_aware(TASKS, managers)
    assert [a.manager_id for a in out] == ["m1", "m2", "m3", None]
    assert sizes(out) == [2, 0, 1, 7]
    assert out[0].task_ids == ["t1", "t2"]
    assert out[2].task_ids == ["t3"]
    assert out[3].task_ids == TASKS[3:]


def test_capacity_aware_overloaded_manager_has_no_negative_room() -> None:
    managers = [ManagerLoad("m1", 5, 2, 3), ManagerLoad("m2", 0, 0, 1)]
    out = capacity_aware(["a", "b"], managers)
    assert [(a.manager_id, a.task_ids) for a in out] == [("m1", []), ("m2", ["a"]), (None, ["b"])]


def test_capacity_aware_no_pool_when_everything_fits() -> None:
    out = capacity_aware(["a", "b"], idle(2))
    assert [(a.manager_id, a.task_ids) for a in out] == [("m1", ["a", "b"]), ("m2", [])]


# common behaviour


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_no_managers_is_an_error(strategy: str) -> None:
    with pytest.raises(ValueError, match="no managers"):
        distribute(strategy, ["a"], [], 0)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_zero_tasks_gives_all_empty_assignments(strategy: str) -> None:
    out, nxt = distribute(strategy, [], idle(3), 2)
    assert [(a.manager_id, a.task_ids) for a in out] == [("m1", []), ("m2", []), ("m3", [])]
    assert nxt == 2


def test_unknown_strategy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'fastest'.*round-robin, least-loaded, capacity-aware"):
        distribute("fastest", ["a"], idle(1), 0)


def test_duplicate_manager_is_an_error() -> None:
    with pytest.raises(ValueError, match="'m1' is listed twice"):
        least_loaded(["a"], [*idle(1), *idle(1)])


def test_negative_load_is_an_error() -> None:
    with pytest.raises(ValueError, match="'m1': queued must be >= 0"):
        ManagerLoad("m1", active=0, queued=-1, limit=3)


def test_only_round_robin_moves_the_position() -> None:
    assert distribute("round-robin", ["a", "b"], idle(3), 0)[1] == 2
    assert distribute("least-loaded", ["a", "b"], idle(3), 0)[1] == 0
    assert distribute("capacity-aware", ["a", "b"], idle(3), 0)[1] == 0


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_task_assigned_exactly_once(strategy: str) -> None:
    rng = random.Random(20240611)
    for _ in range(500):
        n = rng.randint(1, 6)
        managers = [
            ManagerLoad(f"m{i}", rng.randint(0, 5), rng.randint(0, 5), rng.randint(0, 5))
            for i in range(n)
        ]
        tasks = [f"t{i}" for i in range(rng.randint(0, 40))]
        start = rng.randint(0, 20)
        out, nxt = distribute(strategy, tasks, managers, start)

        assert Counter(t for a in out for t in a.task_ids) == Counter(tasks)
        assert [a.manager_id for a in out[:n]] == [m.manager_id for m in managers]
        assert all(a.manager_id is None and a.task_ids for a in out[n:])
        assert len(out) <= n + 1
        for a in out:  # each assignment keeps submission order
            assert a.task_ids == sorted(a.task_ids, key=tasks.index)
        assert 0 <= nxt < n or (strategy != "round-robin" and nxt == start)


def test_least_loaded_evens_out_loads() -> None:
    rng = random.Random(7)
    for _ in range(200):
        managers = [ManagerLoad(f"m{i}", rng.randint(0, 4), rng.randint(0, 4), 3) for i in range(4)]
        tasks = [f"t{i}" for i in range(rng.randint(0, 30))]
        out = least_loaded(tasks, managers)
        final = [m.active + m.queued + len(a.task_ids) for m, a in zip(managers, out, strict=True)]
        # A manager that received work ends at most one above the least loaded one.
        received = [f for f, a in zip(final, out, strict=True) if a.task_ids]
        assert all(f <= min(final) + 1 for f in received)


def test_capacity_aware_never_exceeds_free_slots() -> None:
    rng = random.Random(11)
    for _ in range(200):
        managers = [
            ManagerLoad(f"m{i}", rng.randint(0, 4), rng.randint(0, 4), rng.randint(0, 4))
            for i in range(3)
        ]
        tasks = [f"t{i}" for i in range(rng.randint(0, 20))]
        out = capacity_aware(tasks, managers)
        free = [max(0, m.limit - m.active - m.queued) for m in managers]
        assert all(len(a.task_ids) <= f for a, f in zip(out, free, strict=False))
        if len(out) > len(managers):  # a pool exists only when every slot is taken
            assert sizes(out[: len(managers)]) == free

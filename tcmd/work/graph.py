"""Task graphs (pure logic): checking a run's ``dependsOn``, and which tasks a task's end
makes ready or cancels.

``check`` refuses unknown ids, self-dependencies and cycles (naming one) in O(tasks +
edges). ``Graph`` keeps, per waiting task, how many of its dependencies have not ended:
``end(task)`` walks that task's dependents only, so each end costs O(its dependents)
(plus, transitively, the dependents of the tasks it cancels).

A dependency that ends without completing cancels its dependents, transitively, with
the reason ``dependency X failed`` (X: the task that failed first), except a dependent
that runs anyway (``runIfDependencyFails``): for it the dependency simply ended.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence


class GraphError(ValueError):
    """A run's dependencies cannot be run; ``field`` names where (``tasks[3].dependsOn``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check(tasks: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Raise GraphError for an unknown id, a task depending on itself, or a cycle.

    ``tasks``: (task id, its dependencies) in the run's order; ids are unique."""
    index = {task_id: i for i, (task_id, _) in enumerate(tasks)}
    for i, (task_id, deps) in enumerate(tasks):
        for dep in deps:
            if dep == task_id:
                raise GraphError(f"tasks[{i}].dependsOn", f"{task_id} depends on itself")
            if dep not in index:
                raise GraphError(
                    f"tasks[{i}].dependsOn", f"{task_id} depends on {dep!r}, which is no task"
                )
    # Kahn: what never reaches zero unmet dependencies lies on or behind a cycle.
    unmet = [len(set(deps)) for _, deps in tasks]
    dependents: list[list[int]] = [[] for _ in tasks]
    for i, (_, deps) in enumerate(tasks):
        for dep in set(deps):
            dependents[index[dep]].append(i)
    ready = [i for i, n in enumerate(unmet) if n == 0]
    while ready:
        for j in dependents[ready.pop()]:
            unmet[j] -= 1
            if unmet[j] == 0:
                ready.append(j)
    stuck = [i for i, n in enumerate(unmet) if n > 0]
    if stuck:
        cycle = _a_cycle(tasks, index, stuck[0], set(stuck))
        raise GraphError("tasks", "dependsOn makes a cycle: " + " -> ".join(cycle))


def _a_cycle(
    tasks: Sequence[tuple[str, Sequence[str]]],
    index: Mapping[str, int],
    start: int,
    stuck: set[int],
) -> list[str]:
    """One cycle among the stuck tasks, in run order (each task waits for the one before).

    Every stuck task has a stuck dependency, so walking from one to the next must come
    back to a task already on the path."""
    path: list[int] = []
    on_path: dict[int, int] = {}
    node = start
    while node not in on_path:
        on_path[node] = len(path)
        path.append(node)
        node = next(index[d] for d in tasks[node][1] if index[d] in stuck)
    loop = path[on_path[node] :]
    loop.reverse()  # walked from dependent to dependency; shown in the order they run
    first = loop.index(min(loop))  # from the task that comes first in the run
    loop = loop[first:] + loop[:first]
    names = [tasks[i][0] for i in loop]
    return [*names, names[0]]


class Graph:
    """Which waiting tasks of one run become ready, or are cancelled, as tasks end."""

    __slots__ = ("dependents", "ended", "pending", "run_anyway", "unmet")

    def __init__(
        self,
        deps: Mapping[str, Sequence[str]],
        *,
        pending: Iterable[str],
        run_anyway: Collection[str] = (),
    ) -> None:
        """``deps``: every task that has dependencies → them; ``pending``: those still
        waiting (not released yet); ``run_anyway``: those with runIfDependencyFails."""
        self.dependents: dict[str, list[str]] = {}
        for task_id, its in deps.items():
            for dep in dict.fromkeys(its):
                self.dependents.setdefault(dep, []).append(task_id)
        self.pending = set(pending)
        self.unmet = {t: len(set(deps[t])) for t in self.pending}
        self.run_anyway = frozenset(run_anyway)
        self.ended: set[str] = set()

    def end(
        self, task_id: str, *, completed: bool, why: str
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """``task_id`` ended (completed or not; ``why`` is the reason its dependents get
        when it did not). Returns the tasks now ready, and those cancelled with their
        reason (dependents of cancelled ones included). A second report changes nothing."""
        ready: list[str] = []
        cancelled: list[tuple[str, str]] = []
        stack = [(task_id, completed, why)]
        while stack:
            task, ok, reason = stack.pop()
            if task in self.ended:
                continue
            self.ended.add(task)
            self.pending.discard(task)
            for dep in self.dependents.get(task, ()):
                if dep not in self.pending:
                    continue
                if ok or dep in self.run_anyway:
                    self.unmet[dep] -= 1
                    if self.unmet[dep] == 0:
                        self.pending.discard(dep)
                        del self.unmet[dep]
                        ready.append(dep)
                else:
                    self.pending.discard(dep)
                    del self.unmet[dep]
                    cancelled.append((dep, reason))
                    stack.append((dep, False, reason))
        return ready, cancelled

    def cancel_all(self) -> list[str]:
        """Every waiting task, cancelled with its run: they end here."""
        gone = sorted(self.pending)
        self.ended.update(gone)
        self.pending.clear()
        self.unmet.clear()
        return gone

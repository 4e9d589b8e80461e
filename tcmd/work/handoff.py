"""What a task receives from the tasks it depends on (pure logic).

A ``{{TASK_ID.result}}`` placeholder in the instruction is replaced by that dependency's
result; the results of dependencies no placeholder names are appended to the task's
context under the heading ``RESULTS_HEADING``, one section per dependency. A dependency
that did not complete (the task runs anyway: ``runIfDependencyFails``) is noted where its
result would be: ``[dependency B failed: <error>]``.

Sizes are capped (docs/configuration.md, "Task graphs"): each result to
``RESULT_CAP_CHARS``, all of a task's results together to ``TOTAL_CAP_CHARS``; a cut
result keeps its end (where agents and commands put their conclusion) behind a note of
how much was cut. For the shell agent the instruction is a command line: a placeholder
becomes one shell word (quoted), so a result is passed as data, never run as code.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9][A-Za-z0-9._-]*)\.result\s*\}\}")
RESULT_CAP_CHARS = 20_000
TOTAL_CAP_CHARS = 60_000
RESULTS_HEADING = "## Results of the tasks this task depends on"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a dependency ended: ``completed`` with its result, or not, with why."""

    task_id: str
    completed: bool
    text: str  # the result, or the error / reason it did not complete
    state: str = "completed"

    def shown(self, limit: int) -> str:
        if self.completed:
            return cut(self.text, limit)
        return f"[dependency {self.task_id} {self.state}: {cut(self.text, limit)}]"


def named(instruction: str) -> list[str]:
    """The task ids the instruction's placeholders name, each once, in order."""
    return list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(instruction)))


def cut(text: str, limit: int) -> str:
    """``text``, or its last characters behind a note when it is longer than ``limit``."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - 60)
    return f"[… first {len(text) - keep:,} characters cut]\n{text[len(text) - keep :]}"


def hand_over(
    task: Mapping[str, Any], outcomes: Sequence[Outcome], *, for_shell: bool
) -> dict[str, Any]:
    """The task as its specialist gets it: placeholders replaced, other results appended."""
    instruction = str(task["instruction"])
    in_text = set(named(instruction))
    budget = TOTAL_CAP_CHARS
    texts: dict[str, str] = {}
    for outcome in outcomes:  # in dependsOn order: the first ones get the budget first
        texts[outcome.task_id] = outcome.shown(min(RESULT_CAP_CHARS, budget))
        budget = max(0, budget - len(texts[outcome.task_id]))
    quote: Callable[[str], str] = shlex.quote if for_shell else str
    out = dict(task)
    if in_text:
        out["instruction"] = PLACEHOLDER.sub(
            lambda m: quote(texts[m.group(1)]) if m.group(1) in texts else m.group(0),
            instruction,
        )
    rest = [o for o in outcomes if o.task_id not in in_text]
    if rest:
        sections = [
            f"### {o.task_id} ({'completed' if o.completed else o.state})\n{texts[o.task_id]}"
            for o in rest
        ]
        context = str(task.get("context") or "").rstrip()
        out["context"] = "\n\n".join([*([context] if context else []), RESULTS_HEADING, *sections])
    return out

"""Metrics without a dependency: counters, gauges, histograms, and their two exports.

``Registry.snapshot()`` is the JSON face (the ``metrics`` tool); ``Registry.prometheus()``
the text exposition format 0.0.4, for a scraper (``tcmctl metrics --prometheus``).
Everything runs in the event loop's thread, so there are no locks. Label values are
given as keyword arguments and kept as strings: ``m.tasks.inc(outcome="completed")``.
``standard(registry)`` creates the metrics tcm reports.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelValues = tuple[str, ...]


class Metric:
    """One named family of samples, one per combination of label values."""

    type: ClassVar[str]
    reserved: ClassVar[frozenset[str]] = frozenset()  # label names its methods' arguments take

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labels)
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in self.labelnames:
            if not _LABEL.match(label) or label.startswith("__") or label in self.reserved:
                raise ValueError(f"invalid label name {label!r} for {self.type} {name}")
        if len(set(self.labelnames)) != len(self.labelnames):
            raise ValueError(f"duplicate label names in {name}: {self.labelnames}")
        # an unlabelled metric shows its zero from the start, as Prometheus clients do
        self._values: dict[LabelValues, Any] = {} if self.labelnames else {(): self._zero()}

    def _zero(self) -> Any:
        return 0

    def _key(self, labels: dict[str, Any]) -> LabelValues:
        try:
            key = tuple(str(labels[n]) for n in self.labelnames)
        except KeyError:
            key = ()
        if len(key) != len(labels) or len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return key

    def remove(self, **labels: Any) -> None:
        """Forget one sample (an instance that is gone, say)."""
        self._values.pop(self._key(labels), None)

    def clear(self) -> None:
        """Forget every labelled sample: a collector then sets the live ones afresh."""
        if self.labelnames:
            self._values.clear()

    def snapshot(self) -> dict[str, Any]:
        samples = [
            {"labels": dict(zip(self.labelnames, k, strict=True)), **self._sample(v)}
            for k, v in sorted(self._values.items())
        ]
        return {"type": self.type, "help": self.help, "samples": samples}

    def _sample(self, value: Any) -> dict[str, Any]:
        return {"value": value}

    def exposition(self) -> list[str]:
        return [
            f"{self.name}{_braces(self.labelnames, k)} {_number(v)}"
            for k, v in sorted(self._values.items())
        ]


class _Scalar(Metric):
    def value(self, **labels: Any) -> float:
        """The current value of one sample (0 when never touched)."""
        return float(self._values.get(self._key(labels), 0))


class Counter(_Scalar):
    """A count that only goes up."""

    type = "counter"
    reserved = frozenset({"amount"})

    def inc(self, amount: float = 1, **labels: Any) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (inc by {amount})")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0) + amount


class Gauge(_Scalar):
    """A value that goes up and down."""

    type = "gauge"
    reserved = frozenset({"amount", "value"})

    def set(self, value: float, **labels: Any) -> None:
        self._values[self._key(labels)] = value

    def inc(self, amount: float = 1, **labels: Any) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0) + amount


@dataclass(slots=True)
class _Buckets:
    counts: list[int]  # per bucket, not cumulative; the last one is +Inf
    sum: float = 0.0
    count: int = 0


class Histogram(Metric):
    """Observations counted into buckets (upper bounds, ``le``), with their sum and count."""

    type = "histogram"
    reserved = frozenset({"value", "le"})

    def __init__(
        self,
        name: str,
        help: str,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        labels: Iterable[str] = (),
    ) -> None:
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and not empty: {buckets}")
        self.buckets = tuple(bounds)
        super().__init__(name, help, labels)

    def _zero(self) -> _Buckets:
        return _Buckets([0] * (len(self.buckets) + 1))

    def observe(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        sample = self._values.get(key) or self._values.setdefault(key, self._zero())
        sample.counts[bisect.bisect_left(self.buckets, value)] += 1  # le: value <= bound
        sample.sum += value
        sample.count += 1

    def _cumulative(self, sample: _Buckets) -> list[tuple[str, int]]:
        bounds = [*map(_number, self.buckets), "+Inf"]
        return list(zip(bounds, itertools.accumulate(sample.counts), strict=True))

    def _sample(self, value: _Buckets) -> dict[str, Any]:
        return {"buckets": dict(self._cumulative(value)), "count": value.count, "sum": value.sum}

    def exposition(self) -> list[str]:
        lines: list[str] = []
        names = (*self.labelnames, "le")
        for k, s in sorted(self._values.items()):
            lines.extend(
                f"{self.name}_bucket{_braces(names, (*k, bound))} {n}"
                for bound, n in self._cumulative(s)
            )
            lines.append(f"{self.name}_sum{_braces(self.labelnames, k)} {_number(s.sum)}")
            lines.append(f"{self.name}_count{_braces(self.labelnames, k)} {s.count}")
        return lines


M = TypeVar("M", bound=Metric)


class Registry:
    """The metrics of one daemon, in the order they were created."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels))

    def histogram(
        self,
        name: str,
        help: str,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        labels: Iterable[str] = (),
    ) -> Histogram:
        return self._add(Histogram(name, help, buckets, labels))

    def _add(self, metric: M) -> M:
        """Register ``metric``, or return the same-shaped one registered before."""
        existing = self._metrics.get(metric.name)
        if existing is None:
            self._metrics[metric.name] = metric
            return metric
        same = type(existing) is type(metric) and existing.labelnames == metric.labelnames
        if not same or getattr(existing, "buckets", None) != getattr(metric, "buckets", None):
            raise ValueError(f"metric {metric.name} already exists with another shape")
        return existing  # type: ignore[return-value]  # same type, checked above

    def before_collect(self, collect: Callable[[], None]) -> None:
        """Run ``collect`` before each export: for gauges read from live state."""
        self._collectors.append(collect)

    def _collect(self) -> None:
        for collect in self._collectors:
            collect()

    def snapshot(self) -> dict[str, Any]:
        """``{name: {type, help, samples: [...]}}``, JSON-ready."""
        self._collect()
        return {name: m.snapshot() for name, m in self._metrics.items()}

    def prometheus(self) -> str:
        """The Prometheus text exposition format, version 0.0.4."""
        self._collect()
        lines = []
        for m in self._metrics.values():
            lines.append(f"# HELP {m.name} {_escape(m.help)}")
            lines.append(f"# TYPE {m.name} {m.type}")
            lines.extend(m.exposition())
        return "".join(f"{line}\n" for line in lines)


def _escape(text: str, *, quote: bool = False) -> str:
    """Backslash, newline and (in label values) the double quote, backslash-escaped."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _braces(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape(v, quote=True)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _number(value: float) -> str:
    """A sample value as Prometheus writes it: 3, 0.25, +Inf, NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


# -- the metrics tcm reports ---------------------------------------------------------------
OUTCOMES = ("completed", "failed", "cancelled")
TASK_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600)


@dataclass(frozen=True, slots=True)
class StandardMetrics:
    """The metrics tcm reports, by attribute: ``m.tasks.inc(outcome="completed")``."""

    tasks: Counter
    task_duration: Histogram
    queue_wait: Histogram
    health_score: Gauge
    recoveries: Counter
    instances: Gauge
    hook_events: Counter


def standard(registry: Registry) -> StandardMetrics:
    """Create (or find) tcm's metrics in ``registry``."""
    r = registry
    tasks = r.counter("tcm_tasks_total", "Tasks that finished, by outcome.", ["outcome"])
    for outcome in OUTCOMES:  # present at 0 from the start, so rate() sees the first one
        tasks.inc(0, outcome=outcome)
    return StandardMetrics(
        tasks=tasks,
        task_duration=r.histogram(
            "tcm_task_duration_seconds", "Run time of finished tasks.", TASK_BUCKETS
        ),
        queue_wait=r.histogram(
            "tcm_queue_wait_seconds", "Time tasks waited in the queue.", WAIT_BUCKETS
        ),
        health_score=r.gauge(
            "tcm_instance_health_score", "Latest health score (0-100).", ["instance"]
        ),
        recoveries=r.counter(
            "tcm_recoveries_total", "Recoveries, by action and outcome.", ["action", "outcome"]
        ),
        instances=r.gauge("tcm_instances", "Instances, by state.", ["state"]),
        hook_events=r.counter("tcm_hook_events_total", "Agent hook events.", ["event"]),
    )

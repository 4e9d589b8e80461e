"""Metrics on prometheus_client: counters, gauges, histograms, and their two faces.

Each daemon has its own ``Registry`` (a prometheus_client ``CollectorRegistry``, never the
process-global one) and its node id; every series carries a ``node`` label with it.
``Registry.snapshot()`` is the JSON face (the ``metrics`` tool): it leaves the node label
out, as it always did, since one daemon answers for its own node.
``Registry.prometheus()`` is prometheus_client's text exposition format 0.0.4.

The metric types here are thin: they hold a prometheus_client metric, bind the node
label, and keep tcm's call style, label values as keyword arguments kept as strings:
``m.tasks.inc(outcome="completed")``. Everything runs in the event loop's thread.
``standard(registry)`` creates the metrics tcm reports.
"""

from __future__ import annotations

import itertools
import math
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import prometheus_client
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
NODE = "node"  # the label every series carries
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")  # text format 0.0.4 names, no UTF-8 ones
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelValues = tuple[str, ...]
Family = prometheus_client.Metric


class Metric:
    """One named family of samples, one per combination of label values (and the node)."""

    type: ClassVar[str]
    reserved: ClassVar[frozenset[str]] = frozenset({NODE})  # also its methods' argument names

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), *, node: str) -> None:
        self.name, self.help, self.labelnames, self.node = name, help, tuple(labels), node
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in self.labelnames:
            if not _LABEL.match(label) or label.startswith("__") or label in self.reserved:
                raise ValueError(f"invalid label name {label!r} for {self.type} {name}")
        if len(set(self.labelnames)) != len(self.labelnames):
            raise ValueError(f"duplicate label names in {name}: {self.labelnames}")
        self.prom = self._make((NODE, *self.labelnames))
        # prometheus_client's labels() validates and locks on every call: ours are kept
        self._children: dict[LabelValues, Any] = {}
        if not self.labelnames:  # an unlabelled metric shows its zero from the start
            self._get(())

    def _make(self, labelnames: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def _child(self, labels: dict[str, Any]) -> Any:
        return self._get(self._key(labels))

    def _get(self, key: LabelValues) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.prom.labels(self.node, *key)
        return child

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
        key = self._key(labels)
        if self._children.pop(key, None) is not None:  # never set: nothing to forget
            self.prom.remove(self.node, *key)

    def clear(self) -> None:
        """Forget every labelled sample."""
        if self.labelnames:
            self._children.clear()
            self.prom.clear()

    def family(self) -> Family:
        """This metric as prometheus_client collects it (``_created`` samples left out)."""
        family: Family
        [family] = self.prom.collect()
        family.samples = [s for s in family.samples if not s.name.endswith("_created")]
        return family

    def snapshot(self) -> dict[str, Any]:
        """``{type, help, samples}``; samples sorted by label values, without the node."""
        samples = sorted(self._samples(self.family().samples), key=lambda s: s[0])
        return {"type": self.type, "help": self.help, "samples": [s for _, s in samples]}

    def _key_of(self, sample: Sample) -> LabelValues:
        return tuple([sample.labels[n] for n in self.labelnames])

    def _samples(self, samples: list[Sample]) -> Iterator[tuple[LabelValues, dict[str, Any]]]:
        names = self.labelnames
        for s in samples:
            key = self._key_of(s)
            yield key, {"labels": dict(zip(names, key, strict=True)), "value": _plain(s.value)}


class _Scalar(Metric):
    def value(self, **labels: Any) -> float:
        """The current value of one sample (0 when never touched)."""
        key = self._key(labels)
        for s in self.family().samples:
            if self._key_of(s) == key:
                return float(s.value)
        return 0.0


class Counter(_Scalar):
    """A count that only goes up. Its name ends in ``_total``, as Prometheus wants."""

    type = "counter"
    reserved = frozenset({NODE, "amount"})

    def _make(self, labelnames: tuple[str, ...]) -> Any:
        if not self.name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {self.name}")
        return prometheus_client.Counter(self.name, self.help, labelnames, registry=None)

    def inc(self, amount: float = 1, **labels: Any) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (inc by {amount})")
        self._child(labels).inc(amount)


class Gauge(_Scalar):
    """A value that goes up and down."""

    type = "gauge"
    reserved = frozenset({NODE, "amount", "value"})

    def _make(self, labelnames: tuple[str, ...]) -> Any:
        return prometheus_client.Gauge(self.name, self.help, labelnames, registry=None)

    def set(self, value: float, **labels: Any) -> None:
        self._child(labels).set(value)

    def inc(self, amount: float = 1, **labels: Any) -> None:
        self._child(labels).inc(amount)

    def set_all(self, values: Mapping[LabelValues, float]) -> None:
        """Make these the gauge's only samples (label values in order -> value): for a
        collector reading live state, which sets the live ones and forgets the others."""
        for key in self._children.keys() - values.keys():
            del self._children[key]
            self.prom.remove(self.node, *key)
        for key, value in values.items():
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {key}")
            self._get(tuple(map(str, key))).set(value)


class Histogram(Metric):
    """Observations counted into buckets (upper bounds, ``le``), with their sum and count."""

    type = "histogram"
    reserved = frozenset({NODE, "value", "le"})

    def __init__(
        self,
        name: str,
        help: str,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        labels: Iterable[str] = (),
        *,
        node: str,
    ) -> None:
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and not empty: {buckets}")
        self.buckets = tuple(bounds)
        super().__init__(name, help, labels, node=node)

    def _make(self, labelnames: tuple[str, ...]) -> Any:
        return prometheus_client.Histogram(
            self.name, self.help, labelnames, buckets=self.buckets, registry=None
        )

    def observe(self, value: float, **labels: Any) -> None:
        self._child(labels).observe(value)

    def _samples(self, samples: list[Sample]) -> Iterator[tuple[LabelValues, dict[str, Any]]]:
        by_key: dict[LabelValues, dict[str, Any]] = {}
        for s in samples:
            key = self._key_of(s)
            one = by_key.get(key)
            if one is None:
                labels = dict(zip(self.labelnames, key, strict=True))
                one = by_key[key] = {"labels": labels, "buckets": {}, "count": 0, "sum": 0.0}
            if s.name.endswith("_bucket"):
                one["buckets"][number(float(s.labels["le"]))] = int(s.value)
            elif s.name.endswith("_count"):
                one["count"] = int(s.value)
            elif s.name.endswith("_sum"):
                one["sum"] = float(s.value)
        yield from by_key.items()


M = TypeVar("M", bound=Metric)


class Registry:
    """The metrics of one daemon (one node), in the order they were created."""

    def __init__(self, node: str | None = None) -> None:
        self.node = node or socket.gethostname()
        self.prom = CollectorRegistry(auto_describe=False)
        self._metrics: dict[str, Metric] = {}
        self._collectors: list[Callable[[], None]] = []
        self.prom.register(_Families(self._metrics.values))

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        return self._add(name, lambda: Counter(name, help, labels, node=self.node))

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        return self._add(name, lambda: Gauge(name, help, labels, node=self.node))

    def histogram(
        self,
        name: str,
        help: str,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        labels: Iterable[str] = (),
    ) -> Histogram:
        return self._add(name, lambda: Histogram(name, help, buckets, labels, node=self.node))

    def _add(self, name: str, make: Callable[[], M]) -> M:
        """Register a new metric, or return the same-shaped one registered before."""
        metric = make()
        existing = self._metrics.get(name)
        if existing is None:
            self._metrics[name] = metric
            return metric
        same = type(existing) is type(metric) and existing.labelnames == metric.labelnames
        if not same or getattr(existing, "buckets", None) != getattr(metric, "buckets", None):
            raise ValueError(f"metric {name} already exists with another shape")
        return existing  # type: ignore[return-value]  # same type, checked above

    def before_collect(self, collect: Callable[[], None]) -> None:
        """Run ``collect`` before each export: for gauges read from live state."""
        self._collectors.append(collect)

    def _collect(self) -> None:
        for collect in self._collectors:
            collect()

    def snapshot(self) -> dict[str, Any]:
        """``{name: {type, help, samples: [...]}}``, JSON-ready (no node label)."""
        self._collect()
        return {name: m.snapshot() for name, m in self._metrics.items()}

    def prometheus(self) -> str:
        """The Prometheus text exposition format, version 0.0.4, every series with its node."""
        self._collect()
        return prometheus_client.generate_latest(self.prom).decode()


class _Families(Collector):
    """The registry's metrics as one collector: registered once, in creation order."""

    def __init__(self, metrics: Callable[[], Iterable[Metric]]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Family]:
        return [m.family() for m in self.metrics()]


def number(value: float) -> str:
    """A bound as the JSON face writes it: 3, 0.25, +Inf."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _plain(value: float) -> float | int:
    """A whole number as an int, as the JSON face always showed counts."""
    return int(value) if float(value).is_integer() and abs(value) < 1e15 else value


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
    tokens: Counter
    cost: Counter
    memory: Gauge
    pss: Gauge
    memory_estimate: Gauge


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
        tokens=r.counter(
            "tcm_tokens_total",
            "Tokens agents used (read from their transcripts), by kind and model.",
            ["kind", "model"],
        ),
        cost=r.counter(
            "tcm_cost_usd_total",
            "Estimated cost in USD of the tokens of priced models, by model.",
            ["model"],
        ),
        memory=r.gauge(
            "tcm_instance_memory_bytes",
            "Resident memory (RSS) of each instance's process tree, last health sweep.",
            ["instance"],
        ),
        pss=r.gauge(
            "tcm_instance_pss_bytes",
            "Proportional memory (PSS) of each instance's process tree, where readable.",
            ["instance"],
        ),
        memory_estimate=r.gauge(
            "tcm_memory_estimate_bytes",
            "What a new instance of each profile is expected to use (p90 of the peaks).",
            ["profile"],
        ),
    )

"""The metrics of several nodes in one view: each node's series, and the sums over them.

``NodeSum(snapshots)`` takes one JSON face per node (``{node: Registry.snapshot()}``, as
the nodes publish them) and shows them together, for ``metrics --all-nodes``:

- every sample of every node, with a ``node`` label naming it;
- for counters and histograms, the sum over the nodes, with ``node="*"`` (``ALL``).
  Gauges are not summed: a health score or a count of instances in a state is a node's
  own reading (Prometheus sums them with ``sum by (state)`` when wanted).

``snapshot()`` is the JSON face (the same shape as one node's, the node label added);
``collect()`` makes it a prometheus_client collector, and ``prometheus()`` its text. A
series whose nodes disagree (a histogram with other buckets, a metric of another type
or other labels: nodes of different versions) is shown per node and left out of the
sum rather than summed wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import prometheus_client
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from tcmd.observe.metrics import NODE, Family

ALL = "*"  # the node label of a sum over every node
Snapshot = Mapping[str, Mapping[str, Any]]  # one node's JSON face: {name: {type, help, samples}}
SeriesKey = tuple[tuple[str, str], ...]


class NodeSum(Collector):
    """Per-node metric snapshots, shown side by side and summed."""

    def __init__(self, snapshots: Mapping[str, Snapshot]) -> None:
        self.snapshots = snapshots

    def snapshot(self) -> dict[str, Any]:
        """``{name: {type, help, samples}}``; each sample's labels start with ``node``."""
        merged: dict[str, _Merge] = {}
        for node in sorted(self.snapshots):
            for name, metric in self.snapshots[node].items():
                family = merged.setdefault(name, _Merge(metric["type"], metric["help"]))
                family.add(node, metric)
        return {name: family.result() for name, family in merged.items()}

    def collect(self) -> Iterable[Family]:
        return [_family(name, m) for name, m in self.snapshot().items()]

    def prometheus(self) -> str:
        """The Prometheus text exposition format 0.0.4 of ``collect()``."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return prometheus_client.generate_latest(registry).decode()


class _Merge:
    """One metric across the nodes: their samples, and the running sums."""

    def __init__(self, kind: str, help: str) -> None:
        self.type, self.help = kind, help
        self.labelnames: tuple[str, ...] | None = None
        self.samples: list[dict[str, Any]] = []
        self.sums: dict[SeriesKey, dict[str, Any] | None] = {}  # None: not summable

    def add(self, node: str, metric: Mapping[str, Any]) -> None:
        if metric["type"] != self.type:
            return  # a node of another version: its metric is not this one
        for sample in metric["samples"]:
            names = tuple(sample["labels"])
            if self.labelnames is None:
                self.labelnames = names
            if names != self.labelnames:
                continue
            self.samples.append({**sample, "labels": {NODE: node, **sample["labels"]}})
            if self.type != "gauge":
                self._sum(tuple(sample["labels"].items()), sample)

    def _sum(self, key: SeriesKey, sample: Mapping[str, Any]) -> None:
        if key not in self.sums:
            self.sums[key] = _copy(sample)
            return
        total = self.sums[key]
        if total is None:
            return
        if self.type == "counter":
            total["value"] += sample["value"]
        elif total["buckets"].keys() != sample["buckets"].keys():
            self.sums[key] = None  # other buckets: no honest sum
        else:
            for bound, n in sample["buckets"].items():
                total["buckets"][bound] += n
            total["count"] += sample["count"]
            total["sum"] += sample["sum"]

    def result(self) -> dict[str, Any]:
        for key, total in self.sums.items():
            if total is not None:
                self.samples.append({**total, "labels": {NODE: ALL, **dict(key)}})

        def order(s: dict[str, Any]) -> tuple[Any, ...]:
            labels = s["labels"]
            rest = tuple((k, v) for k, v in labels.items() if k != NODE)
            return rest, labels[NODE] == ALL, labels[NODE]

        return {"type": self.type, "help": self.help, "samples": sorted(self.samples, key=order)}


def _copy(sample: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in sample.items() if k != "labels"}
    if "buckets" in out:
        out["buckets"] = dict(out["buckets"])
    return out


def _family(name: str, metric: Mapping[str, Any]) -> Family:
    """A merged JSON metric as the prometheus_client family of its type."""
    samples = metric["samples"]
    labelnames = list(samples[0]["labels"]) if samples else [NODE]
    kind, help = metric["type"], metric["help"]
    if kind == "counter":
        counter = CounterMetricFamily(name, help, labels=labelnames)
        for s in samples:
            counter.add_metric(list(s["labels"].values()), s["value"])
        return counter
    if kind == "histogram":
        histogram = HistogramMetricFamily(name, help, labels=labelnames)
        for s in samples:
            buckets = [(_le(le), n) for le, n in s["buckets"].items()]
            histogram.add_metric(list(s["labels"].values()), buckets, s["sum"])
        return histogram
    gauge = GaugeMetricFamily(name, help, labels=labelnames)
    for s in samples:
        gauge.add_metric(list(s["labels"].values()), s["value"])
    return gauge


def _le(bound: str) -> str:
    """A bucket bound of the JSON face ("1") as the per-node text writes it ("1.0")."""
    text: str = floatToGoString(float(bound))  # type: ignore[no-untyped-call]
    return text

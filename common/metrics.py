"""Metrics primitives for hot paths, shared by the master and the executor."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class FastHistogram(Collector):
    """A histogram for per-task paths: a bisect and two additions, no lock, at most one label.

    prometheus_client's Histogram takes a lock and several calls per observation (and more
    for ``labels()``): 5% of the leader's time and 7% of an executor's at 4,000 tasks/s.
    Rota's programs observe from one event loop, so no lock is needed.
    """

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...], label: str | None = None) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.bounds = list(buckets)
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        if label is None:
            self._series("")

    def _series(self, value: str) -> list[int]:
        self.sums[value] = 0.0
        counts = self.counts[value] = [0] * (len(self.bounds) + 1)
        return counts

    def observe(self, value: float, label_value: str = "") -> None:
        counts = self.counts.get(label_value) or self._series(label_value)
        counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sums[label_value] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=[self.label] if self.label else None)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for value, counts in sorted(self.counts.items()):
            cumulative, buckets = 0, []
            for le, n in zip(les, counts, strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric([value] if self.label else [], buckets, self.sums[value])
        yield family

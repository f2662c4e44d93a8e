"""The leader's lock-free histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from rota.common.metrics import FastHistogram
from rota.scheduler.metrics import LATENCY_BUCKETS


def _lines(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("rota_t_seconds") and not line.startswith("rota_t_seconds_created")
    ]


def test_fast_histogram_matches_prometheus_client_on_bucket_edges_and_random_values() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("rota_t_seconds", "t", LATENCY_BUCKETS)
    ours.register(fast)
    ref = Histogram("rota_t_seconds", "t", buckets=LATENCY_BUCKETS, registry=theirs)
    rng = random.Random(7)
    values = [*LATENCY_BUCKETS, 0.0, 1e9, *(rng.expovariate(10) for _ in range(2000))]
    for v in values:
        fast.observe(v)
        ref.observe(v)
    assert _lines(ours) == _lines(theirs)
    assert f'rota_t_seconds_bucket{{le="+Inf"}} {float(len(values))}' in _lines(ours)


def test_a_labelled_fast_histogram_matches_too() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("rota_t_seconds", "t", (0.5, 1.0), label="kind")
    ours.register(fast)
    ref = Histogram("rota_t_seconds", "t", ["kind"], buckets=(0.5, 1.0), registry=theirs)
    for kind, v in [("shell", 0.2), ("noop", 0.0), ("shell", 1.0), ("shell", 7.0)]:
        fast.observe(v, kind)
        ref.labels(kind).observe(v)
    assert sorted(_lines(ours)) == sorted(_lines(theirs))  # series order may differ
    assert 'rota_t_seconds_count{kind="shell"} 3.0' in _lines(ours)

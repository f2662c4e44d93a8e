"""An executor's Prometheus metrics: its slots, what it ran, and how its lease fared.

Gauges are read from the agent at scrape time; counts and durations are fed by the
agent as attempts end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from executor.agent import Agent

RUN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class ExecutorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks = Counter(
            "rota_executor_tasks",
            "Attempts this executor ran to an end, by kind and outcome (succeeded, failed, cancelled).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "rota_executor_task_seconds",
            "Time an attempt held a slot on this executor, by kind.",
            ["kind"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )

    def watch(self, agent: Agent) -> None:
        self.registry.register(_AgentCollector(agent))

    def task_ended(self, kind: str, outcome: str, seconds: float) -> None:
        self.tasks.labels(kind, outcome).inc()
        self.run_seconds.labels(kind).observe(seconds)


class _AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        yield GaugeMetricFamily(
            "rota_executor_slots", "Tasks this executor runs at once.", value=a.conf.slots
        )
        yield GaugeMetricFamily("rota_executor_slots_used", "Attempts holding a slot now.", value=a.gate.busy)
        yield GaugeMetricFamily(
            "rota_executor_tasks_accepted",
            "Attempts accepted: running or waiting for a slot.",
            value=len(a.running),
        )
        yield GaugeMetricFamily(
            "rota_executor_attached",
            "1 while attached to the leader with a live lease.",
            value=int(a.attached),
        )
        yield GaugeMetricFamily(
            "rota_executor_unacked_reports", "Results sent but not yet acknowledged by the leader.",
            value=len(a.unacked),
        )  # fmt: skip
        yield CounterMetricFamily(
            "rota_executor_fenced", "Times the lease went unrenewed for a TTL and running tasks were killed.",
            value=a.fenced_count,
        )  # fmt: skip

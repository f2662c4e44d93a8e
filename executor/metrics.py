"""An executor's Prometheus metrics: its slots, what it ran, and how its lease fared.

Gauges are read from the agent at scrape time; counts and durations are fed by the
agent as attempts end.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rota.common.metrics import FastHistogram

if TYPE_CHECKING:
    from rota.executor.agent import Agent

RUN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class ExecutorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        #: (kind, outcome) -> attempts; a plain dict, exposed by _AgentCollector (labels() is slow).
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.run_seconds = FastHistogram(
            "rota_executor_task_seconds",
            "Time an attempt held a slot on this executor, by kind.",
            RUN_BUCKETS,
            "kind",
        )
        self.registry.register(self.run_seconds)

    def watch(self, agent: Agent) -> None:
        self.registry.register(_AgentCollector(agent, self.outcomes))

    def task_ended(self, kind: str, outcome: str, seconds: float) -> None:
        self.outcomes[kind, outcome] += 1
        self.run_seconds.observe(seconds, kind)


class _AgentCollector(Collector):
    def __init__(self, agent: Agent, outcomes: collections.Counter[tuple[str, str]]) -> None:
        self.agent = agent
        self.outcomes = outcomes

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        yield GaugeMetricFamily(
            "rota_executor_local_slots", "Tasks this executor runs at once (its --slots).", value=a.conf.slots
        )
        yield GaugeMetricFamily(
            "rota_executor_local_slots_busy",
            "Attempts holding one of its slots now.",
            value=a.runner.gate.busy,
        )
        yield GaugeMetricFamily(
            "rota_executor_tasks_accepted",
            "Attempts accepted: running or waiting for a slot.",
            value=len(a.runner.running),
        )
        yield GaugeMetricFamily(
            "rota_executor_attached",
            "1 while attached to the leader with a live lease.",
            value=int(a.link.attached),
        )
        yield GaugeMetricFamily(
            "rota_executor_unacked_reports", "Results sent but not yet acknowledged by the leader.",
            value=len(a.runner.unacked),
        )  # fmt: skip
        tasks = CounterMetricFamily(
            "rota_executor_tasks",
            "Attempts this executor ran to an end, by kind and outcome (succeeded, failed, cancelled).",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), n in sorted(self.outcomes.items()):
            tasks.add_metric([kind, outcome], n)
        yield tasks
        yield CounterMetricFamily(
            "rota_executor_fenced", "Times the lease went unrenewed for a TTL and running tasks were killed.",
            value=a.fence.count,
        )  # fmt: skip

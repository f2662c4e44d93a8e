"""A master's Prometheus metrics.

Histograms are fed as things happen (the core's wait and run times, every etcd
transaction). Everything else is read at scrape time from the leadership and from the
summary the leader exposes, so the hot path pays nothing for it. Scheduling figures (jobs, tasks,
queue, executors) come only from the leader: a follower has no scheduling state. etcd's alarms and
database sizes come from every master, as it last looked (every few seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rota.common.metrics import FastHistogram
from rota.common.states import JOB_STATES, TASK_STATES
from rota.scheduler.core import Summary

if TYPE_CHECKING:
    from rota.scheduler.leadership import Leadership
    from rota.scheduler.upkeep import EtcdSpace

#: The alarms etcd can raise; each has a series, 0 or 1.
ETCD_ALARMS = ("NOSPACE", "CORRUPT")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
TXN_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0)
OPS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class MasterMetrics:
    def __init__(
        self,
        leadership: Callable[[], Leadership | None],
        summary: Callable[[], Summary | None],
        space: EtcdSpace | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.task_wait = FastHistogram(
            "rota_task_wait_seconds",
            "From a task becoming pending (submitted or requeued) to its placement on an executor.",
            LATENCY_BUCKETS,
        )
        self.task_run = FastHistogram(
            "rota_task_run_seconds",
            "From an attempt's placement to its end as the leader saw it (transfer and prefetch queueing included).",
            LATENCY_BUCKETS,
        )
        r.register(self.task_wait)
        r.register(self.task_run)
        self.txn_seconds = Histogram(
            "rota_etcd_txn_seconds", "Round trip of one etcd transaction.", buckets=TXN_BUCKETS, registry=r
        )
        self.txn_ops = Histogram(
            "rota_etcd_txn_ops", "Writes batched into one etcd transaction.", buckets=OPS_BUCKETS, registry=r
        )
        r.register(_StateCollector(leadership, summary))
        if space is not None:
            r.register(_SpaceCollector(space))

    def on_txn(self, ops: int, seconds: float) -> None:
        """The etcd client's hook: every transaction, fenced or not."""
        self.txn_seconds.observe(seconds)
        self.txn_ops.observe(ops)


class _StateCollector(Collector):
    def __init__(
        self, leadership: Callable[[], Leadership | None], summary: Callable[[], Summary | None]
    ) -> None:
        self.leadership = leadership
        self.summary = summary

    def collect(self) -> Iterator[Metric]:
        lead = self.leadership()
        summary = self.summary()
        is_leader = bool(lead and lead.is_leader and summary is not None)
        yield _gauge("rota_leader", "1 on the master that leads and is ready, 0 elsewhere.", int(is_leader))
        yield _gauge("rota_leader_term", "Election term this master last saw.", lead.term if lead else 0)
        yield _counter(
            "rota_elections_won",
            "Elections this master has won since it started.",
            lead.elections_won if lead else 0,
        )
        rejected = (lead.fenced_rejections + (lead.election.rejected if lead.election else 0)) if lead else 0
        yield _counter(
            "rota_fenced_writes_rejected",
            "Writes of this master that etcd refused because it no longer held the leader key.",
            rejected,
        )
        if summary is not None:
            yield from self._scheduling(summary)

    def _scheduling(self, summary: Summary) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("rota_jobs", "Jobs by state.", labels=["state"])
        for s in JOB_STATES:
            jobs.add_metric([s], summary.jobs[s])
        yield jobs
        tasks = GaugeMetricFamily("rota_tasks", "Tasks by state.", labels=["state"])
        for s in TASK_STATES:
            tasks.add_metric([s], summary.tasks[s])
        yield tasks
        depth = GaugeMetricFamily(
            "rota_queue_depth",
            "Pending tasks of unfinished jobs, by job priority (0-100).",
            labels=["priority"],
        )
        for prio in sorted(summary.queue):
            depth.add_metric([str(prio)], summary.queue[prio])
        yield depth
        slots = GaugeMetricFamily(
            "rota_executor_slots", "Task slots an executor offers.", labels=["executor"]
        )
        used = GaugeMetricFamily(
            "rota_executor_slots_used", "Tasks assigned to or running on an executor.", labels=["executor"]
        )
        connected = 0
        for ex in summary.executors:
            slots.add_metric([ex.name], ex.slots)
            used.add_metric([ex.name], ex.used)
            connected += ex.connected
        yield slots
        yield used
        yield _gauge("rota_executors", "Executors attached to the leader.", connected)
        st = summary.stats
        yield _counter(
            "rota_task_attempts", "Task attempts placed on executors by this leader.", st.dispatched
        )
        resched = CounterMetricFamily(
            "rota_task_reschedules", "Attempts run again: failed and retried, or lost with their executor.",
            labels=["reason"],
        )  # fmt: skip
        resched.add_metric(["failed"], st.requeued - st.requeued_lost)
        resched.add_metric(["executor_lost"], st.requeued_lost)
        yield resched
        yield _counter(
            "rota_stale_reports",
            "Executor reports for attempts that were no longer current.",
            st.stale_reports,
        )


class _SpaceCollector(Collector):
    def __init__(self, space: EtcdSpace) -> None:
        self.space = space

    def collect(self) -> Iterator[Metric]:
        space = self.space
        raised = {a.alarm for a in space.alarms}
        alarm = GaugeMetricFamily(
            "rota_etcd_alarm",
            "1 while etcd has this alarm raised (NOSPACE: every write but deletes is refused).",
            labels=["alarm"],
        )
        for name in ETCD_ALARMS:
            alarm.add_metric([name], int(name in raised))
        yield alarm
        yield _gauge(
            "rota_etcd_quota_bytes", "etcd's backend quota as the masters know it.", float(space.quota)
        )
        size = GaugeMetricFamily(
            "rota_etcd_db_bytes", "Size of an etcd member's database file.", labels=["member"]
        )
        in_use = GaugeMetricFamily(
            "rota_etcd_db_bytes_in_use",
            "Bytes of an etcd member's database file in use (the rest returns on defragmentation).",
            labels=["member"],
        )
        for m in space.members:
            if not m.error:
                size.add_metric([m.name], float(m.db_size))
                in_use.add_metric([m.name], float(m.db_size_in_use))
        yield size
        yield in_use
        yield _counter(
            "rota_etcd_defragmentations", "etcd members this master defragmented.", float(space.defrags)
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)

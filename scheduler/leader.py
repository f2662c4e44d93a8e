"""The leader's runtime: rebuilds the core from etcd when this master is elected and runs its adapters.

The core (``core.py``) decides; the commit pipeline (``pipeline.py``) commits its writes before
anything that depends on them is told; the executor registry (``executor_registry.py``) and the job
API (``job_api.py``) turn calls and streams into core events and carry decisions out. This module
wires them together and owns the life cycle: start, the tick, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from rota.common.tls import TlsFiles
from rota.metastore.client import EtcdClient, EtcdError
from rota.metastore.election import Election
from rota.scheduler import upkeep
from rota.scheduler.collector import collector_off
from rota.scheduler.core import (
    DEFAULT_RETENTION,
    Ack,
    CallReply,
    CancelTasks,
    Core,
    Decision,
    Dispatch,
    Job,
    JobEnded,
    Observer,
    Summary,
    no_observer,
)
from rota.scheduler.executor_registry import ExecutorRegistry
from rota.scheduler.job_api import JobApi
from rota.scheduler.pipeline import CommitPipeline, NotReady
from rota.scheduler.placement import ExecutorSlot
from rota.scheduler.schedules import ScheduleRunner
from rota.scheduler.store import Store

log = logging.getLogger("rota.leader")

TICK = 0.1
#: Jobs added to the core between two yields to the event loop while rebuilding.
REBUILD_CHUNK = 2000
#: How often the leader moves its etcd connection to etcd's raft leader (which may change).
RAFT_LEADER_CHECK = 5.0

__all__ = ["LeaderRuntime", "NotReady"]


class LeaderRuntime:
    def __init__(
        self,
        client: EtcdClient,
        election: Election,
        on_fenced: Callable[[], None],
        observe_wait: Observer = no_observer,
        observe_run: Observer = no_observer,
        retention: float = DEFAULT_RETENTION,
        alarm: Callable[[], bool] = lambda: False,
        tls: TlsFiles | None = None,
    ) -> None:
        self.client = client
        self.election = election
        self.on_fenced = on_fenced
        self.ready = False
        self.core = Core(observe_wait=observe_wait, observe_run=observe_run, retention=retention)
        self.store = Store(client, election)
        self.pipeline = CommitPipeline(self.core, self.store, self._route, self._give_up, alarm)
        self.executors = ExecutorRegistry(
            client, self.store, self.core, self.pipeline.kick, self._give_up, tls=tls
        )
        self.jobs = JobApi(self.core, self.store, self.pipeline, self._route, self.check, self._give_up)
        self.schedules = ScheduleRunner(self.store, self.jobs, self.check, self._give_up)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def check(self) -> None:
        if not self.ready:
            raise NotReady("this master is not a ready leader")

    async def start(self) -> None:
        t0 = time.monotonic()
        await self.store.begin_term()
        # A rebuild makes objects and frees none: the collector's passes over them cost twice the
        # rebuild itself at 100,000 jobs. (Off for this master process, for the rebuild only.)
        with collector_off():
            snap = await self.store.load()
            for ex in snap.executors:
                self.core.executors[ex.id] = ex
            self.jobs.seq = snap.revision
            for n, job in enumerate(snap.jobs, 1):
                if n % REBUILD_CHUNK == 0:
                    await asyncio.sleep(0)  # keeps the leader's lease alive through a long history
                self.core.add_job(job)
            self.core.restore_endpoints(snap.endpoints)
            for job_id, name, record in snap.barriers:
                try:
                    self.core.restore_barrier(job_id, name, record)
                except ValueError as e:
                    log.error("%s: skipped", e)
            self.core.adopt_running()
            self.schedules.load(snap.schedules)
            for job in snap.jobs:
                if isinstance(job, Job):
                    self.jobs.collector.started(job)
        self._tasks = [
            asyncio.create_task(self.pipeline.run(), name="leader-flush"),
            asyncio.create_task(self._tick_loop(), name="leader-tick"),
            asyncio.create_task(self.executors.watch(snap.revision + 1), name="leader-executors"),
            asyncio.create_task(self.executors.hold_leases(snap.executors), name="leader-hold-leases"),
            asyncio.create_task(upkeep.compact_loop(self.client), name="leader-compact"),
            asyncio.create_task(self.schedules.run(), name="leader-schedules"),
        ]
        self.ready = True
        self.pipeline.kick()
        log.info(
            "leader state rebuilt from etcd in %.3fs: %d jobs, %d pending tasks, %d executors",
            time.monotonic() - t0,
            len(snap.jobs),
            self.core.pending_count(),
            len(snap.executors),
        )

    async def stop(self) -> None:
        """Stop leading: end executor streams (they re-attach to the next leader) and background work."""
        self._stopping = True
        self.ready = False
        self.executors.close_all()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        error = NotReady("the leader stepped down")
        self.jobs.collector.clear()
        self.pipeline.fail_waiters(error)
        self.jobs.fail_waiters(error)

    def _give_up(self) -> None:
        """Leadership is lost or in doubt: stop answering and let the loop step down (once)."""
        self.ready = False
        if not self._stopping:
            self.on_fenced()

    def holds_lease(self) -> bool:
        """Whether our leader lease is certainly still valid. A leader frozen past its lease wakes
        up with committed decisions it must not act on: another leader may have redone them."""
        return self.election.session.expires_in > 0

    def _route(self, decisions: list[Decision]) -> None:
        """Committed decisions out: work, cancels and acks to executors, job ends to their waiters."""
        if not self.holds_lease():
            log.warning(
                "leader lease ran out before %d decisions could be sent: stepping down", len(decisions)
            )
            self._give_up()
            return
        for d in decisions:
            if isinstance(d, JobEnded):
                self.core.end_committed(d.job)
                self.executors.forget_job(d.job.id, len(d.job.spec.tasks))
                self.jobs.ended(d.job)
            elif isinstance(d, (Dispatch, CancelTasks, Ack, CallReply)):
                self.executors.send(d)

    async def _tick_loop(self) -> None:
        next_check = 0.0
        while True:
            self.core.tick()
            self.jobs.collector.settle()  # after tick: the jobs it held as summaries dropped their tasks
            self.pipeline.kick()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + RAFT_LEADER_CHECK
                with contextlib.suppress(EtcdError):
                    await self.client.prefer_raft_leader()
            await asyncio.sleep(TICK)

    def executors_known(self) -> int | None:
        """How many executors this leader knows (found at takeover, joined since, less those whose
        lease ended), while it is a ready leader whose lease etcd renewed lately; else None, and
        cluster-status reads etcd. Under a big job the leader's etcd member is the busiest, and
        reading it held cluster-status up to 120 ms (issue 11)."""
        if not self.ready or not self.election.session.surely_held():
            return None
        return len(self.core.executors)

    def executor_slots(self) -> list[ExecutorSlot]:
        self.check()
        return list(self.core.executors.values())

    def summary(self) -> Summary | None:
        """The scheduling state in figures, for metrics; None while not a ready leader."""
        return self.core.summary() if self.ready else None

    @property
    def etcd_writes(self) -> tuple[int, int]:
        """(transactions, writes) this leader committed, for GetMasterInfo."""
        return self.store.txns, self.store.writes

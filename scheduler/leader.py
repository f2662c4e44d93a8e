"""The leader's asyncio adapter around the scheduling core.

It rebuilds the core from etcd when this master is elected, feeds it events (jobs
submitted, executors attached or lost, task reports), and carries out its decisions:
state writes are committed in fenced, batched transactions first, and only then are
tasks dispatched, cancels sent and reports acknowledged, so nothing an executor or a
client is told is ever ahead of etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rota.common import logs
from rota.common.jobspec import JobSpec
from rota.metastore import keys
from rota.metastore.client import EtcdClient, EtcdError, WatchCompacted
from rota.metastore.election import Election, Fenced
from rota.protos import rota_pb2
from rota.scheduler.core import (
    ACTIVE,
    Ack,
    CancelTasks,
    Core,
    Dispatch,
    Job,
    JobEnded,
    PutJob,
    PutTask,
    Report,
    Task,
    TaskRef,
)
from rota.scheduler.placement import ExecutorSlot
from rota.scheduler.store import Store

if TYPE_CHECKING:
    from rota.scheduler.metrics import MasterMetrics

log = logging.getLogger("rota.leader")

TICK = 0.1
#: How often the leader moves its etcd connection to etcd's raft leader (which may change).
RAFT_LEADER_CHECK = 5.0


class NotReady(Exception):
    """This master is not (or no longer) a ready leader."""


@dataclass(eq=False)
class ExecutorLink:
    """The leader's end of one executor's Attach stream."""

    executor_id: str
    lease_id: int
    ttl: int
    outbox: asyncio.Queue[rota_pb2.LeaderMessage | None] = field(default_factory=asyncio.Queue)
    closed: bool = False

    def send(self, msg: rota_pb2.LeaderMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


def _refs(refs: Iterable[TaskRef]) -> list[rota_pb2.TaskRef]:
    return [rota_pb2.TaskRef(job_id=r.job_id, index=r.index, attempt=r.attempt) for r in refs]


def assignment(task: Task, attempt: int, params_json: bytes) -> rota_pb2.TaskAssignment:
    spec = task.spec
    env = {"ROTA_JOB_ID": task.job.id, "ROTA_TASK_ID": task.id, "ROTA_ATTEMPT": str(attempt)}
    if spec.shards:
        env["ROTA_SHARD_INDEX"] = str(task.copy)
        env["ROTA_SHARD_COUNT"] = str(spec.shards)
    return rota_pb2.TaskAssignment(
        task=rota_pb2.TaskRef(job_id=task.job.id, index=task.index, attempt=attempt),
        kind=spec.kind,
        params_json=params_json,
        env=env,
        timeout=task.timeout or 0.0,
        priority=task.job.priority,
    )


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)


def report_from_pb(r: rota_pb2.TaskReport) -> Report:
    ref = TaskRef(r.task.job_id, r.task.index, r.task.attempt)
    if r.state == "RUNNING":
        return Report(ref, "RUNNING")
    result: dict[str, Any] = {
        "exit_code": r.exit_code if r.has_exit_code else None,
        "stdout": r.stdout,
        "stderr": r.stderr,
        "value": json.loads(r.value_json) if r.value_json else None,
        "error": r.error or None,
    }
    if r.truncated:
        result["truncated"] = True
    return Report(ref, "SUCCEEDED" if r.state == "SUCCEEDED" else "FAILED", result)


class LeaderRuntime:
    def __init__(
        self,
        client: EtcdClient,
        election: Election,
        on_fenced: Callable[[], None],
        metrics: MasterMetrics | None = None,
    ) -> None:
        self.client = client
        self.election = election
        self.on_fenced = on_fenced
        if metrics is not None:
            self.core = Core(observe_wait=metrics.task_wait.observe, observe_run=metrics.task_run.observe)
        else:
            self.core = Core()
        self.store = Store(client, election)
        self.links: dict[str, ExecutorLink] = {}
        self.ready = False
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._submitting: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        # One drain-commit-route at a time, so writes reach etcd in the order they were decided.
        self._commit_lock = asyncio.Lock()
        self._seq = 0
        self._params_cache: dict[tuple[str, int], bytes] = {}
        self._synced: list[asyncio.Future[None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        t0 = time.monotonic()
        snap = await self.store.load()
        for rec in snap.executors:
            self.core.executors[rec["id"]] = ExecutorSlot(
                id=rec["id"],
                name=rec.get("name", rec["id"]),
                addr=rec.get("addr", ""),
                slots=int(rec.get("slots", 1)),
                kinds=frozenset(rec.get("kinds", ())),
                labels=rec.get("labels", {}),
                lease_id=int(rec["lease"]),
            )
        self._seq = snap.revision
        for job in snap.jobs:
            self.core.add_job(job)
        self.core.adopt_running()
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="leader-flush"),
            asyncio.create_task(self._tick_loop(), name="leader-tick"),
            asyncio.create_task(self._watch_executors(snap.revision + 1), name="leader-executors"),
        ]
        self.ready = True
        self._wake.set()
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
        for link in list(self.links.values()):
            link.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for f in [*self._synced, *(f for futs in self._waiters.values() for f in futs)]:
            if not f.done():
                f.set_exception(NotReady("the leader stepped down"))

    def _give_up(self) -> None:
        """Leadership is lost or in doubt: stop answering and let the loop step down (once)."""
        self.ready = False
        if not self._stopping:
            self.on_fenced()

    def kick(self) -> None:
        self._wake.set()

    # -- background work -----------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            async with self._commit_lock:
                self._wake.clear()
                synced, self._synced = self._synced, []
                decisions = self.core.drain()
                if not decisions:
                    _resolve(synced)
                    continue
                writes = [d for d in decisions if isinstance(d, (PutTask, PutJob))]
                delay = 0.05
                while writes:
                    try:
                        await self.store.commit(writes)
                        break
                    except Fenced:
                        log.warning("a fenced write was rejected: stepping down")
                        self._give_up()
                        return
                    except EtcdError as e:
                        log.warning("cannot commit %d writes yet: %s", len(writes), e)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 1.0)
                self._route(decisions)
                _resolve(synced)

    async def sync(self) -> None:
        """Return once every decision the core has made so far is committed to etcd."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._synced.append(fut)
        self.kick()
        await fut

    def _route(self, decisions: list[Any]) -> None:
        for d in decisions:
            if isinstance(d, Dispatch):
                link = self.links.get(d.executor)
                batch = [
                    assignment(t, a, self._params_json(t))
                    for t, a in d.tasks
                    if t.attempt == a and t.state in ACTIVE
                ]
                if link is not None and batch:
                    link.send(rota_pb2.LeaderMessage(dispatch=rota_pb2.Dispatch(tasks=batch)))
            elif isinstance(d, CancelTasks):
                link = self.links.get(d.executor)
                if link is not None:
                    link.send(rota_pb2.LeaderMessage(cancel=rota_pb2.CancelTasks(tasks=_refs(d.refs))))
            elif isinstance(d, Ack):
                link = self.links.get(d.executor)
                if link is not None:
                    link.send(rota_pb2.LeaderMessage(acks=rota_pb2.Acks(tasks=_refs(d.refs))))
            elif isinstance(d, JobEnded):
                job = d.job
                level = logging.DEBUG if job.state == "SUCCEEDED" else logging.INFO
                if log.isEnabledFor(level):
                    log.log(
                        level,
                        "job %s ended %s: %s",
                        job.id,
                        job.state,
                        ", ".join(f"{n} {s.lower()}" for s, n in sorted(job.counts.items()) if n),
                        **logs.ids(job=job.id),
                    )
                for i in range(len(d.job.spec.tasks)):
                    self._params_cache.pop((d.job.id, i), None)
                for f in self._waiters.pop(d.job.id, []):
                    if not f.done():
                        f.set_result(None)

    def _params_json(self, task: Task) -> bytes:
        """A template's parameters, encoded once for all its copies rather than per dispatch."""
        key = (task.job.id, task.template)
        blob = self._params_cache.get(key)
        if blob is None:
            blob = self._params_cache[key] = json.dumps(task.spec.params).encode()
        return blob

    async def _tick_loop(self) -> None:
        next_check = 0.0
        while True:
            self.core.tick()
            self.kick()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + RAFT_LEADER_CHECK
                with contextlib.suppress(EtcdError):
                    await self.client.prefer_raft_leader()
            await asyncio.sleep(TICK)

    async def _watch_executors(self, start: int) -> None:
        """Executors whose lease expired (or was revoked) lose their tasks."""
        while True:
            try:
                async for events in self.client.watch(keys.EXECUTORS, start, prefix=True):
                    for e in events:
                        start = e.kv.mod_revision + 1
                        if e.type == "delete":
                            ex_id = e.kv.key[len(keys.EXECUTORS) :].decode()
                            log.info(
                                "executor %s lost its lease: requeueing its tasks",
                                ex_id,
                                **logs.ids(executor=ex_id),
                            )
                            link = self.links.pop(ex_id, None)
                            if link:
                                link.close()
                            self.core.executor_lost(ex_id)
                    self.kick()
            except WatchCompacted as e:
                log.warning("executor watch compacted at %d; resuming from there", e.compact_revision)
                start = e.compact_revision

    # -- jobs ----------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.ready:
            raise NotReady("this master is not a ready leader")

    async def submit(self, job_id: str, spec: JobSpec) -> tuple[str, bool]:
        """Commit a job to etcd, then schedule it; created is False when the id exists.

        The commit runs as a task of its own: a client that gives up (deadline, cancel)
        must not leave a job in the core that etcd never got.
        """
        self._check()
        pending = self._submitting.get(job_id)
        if pending is not None:
            await asyncio.shield(pending)  # raises NotReady if that submission failed
            return job_id, False
        if job_id in self.core.jobs:
            return job_id, False
        task = asyncio.create_task(self._create(job_id, spec))
        self._submitting[job_id] = task
        task.add_done_callback(lambda t: self._submitted(job_id, t))
        await asyncio.shield(task)
        return job_id, True

    def _submitted(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._submitting.pop(job_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here; the callers that still wait see it too

    async def _create(self, job_id: str, spec: JobSpec) -> None:
        async with self._commit_lock:
            self._check()
            created_at = time.time()
            self._seq += 1
            # Place the job now, so its first placements commit with the job itself.
            self.core.add_job(Job(job_id, spec, self._seq, created_at))
            decisions = self.core.drain()
            writes = [d for d in decisions if isinstance(d, (PutTask, PutJob))]
            try:
                created = await self.store.create_job(job_id, spec, created_at, along=writes)
            except (Fenced, EtcdError) as e:
                # The core holds a job etcd may not have: only a rebuild can tell.
                self._give_up()
                raise NotReady(f"leadership in doubt while submitting: {e}") from None
            if created is None:
                self._give_up()
                raise NotReady("the job appeared in etcd under another leader")
            self._route(decisions)
            log.debug(
                "job %s committed: %d tasks",
                job_id,
                len(self.core.jobs[job_id].tasks),
                **logs.ids(job=job_id),
            )

    def job(self, job_id: str) -> Job | None:
        """A committed job (one still being submitted is not shown yet)."""
        self._check()
        return None if job_id in self._submitting else self.core.jobs.get(job_id)

    def jobs(self) -> list[Job]:
        self._check()
        return list(self.core.jobs.values())

    def executors(self) -> list[ExecutorSlot]:
        self._check()
        return list(self.core.executors.values())

    async def wait_job(self, job_id: str, timeout: float) -> Job | None:
        job = self.job(job_id)
        if job is None or job.state is not None:
            return job
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        if not fut.done():
            fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.get(job_id, []).remove(fut)
        else:
            fut.result()
        return self.job(job_id)

    async def cancel_job(self, job_id: str) -> Job | None:
        """Cancel a job; the answer comes once the cancellation is committed."""
        self._check()
        job = self.core.cancel_job(job_id)
        await self.sync()
        self._check()
        return job

    # -- executors -----------------------------------------------------------------------

    async def attach(self, hello: rota_pb2.Hello) -> ExecutorLink:
        """Register an executor (or re-adopt one after a leader change) and open its link."""
        self._check()
        ttl = max(1, round(hello.keepalive_ttl or 5))
        reported = [TaskRef(r.job_id, r.index, r.attempt) for r in hello.running]
        ex_id, lease = hello.executor_id, hello.lease_id
        known = self.core.executors.get(ex_id) if ex_id else None
        if known is None or known.lease_id != lease or await self.client.time_to_live(lease) <= 0:
            lease = await self.client.grant(ttl)
            ex_id = f"{hello.name}-{lease & 0xFFFFFF:06x}"
            record = {
                "id": ex_id,
                "name": hello.name,
                "addr": hello.addr,
                "slots": hello.slots,
                "kinds": list(hello.kinds),
                "labels": dict(hello.labels),
            }
            try:
                await self.store.put_executor(ex_id, record, lease)
            except Fenced:
                self._give_up()
                await self.client.revoke(lease)
                raise NotReady("leadership lost") from None
            log.info(
                "executor %s attached: %s, %d slots, kinds %s",
                ex_id,
                hello.addr,
                hello.slots,
                ",".join(hello.kinds),
                **logs.ids(executor=ex_id),
            )
        else:
            log.info(
                "executor %s re-attached with %d running tasks",
                ex_id,
                len(reported),
                **logs.ids(executor=ex_id),
            )
        old = self.links.pop(ex_id, None)
        if old:
            old.close()
        link = ExecutorLink(ex_id, lease, ttl)
        self.links[ex_id] = link
        slot = ExecutorSlot(
            id=ex_id,
            name=hello.name,
            addr=hello.addr,
            slots=max(1, hello.slots),
            kinds=frozenset(hello.kinds),
            labels=dict(hello.labels),
            lease_id=lease,
            prefetch=max(0, hello.prefetch),
            heartbeat_at=time.time(),
        )
        self.core.attach_executor(slot, reported)
        self.kick()
        return link

    async def heartbeat(self, link: ExecutorLink) -> int:
        """Renew the executor's lease; 0 means it expired and the executor must start over."""
        try:
            ttl = await self.client.keepalive(link.lease_id)
        except EtcdError:
            return -1
        ex = self.core.executors.get(link.executor_id)
        if ttl > 0 and ex is not None:
            ex.heartbeat_at = time.time()
        return ttl

    def reports(self, link: ExecutorLink, reports: Iterable[rota_pb2.TaskReport]) -> None:
        if self.links.get(link.executor_id) is link:
            self.core.report(link.executor_id, [report_from_pb(r) for r in reports])
            self.kick()

    async def detach(self, link: ExecutorLink) -> None:
        """The stream broke while we lead: the executor is gone, so revoke its lease now."""
        if self._stopping or self.links.get(link.executor_id) is not link:
            return
        del self.links[link.executor_id]
        link.close()
        self.core.executor_detached(link.executor_id)
        log.info(
            "executor %s disconnected: revoking its lease",
            link.executor_id,
            **logs.ids(executor=link.executor_id),
        )
        with contextlib.suppress(EtcdError):
            await self.client.revoke(link.lease_id)
        self.core.executor_lost(link.executor_id)
        self.kick()

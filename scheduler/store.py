"""Jobs and tasks in etcd: how the leader writes them (fenced, batched) and reads them back.

A job is its record ``/rota/jobs/<id>`` (the commit marker, written last) plus its spec
in parts of at most 1 MiB under ``/rota/jobspec/<id>/``, so a job of any size is written
in transactions within etcd's request limit and is visible only once complete. A task
has a key ``/rota/tasks/<id>/<index>`` only once its state changes: no key means
PENDING with no attempt yet, which keeps submission cheap. docs/keys.md has the layout.

Every write is ordered, not only fenced. A transaction sent to an etcd member that froze before
reading it times out, and the client sends it again elsewhere; when the member thaws, it reads
the first copy and applies it, after later writes: a task written SUCCEEDED would be written back
to ASSIGNED. So each write also checks and advances ``keys.WRITE_ORDER`` ("<term>/<sequence>"):
a copy that arrives after a later write of the same leader finds the order moved past it and
changes nothing.

etcd out of space (its NOSPACE alarm) refuses every transaction with a put, so one that only
deletes then checks the order without advancing it: retention goes on freeing space. A copy
delayed past such a delete could then still land, but only until the next ordered put, which
etcd takes again only once space is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from rota.common.jobspec import JobSpec
from rota.common.states import CANCELLED
from rota.metastore import keys
from rota.metastore.client import (
    KV,
    EtcdClient,
    EtcdError,
    NoSpace,
    create_revision_is,
    delete_op,
    put_op,
    value_below,
)
from rota.metastore.election import Election, Fenced
from rota.scheduler.core import (
    AnyJob,
    DeleteJob,
    EndedJob,
    Job,
    PutCheckpoint,
    PutJob,
    PutRecord,
    PutTask,
    restore_task,
)
from rota.scheduler.placement import ExecutorSlot

log = logging.getLogger("rota.store")


#: Writes per transaction, below etcd's --max-txn-ops 1024 that the launcher sets.
MAX_OPS = 1000
#: Bytes per transaction, below the 1.5 MiB etcd accepts by default.
MAX_TXN_BYTES = 1_200_000
SPEC_PART = 1_000_000
#: Transactions in flight at once while committing a large batch.
PARALLEL_TXNS = 8


#: One encoder for every record: json.dumps with separators builds a new encoder per call (2 us of 5).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


Write: TypeAlias = PutTask | PutJob | DeleteJob | PutCheckpoint | PutRecord
#: Records a rebuild reads between two yields to the event loop (about 10 ms of work).
LOAD_CHUNK = 2000
#: Jobs to read whole above which a rebuild reads the spec and task prefixes in one go, not per job.
WHOLE_BY_PREFIX = 200
#: Jobs deleted per transaction: six range deletes and a delete each, within etcd's 1024 ops.
DELETES_PER_TXN = 140


#: The largest record sent: one over etcd's request limit would be refused on every retry, and
#: everything committed with it would wait forever. Results are capped well below it
#: (common/results.py); this is the last guard.
MAX_RECORD_BYTES = 1_000_000


def task_value(job_id: str, index: int, record: dict[str, Any]) -> bytes:
    """A task record as stored; one too large keeps its state but not its result, loudly."""
    value = _dumps(record)
    if len(value) <= MAX_RECORD_BYTES:
        return value
    log.error(
        "task %s/%d: its record of %d bytes is over etcd's limit; its result is dropped",
        job_id,
        index,
        len(value),
    )
    error = f"the result was not kept: its record of {len(value)} bytes is over etcd's request limit"
    return _dumps({**record, "r": {"error": error, "truncated": True}})


def _waves(latest: dict[bytes, bytes | None]) -> list[list[list[Any]]]:
    """The transactions of one commit, in waves committed one after the other (a wave's side by
    side). One transaction is atomic; split over several, a barrier record could land before a
    checkpoint of the same drain that its arrival carried, so barrier records go in a last wave."""
    batches = _batches(latest.items())
    if len(batches) <= 1:
        return [batches]
    rest = [(k, v) for k, v in latest.items() if not k.startswith(keys.BARRIERS)]
    if len(rest) == len(latest):
        return [batches]
    return [_batches(rest), _batches((k, v) for k, v in latest.items() if k.startswith(keys.BARRIERS))]


def _batches(items: Iterable[tuple[bytes, bytes | None]]) -> list[list[Any]]:
    """Puts and deletes in transactions of at most MAX_OPS - 1 operations and MAX_TXN_BYTES."""
    batches: list[list[Any]] = [[]]
    size = 0
    for key, value in items:
        vlen = len(value) if value is not None else 0
        if batches[-1] and (len(batches[-1]) >= MAX_OPS - 1 or size + len(key) + vlen > MAX_TXN_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(put_op(key, value) if value is not None else delete_op(key))
        size += len(key) + vlen + 16
    return batches if batches[0] else []


def _latest(decisions: Sequence[Write], skip: frozenset[str] = frozenset()) -> dict[bytes, bytes | None]:
    """The last value of every key the decisions write (a txn may not name a key twice; None
    deletes it), leaving out the jobs in ``skip`` (deleted in the same commit)."""
    latest: dict[bytes, bytes | None] = {}
    for d in decisions:
        if isinstance(d, PutTask):
            job_id, index = d.task.job.id, d.task.index
            if job_id not in skip:
                latest[keys.task(job_id, index)] = task_value(job_id, index, d.record)
        elif isinstance(d, PutJob) and d.job.id not in skip:
            latest[keys.job(d.job.id)] = _dumps(d.job.record())
        elif isinstance(d, PutCheckpoint) and d.task.job.id not in skip:
            latest[keys.checkpoint(d.task.job.id, d.task.index)] = d.data
        elif isinstance(d, PutRecord) and d.job.id not in skip:
            latest[d.key] = d.value
    return latest


def _ops(decisions: Sequence[Write]) -> list[Any]:
    return [put_op(k, v) if v is not None else delete_op(k) for k, v in _latest(decisions).items()]


def _delete_ops(job_id: str) -> list[Any]:
    """A job's keys: its record first (the commit marker goes first, as it came last)."""
    return [
        delete_op(keys.job(job_id)),
        delete_op(keys.job_specs(job_id), prefix=True),
        delete_op(keys.job_tasks(job_id), prefix=True),
        delete_op(keys.job_checkpoints(job_id), prefix=True),
        delete_op(keys.job_endpoints(job_id), prefix=True),
        delete_op(keys.job_barriers(job_id), prefix=True),
    ]


def _executor(rec: dict[str, Any], lease: int) -> ExecutorSlot:
    return ExecutorSlot(
        id=rec["id"],
        name=rec.get("name", rec["id"]),
        addr=rec.get("addr", ""),
        slots=int(rec.get("slots", 1)),
        kinds=frozenset(rec.get("kinds", ())),
        labels=rec.get("labels", {}),
        resources={str(k): float(v) for k, v in rec.get("resources", {}).items()},
        lease_id=lease,
        drain_requested=bool(rec.get("draining", False)),
        drain_timeout=rec.get("drain_timeout"),
    )


@dataclass
class Snapshot:
    """Everything a new leader needs, read at one revision."""

    jobs: list[AnyJob]
    executors: list[ExecutorSlot]
    revision: int
    #: The endpoints of running jobs: (job id, endpoint name, record), for Core.restore_endpoints.
    endpoints: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: (job id, barrier name, record) of the running jobs' barriers.
    barriers: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: The schedules' records (scheduler.schedules).
    schedules: list[dict[str, Any]] = field(default_factory=list)


class Store:
    def __init__(self, client: EtcdClient, election: Election) -> None:
        self.client = client
        self.election = election
        self.txns = 0
        self.writes = 0
        #: Jobs deleted once their retention passed.
        self.deleted = 0
        #: Sequence of the latest ordered write of this term (see the module docstring).
        self._seq = 0

    def _order(self, seq: int) -> bytes:
        return f"{self.election.term:020d}/{seq:020d}".encode()

    async def begin_term(self) -> None:
        """Start this term's write order: above every write of earlier terms.

        With etcd out of space the order stays as an earlier term left it, which is below ours
        all the same: a leader elected just before the alarm still rebuilds and answers reads."""
        self._seq = 0
        try:
            await self.election.fenced_txn([put_op(keys.WRITE_ORDER, self._order(0))])
        except NoSpace:
            current = await self.client.get(keys.WRITE_ORDER)
            if current is None or current.value >= self._order(0):
                raise
            log.warning("etcd is out of space: this term's writes start from the order etcd holds")

    def _next_write(self) -> tuple[Any, Any]:
        """The compare and the put that order one write (its transactions may run in parallel:
        each allows the order to be at its own sequence already)."""
        self._seq += 1
        order = self._order(self._seq)
        return value_below(keys.WRITE_ORDER, order + b"\0"), put_op(keys.WRITE_ORDER, order)

    async def create_job(
        self,
        job_id: str,
        spec: JobSpec,
        created: float,
        along: Sequence[Write] = (),
        owner: str = "",
        also: Sequence[Any] = (),
    ) -> int | None:
        """Write a job; return its record's create revision, None if it exists.

        ``along`` are state writes (the job's first placements) committed in the same final
        transaction when they fit, else before it, so a submission costs one commit. ``also`` are
        puts that must commit with the job record itself (a schedule's record of its fire).
        """
        blob = _dumps(spec.to_dict())
        parts = [blob[i : i + SPEC_PART] for i in range(0, len(blob), SPEC_PART)] or [b"{}"]
        record: dict[str, Any] = {"id": job_id, "created": created, "state": None}
        if owner:
            record["owner"] = owner
        deletes = [d for d in along if isinstance(d, DeleteJob)]
        extra = _ops(along)
        try:
            for i, part in enumerate(parts[:-1]):
                await self._txn([put_op(keys.job_spec(job_id, i), part)], self._next_write())
            if (
                len(extra) > MAX_OPS - 3
                or len(parts[-1]) + sum(op.ByteSize() for op in extra) > MAX_TXN_BYTES
            ):
                await self.commit(along)
                extra, deletes = [], []
        except NoSpace:
            await self._drop_parts(job_id)
            raise
        ordered, order_put = self._next_write()
        # A failed compare (the job exists, or the order moved past this write) ends in None, and
        # the caller steps down, unless the record is this very submission's.
        try:
            result = await self.election.fenced_txn(
                [
                    put_op(keys.job_spec(job_id, len(parts) - 1), parts[-1]),
                    put_op(keys.job(job_id), _dumps(record)),
                    *also,
                    *extra,
                    order_put,
                ],
                compare=[create_revision_is(keys.job(job_id), 0), ordered],
            )
        except NoSpace:
            # The write that fills etcd is applied and still answered "no space": look.
            kv = await self.client.get(keys.job(job_id))
            if kv is None or kv.value != _dumps(record):
                await self._drop_parts(job_id)
                raise
            revision = kv.create_revision
        else:
            if result.succeeded:
                revision = result.revision
            else:
                ours = await self._ours(job_id, created)
                if ours is None:
                    return None
                revision = ours
        self.writes += len(extra)
        self.txns += len(parts)
        self.writes += len(parts) + 1
        await self.commit(deletes)
        return revision

    async def _ours(self, job_id: str, created: float) -> int | None:
        """The create revision of the job's record when this submission wrote it: the client resends
        a transaction whose answer was lost, and the copy that applied makes the resent one fail
        its compares. The record's creation time, taken by this leader, tells it apart."""
        kv = await self.client.get(keys.job(job_id))
        if kv is None:
            return None
        try:
            mine = json.loads(kv.value).get("created") == created
        except (ValueError, AttributeError):
            return None
        return kv.create_revision if mine else None

    async def _drop_parts(self, job_id: str) -> None:
        """A submission etcd refused for space: the spec parts it wrote go (a delete needs no space)."""
        await self.election.fenced_txn([delete_op(keys.job_specs(job_id), prefix=True)])

    @staticmethod
    def schedule_put(schedule_id: str, record: dict[str, Any]) -> Any:
        return put_op(keys.schedule(schedule_id), _dumps(record))

    async def put_schedule(self, schedule_id: str, record: dict[str, Any], create: bool = False) -> bool:
        """Write a schedule's record (fenced, ordered); with ``create``, only if none exists (False then)."""
        compare, order_put = self._next_write()
        checks = [compare, create_revision_is(keys.schedule(schedule_id), 0)] if create else [compare]
        result = await self.election.fenced_txn(
            [self.schedule_put(schedule_id, record), order_put], compare=checks
        )
        self.txns += 1
        self.writes += 1
        if not result.succeeded and not create:
            raise Fenced("a later write of this leader is already in etcd: this one is out of order")
        return bool(result.succeeded)

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._txn([delete_op(keys.schedule(schedule_id))], self._next_write())
        self.txns += 1

    async def _txn(self, ops: Sequence[Any], order: tuple[Any, Any | None]) -> None:
        compare, put = order
        result = await self.election.fenced_txn([*ops, put] if put is not None else ops, compare=[compare])
        if not result.succeeded:
            raise Fenced("a later write of this leader is already in etcd: this one is out of order")

    async def commit(self, decisions: Sequence[Write]) -> None:
        """Persist state changes in as few fenced transactions as fit etcd's limits; then delete
        expired jobs (never in a transaction that also writes: etcd refuses a key named twice).

        When etcd is out of space the deletes are made all the same, then NoSpace is raised: the
        caller keeps the other writes for later, without the deleted jobs' (see ``held``)."""
        deleted = [d.job.id for d in decisions if isinstance(d, DeleteJob)]
        full: NoSpace | None = None
        try:
            await self._put(_latest(decisions, skip=frozenset(deleted)))
        except NoSpace as e:
            full = e
        await self.delete_jobs(deleted)
        if full is not None:
            raise full

    async def delete_jobs(self, job_ids: Sequence[str]) -> None:
        for i in range(0, len(job_ids), DELETES_PER_TXN):
            batch = job_ids[i : i + DELETES_PER_TXN]
            ops = [op for job_id in batch for op in _delete_ops(job_id)]
            order = self._next_write()
            try:
                await self._txn(ops, order)
            except NoSpace:
                await self._txn(ops, (order[0], None))  # the order stays; see the module docstring
            self.txns += 1
            self.deleted += len(batch)

    async def _put(self, latest: dict[bytes, bytes | None]) -> None:
        if not latest:
            return
        waves = _waves(latest)
        order = self._next_write()
        for wave in waves:
            for i in range(0, len(wave), PARALLEL_TXNS):
                await asyncio.gather(*(self._txn(b, order) for b in wave[i : i + PARALLEL_TXNS]))
            self.txns += len(wave)
        self.writes += len(latest)

    async def still_leading(self) -> bool:
        """Whether etcd still has us as the leader, checked by a fenced transaction of no writes:
        what a step that cannot itself be fenced (revoking a lease) asks first."""
        try:
            await self.election.fenced_txn([])
        except (Fenced, EtcdError):
            return False
        return True

    async def put_executor(self, ex: ExecutorSlot) -> None:
        """Register an executor under its own lease: etcd deletes the key when the lease ends.
        Written again when an operator drains or undrains it, so a new leader knows."""
        record: dict[str, Any] = {
            "id": ex.id,
            "name": ex.name,
            "addr": ex.addr,
            "slots": ex.slots,
            "kinds": sorted(ex.kinds),
            "labels": ex.labels,
        }
        if ex.resources:
            record["resources"] = ex.resources
        if ex.drain_requested:
            record["draining"] = True
            if ex.drain_timeout is not None:
                record["drain_timeout"] = ex.drain_timeout
        await self.election.fenced_txn([put_op(keys.executor(ex.id), _dumps(record), lease=ex.lease_id)])

    async def load(self) -> Snapshot:
        """Read every job, task and executor at one revision, dropping half-written jobs.

        An ended job whose record carries its summary comes back as an EndedJob: its spec and
        task records are not read at all. Only running jobs (and ended ones stored before
        summaries) are read whole: per job when they are few, by whole prefixes otherwise."""
        job_kvs, rev = await self.client.get_prefix(keys.JOBS)
        ex_kvs, _ = await self.client.get_prefix(keys.EXECUTORS, revision=rev)
        summaries: list[EndedJob] = []
        whole: dict[str, tuple[KV, dict[str, Any]]] = {}
        #: Records that cannot be read: their spec parts are not half-written jobs, and stay.
        unreadable: set[str] = set()
        for n, kv in enumerate(job_kvs, 1):
            if n % LOAD_CHUNK == 0:
                await asyncio.sleep(0)  # the leader's lease is kept alive on this loop
            job_id = keys.job_id(kv.key)
            try:
                rec = json.loads(kv.value)
                summary = EndedJob.from_record(job_id, kv.create_revision, rec)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                log.error("job %s cannot be read from etcd and is skipped: %r", job_id, e)
                unreadable.add(job_id)
                continue
            if summary is not None:
                summaries.append(summary)
            else:
                whole[job_id] = (kv, rec)
        if len(whole) > WHOLE_BY_PREFIX or len(whole) * 4 > len(job_kvs):
            spec_kvs, _ = await self.client.get_prefix(keys.JOBSPECS, revision=rev)
            task_kvs, _ = await self.client.get_prefix(keys.TASKS, revision=rev)
        else:
            spec_kvs, _ = await self.client.get_prefix(keys.JOBSPECS, revision=rev, keys_only=True)
            spec_kvs = [kv for kv in spec_kvs if keys.spec_job_id(kv.key) not in whole]  # for half-written
            task_kvs = []
            for job_id in whole:
                specs, _ = await self.client.get_prefix(keys.job_specs(job_id), revision=rev)
                tasks, _ = await self.client.get_prefix(keys.job_tasks(job_id), revision=rev)
                spec_kvs += specs
                task_kvs += tasks
        parts: dict[str, list[bytes]] = {}
        for kv in spec_kvs:
            parts.setdefault(keys.spec_job_id(kv.key), []).append(kv.value)
        for job_id in (*(s.id for s in summaries), *unreadable):
            parts.pop(job_id, None)
        jobs: dict[str, Job] = {}
        for n, (job_id, (kv, rec)) in enumerate(whole.items(), 1):
            if n % LOAD_CHUNK == 0:
                await asyncio.sleep(0)
            blob = b"".join(parts.pop(job_id, []))
            try:
                job = Job(
                    job_id,
                    JobSpec.from_stored(json.loads(blob)),
                    kv.create_revision,
                    float(rec.get("created", 0.0)),
                    str(rec.get("owner", "")),
                )
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                # One unreadable record must not stop every leader from starting: leave it, loudly.
                log.error("job %s cannot be read from etcd and is skipped: %r", job_id, e)
                continue
            job.state = rec.get("state")
            job.ended = rec.get("ended")
            job.cancelled = job.state == CANCELLED
            jobs[job_id] = job
        for n, kv in enumerate(task_kvs, 1):
            if n % LOAD_CHUNK == 0:
                await asyncio.sleep(0)
            job_id, index = keys.task_of(kv.key)
            owner = jobs.get(job_id)
            if owner is not None and 0 <= index < len(owner.tasks):
                try:
                    restore_task(owner, index, json.loads(kv.value))
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    log.error(
                        "task %s/%d cannot be read from etcd; it counts as never run: %r", job_id, index, e
                    )
        if parts:
            log.warning("dropping %d half-written job(s): %s", len(parts), ", ".join(sorted(parts)))
            await self.election.fenced_txn([delete_op(keys.job_specs(j), prefix=True) for j in parts])
        executors = [_executor(json.loads(kv.value), kv.lease) for kv in ex_kvs]
        ordered: list[AnyJob] = sorted([*jobs.values(), *summaries], key=lambda j: j.seq)
        schedule_kvs, _ = await self.client.get_prefix(keys.SCHEDULES, revision=rev)
        schedules = []
        for kv in schedule_kvs:
            try:
                schedules.append(json.loads(kv.value))
            except ValueError as e:
                log.error("schedule record %r cannot be read and is skipped: %r", kv.key, e)
        return Snapshot(
            ordered,
            executors,
            rev,
            await self._endpoints(jobs, rev),
            await self._barriers(jobs, rev),
            schedules,
        )

    async def _endpoints(self, jobs: dict[str, Job], rev: int) -> list[tuple[str, str, bytes]]:
        """The endpoint records of the jobs still running (those of ended jobs were withdrawn, or
        go with the job)."""
        running = {job_id for job_id, job in jobs.items() if job.state is None}
        if not running:
            return []
        kvs, _ = await self.client.get_prefix(keys.ENDPOINTS, revision=rev)
        found = []
        for kv in kvs:
            job_id, name = keys.endpoint_of(kv.key)
            if job_id in running:
                found.append((job_id, name, kv.value))
        return found

    async def _barriers(self, jobs: dict[str, Job], rev: int) -> list[tuple[str, str, dict[str, Any]]]:
        """The barriers of the jobs still running (those of ended jobs wait for their retention)."""
        running = [job_id for job_id, job in jobs.items() if job.state is None]
        if not running:
            return []
        if len(running) > WHOLE_BY_PREFIX:
            kvs, _ = await self.client.get_prefix(keys.BARRIERS, revision=rev)
        else:
            kvs = []
            for job_id in running:
                kvs += (await self.client.get_prefix(keys.job_barriers(job_id), revision=rev))[0]
        out = []
        for kv in kvs:
            job_id, name = keys.barrier_of(kv.key)
            if job_id not in jobs or jobs[job_id].state is not None:
                continue
            try:
                record = json.loads(kv.value)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                log.error("barrier %s of job %s cannot be read from etcd and is skipped: %r", name, job_id, e)
                continue
            out.append((job_id, name, record))
        return out

    async def read_task(self, job_id: str, index: int) -> dict[str, Any] | None:
        """One task record of an ended job held as a summary (its report task's); None when gone."""
        kv = await self.client.get(keys.task(job_id, index))
        return None if kv is None else json.loads(kv.value)

    async def read_tasks(
        self, job_id: str, offset: int, limit: int
    ) -> tuple[JobSpec, dict[int, dict[str, Any]]]:
        """An ended job held as a summary: its spec and the records of tasks ``[offset, offset + limit)``."""
        spec_kvs, rev = await self.client.get_prefix(keys.job_specs(job_id))
        task_kvs, _ = await self.client.get_range(
            keys.task(job_id, offset), keys.task(job_id, offset + limit), revision=rev
        )
        if not spec_kvs:
            raise LookupError(f"job {job_id}'s spec is gone from etcd (it expired)")
        spec = JobSpec.from_stored(json.loads(b"".join(kv.value for kv in spec_kvs)))
        return spec, {keys.task_of(kv.key)[1]: json.loads(kv.value) for kv in task_kvs}

"""The leader's job API: submit (acknowledged once committed), look up, wait for the end, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from rota.common import logs
from rota.common.jobspec import JobSpec
from rota.common.states import SUCCEEDED
from rota.metastore.client import EtcdError, NoSpace
from rota.metastore.election import Fenced
from rota.scheduler.collector import Collector
from rota.scheduler.core import AnyJob, Core, Decision, Dispatch, Job, PutTask
from rota.scheduler.pipeline import CommitPipeline, NotReady, OutOfSpace, writes
from rota.scheduler.store import Store
from rota.scheduler.views import job_doc, job_page_doc, stored_page_doc, task_doc

log = logging.getLogger("rota.leader")

#: Tasks above which a job's objects are built in a thread (10,000 take about 5 ms) and kept out of
#: the cyclic collector's sight while it holds them (see collector.py).
BIG_JOB = 10_000
#: Jobs list-jobs looks at between two yields to the event loop.
LIST_CHUNK = 5000
#: Tasks of an ended job's page built and encoded between two yields to the event loop (a whole
#: page of 10,000 took 40 ms in one step on an idle machine, several times that on a busy one).
PAGE_STEP = 1000


def without_job(decisions: list[Decision], job: Job) -> list[Decision]:
    """``decisions`` less the writes and dispatches of ``job`` (a submission etcd refused)."""
    out: list[Decision] = []
    for d in decisions:
        if isinstance(d, PutTask) and d.task.job is job:
            continue
        if isinstance(d, Dispatch):
            tasks = [(t, a) for t, a in d.tasks if t.job is not job]
            if not tasks:
                continue
            d = Dispatch(d.executor, tasks)
        out.append(d)
    return out


class JobApi:
    def __init__(
        self,
        core: Core,
        store: Store,
        pipeline: CommitPipeline,
        route: Callable[[list[Decision]], None],
        check: Callable[[], None],
        give_up: Callable[[], None],
    ) -> None:
        self.core = core
        self.store = store
        self.pipeline = pipeline
        self.route = route
        self.check = check
        self.give_up = give_up
        #: Orders jobs of equal priority: set to the revision the leader rebuilt from, then counts up.
        self.seq = 0
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._submitting: dict[str, asyncio.Task[None]] = {}
        self.collector = Collector(BIG_JOB, let_go=core.summarize)

    def unplaceable(self, spec: JobSpec) -> str:
        """Why a task of ``spec`` could never run on the executors attached now ("" when it could,
        or when none offers its kind: a cluster starting up is not judged)."""
        for i, tmpl in enumerate(spec.tasks):
            if not tmpl.needs:
                continue
            offering = [
                (e.name, e.labels, e.resources) for e in self.core.executors.values() if tmpl.kind in e.kinds
            ]
            why = tmpl.needs.shortfall(offering) if offering else ""
            if why:
                return f"task[{i}] ({tmpl.name}) can run on no executor: {why}"
        return ""

    async def submit(
        self, job_id: str, spec: JobSpec, owner: str = "", also: Sequence[Any] = ()
    ) -> tuple[str, bool]:
        """Commit a job to etcd, then schedule it; created is False when the id exists. ``also``:
        puts committed with the job record (Store.create_job).

        The commit runs as a task of its own: a client that gives up (deadline, cancel)
        must not leave a job in the core that etcd never got.
        """
        self.check()
        if job_id not in self._submitting and not self._known(job_id):
            # A retry of a submission already made is answered even while etcd is out of space.
            await self.pipeline.room(f"job {job_id!r} was not submitted")
            self.check()
        pending = self._submitting.get(job_id)
        if pending is not None:
            await asyncio.shield(pending)  # raises NotReady if that submission failed
            return job_id, False
        if self._known(job_id):
            # An expired job is not run again: a late retry of its submission finds it ended.
            return job_id, False
        task = asyncio.create_task(self._create(job_id, spec, owner, also))
        self._submitting[job_id] = task
        task.add_done_callback(lambda t: self._submitted(job_id, t))
        await asyncio.shield(task)
        return job_id, True

    def running(self, job_id: str) -> bool:
        """Whether a job is known and has not ended (a schedule's overlap)."""
        return job_id in self.core.active or job_id in self._submitting

    def _known(self, job_id: str) -> bool:
        return job_id in self.core.jobs or job_id in self.core.expired

    def _submitted(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._submitting.pop(job_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here; the callers that still wait see it too

    async def _create(self, job_id: str, spec: JobSpec, owner: str, also: Sequence[Any] = ()) -> None:
        created_at = time.time()
        if spec.task_count() > BIG_JOB:
            # Its task objects are built beside the event loop, which keeps answering meanwhile.
            job = await self.collector.build(lambda: Job(job_id, spec, 0, created_at, owner))
        else:
            job = Job(job_id, spec, 0, created_at, owner)
        try:
            async with self.pipeline.lock:
                self.check()
                if self.pipeline.out_of_space:
                    raise OutOfSpace(f"job {job_id!r} was not submitted")
                self.seq += 1
                job.seq = self.seq
                # Place the job now, so its first placements commit with the job itself.
                self.core.add_job(job)
                self.collector.started(job)
                decisions = self.core.drain()
                try:
                    created = await self.store.create_job(
                        job_id, spec, created_at, along=writes(decisions), owner=owner, also=also
                    )
                except NoSpace:
                    # Nothing of the job is in etcd (the store made sure): it leaves the core, and what
                    # else was drained with it waits in the pipeline for etcd to have room.
                    self.core.withdraw_job(job_id)
                    self.pipeline.hold(without_job(decisions, job))
                    raise OutOfSpace(f"job {job_id!r} was not submitted") from None
                except (Fenced, EtcdError) as e:
                    # The core holds a job etcd may not have: only a rebuild can tell.
                    self.give_up()
                    raise NotReady(f"leadership in doubt while submitting: {e}") from None
                if created is None:
                    self.give_up()
                    raise NotReady("the job appeared in etcd under another leader")
                self.route(decisions)
                log.debug(
                    "job %s committed: %d tasks",
                    job_id,
                    len(job.tasks),
                    **logs.ids(job=job_id),
                )
        except BaseException:
            if self.core.jobs.get(job_id) is not job:
                # Never held by the core, or withdrawn: its tasks go now, and what was frozen for it.
                self.collector.dropped(job)
            raise

    def job(self, job_id: str) -> AnyJob | None:
        """A committed job (one still being submitted is not shown yet)."""
        self.check()
        return None if job_id in self._submitting else self.core.jobs.get(job_id)

    def place_of(self, job_id: str) -> tuple[int, str] | None:
        """Where a job stands in submission order, also for a job that expired since."""
        job = self.core.jobs.get(job_id)
        if job is not None:
            return job.seq, job.id
        gone = self.core.expired.get(job_id)
        return (gone[2], job_id) if gone else None

    async def list_jobs(
        self, state: str, limit: int, before: tuple[int, str] | None
    ) -> tuple[list[Job], bool]:
        """The newest ``limit`` jobs (in ``state`` when set) submitted before ``before``, oldest
        first, and whether older ones remain. A filter may pass over many jobs: the walk yields to
        the loop every LIST_CHUNK of them, and goes on from the job it reached (jobs added meanwhile
        are newer, an expired one is skipped: nothing is repeated or lost)."""
        self.check()
        out: list[Job] = []
        while True:
            walked = 0
            for job in self.core.newest(before):
                if not state or job.current_state() == state:
                    if len(out) == limit:
                        out.reverse()
                        return out, True
                    out.append(job)
                walked += 1
                before = (job.seq, job.id)
                if walked == LIST_CHUNK:
                    break
            else:
                out.reverse()
                return out, False
            await asyncio.sleep(0)
            self.check()

    def _held(self, job: AnyJob) -> AnyJob | None:
        """What the core holds now of an ended ``job`` looked up before an await: it may have been
        held as a summary since (its tasks let go) or have expired (None)."""
        if isinstance(job, Job) and job.state is not None and self.core.jobs.get(job.id) is not job:
            return self.core.jobs.get(job.id)
        return job

    async def page_doc(self, job: AnyJob, offset: int, limit: int) -> dict[str, Any] | None:
        """The get-job document with tasks ``[offset, offset + limit)``: from memory, or for an
        ended job held as a summary, from etcd (a spec and a range of task records); None when
        that job has just expired."""
        job = self._held(job)
        if job is None:
            return None
        if isinstance(job, Job):
            return job_page_doc(
                job, offset, limit, self.core.endpoints.of_job(job.id), self.core.barriers.docs(job.id),
                list(self.core.executors.values()),
            )  # fmt: skip
        total = job.task_count()
        if offset >= total:
            return {**job_doc(job), "tasks": []}
        limit = min(limit, total - offset)
        try:
            spec, records = await self.store.read_tasks(job.id, offset, limit)
            report_index = spec.report_index()
            report_record = None
            if report_index is not None:
                report_record = records.get(report_index) or await self.store.read_task(job.id, report_index)
        except EtcdError as e:
            raise NotReady(f"cannot read job {job.id}'s tasks from etcd: {e}") from None
        except LookupError:
            return None
        except (ValueError, TypeError, AttributeError) as e:
            log.error("job %s cannot be read back from etcd: %r", job.id, e)
            raise NotReady(f"job {job.id}'s records in etcd cannot be read") from None
        return stored_page_doc(job, spec, records, offset, limit, report_record)

    async def page_json(self, job: AnyJob, offset: int, limit: int) -> bytes | None:
        """``page_doc`` as JSON. An ended job's tasks no longer change, so a page of many is built
        and encoded PAGE_STEP tasks at a time, the event loop answering others in between; a running
        job's page stays one snapshot."""
        job = self._held(job)
        if job is None:
            return None
        if not (isinstance(job, Job) and job.state is not None and limit > PAGE_STEP):
            doc = await self.page_doc(job, offset, limit)
            return None if doc is None else json.dumps(doc).encode()
        head = await self.page_doc(job, offset, 0)
        assert head is not None and head.pop("tasks") == []
        shown = self.core.endpoints.of_job(job.id)
        page = job.tasks[offset : offset + limit]
        parts = []
        for i in range(0, len(page), PAGE_STEP):
            if i:
                await asyncio.sleep(0)
            parts.append(json.dumps([task_doc(t, shown.get(t.index)) for t in page[i : i + PAGE_STEP]])[1:-1])
        return b"".join((json.dumps(head)[:-1].encode(), b', "tasks": [', ", ".join(parts).encode(), b"]}"))

    async def wait_job(self, job_id: str, timeout: float) -> AnyJob | None:
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

    async def cancel_job(self, job_id: str) -> AnyJob | None:
        """Cancel a job; the answer comes once the cancellation is committed."""
        job = self.job(job_id)  # one still being submitted is not known yet
        if job is None or job.state is not None:
            return job  # nothing to change
        await self.pipeline.room(f"job {job_id!r} was not cancelled")
        self.check()
        job = self.core.cancel_job(job_id)
        try:
            await self.pipeline.sync()
        except OutOfSpace:
            raise OutOfSpace(
                f"job {job_id!r} is cancelled on the leader, but that is held until etcd has room again"
            ) from None
        self.check()
        return job

    def ended(self, job: Job) -> None:
        """A job's end is committed: log it and wake whoever waits for it."""
        level = logging.DEBUG if job.state == SUCCEEDED else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "job %s ended %s: %s",
                job.id,
                job.state,
                ", ".join(f"{n} {s.lower()}" for s, n in sorted(job.counts.items()) if n),
                **logs.ids(job=job.id),
            )
        for f in self._waiters.pop(job.id, []):
            if not f.done():
                f.set_result(None)

    def why_missing(self, job_id: str) -> str:
        """What to tell a caller asking for a job that is not here."""
        if job_id in self.core.expired:
            ended, retention, _ = self.core.expired[job_id]
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ended))
            return (
                f"job {job_id!r} expired: it ended at {when} and was kept for {retention:g}s, its retention"
            )
        return (
            f"no job {job_id!r} (an ended job is deleted once its retention has passed: "
            f"{self.core.retention:g}s unless its job file says otherwise)"
        )

    def fail_waiters(self, error: Exception) -> None:
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.set_exception(error)
        self._waiters.clear()

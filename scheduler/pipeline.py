"""The leader's commit pipeline: decisions of the core are committed to etcd before anyone hears of them.

One drain-commit-route at a time, so writes reach etcd in the order the core made them, and every
dispatch, cancel, acknowledgement or job end is routed only after the writes it depends on are
committed (fenced and batched by the store).

When etcd is out of space (its NOSPACE alarm) the writes it refuses are held, in order, with
everything routed after them, and tried again every ``HELD_RETRY`` while the alarm lasts, at once
when it is gone; the deletes of expired jobs go on meanwhile, since they are what frees the space.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from rota.metastore.client import EtcdError, NoSpace, Refused
from rota.metastore.election import Fenced
from rota.scheduler.core import Core, Decision, DeleteJob, PutCheckpoint, PutJob, PutRecord, PutTask
from rota.scheduler.store import Store, Write

log = logging.getLogger("rota.leader")

#: Back-off of a commit that etcd could not take yet (no quorum, a slow member), doubling to the cap.
RETRY_FIRST = 0.05
RETRY_CAP = 1.0
#: While etcd is out of space, how often held writes are offered to it again.
HELD_RETRY = 1.0


class NotReady(Exception):
    """This master is not (or no longer) a ready leader."""


class OutOfSpace(Exception):
    """etcd is out of space (its NOSPACE alarm is raised): a write was refused or is held."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"etcd is out of space (NOSPACE alarm): {what}; space comes back as ended jobs pass "
            "their retention and the leader compacts and defragments etcd (see cluster-status)"
        )


def writes(decisions: list[Decision]) -> list[Write]:
    return [d for d in decisions if isinstance(d, (PutTask, PutJob, DeleteJob, PutCheckpoint, PutRecord))]


def held(decisions: Sequence[Decision]) -> list[Decision]:
    """What is left of ``decisions`` once their deletes are committed: all but the deletes and the
    writes of the jobs deleted (a late put must not bring a deleted job back), in order."""
    gone = {d.job.id for d in decisions if isinstance(d, DeleteJob)}
    if not gone:
        return list(decisions)
    return [
        d
        for d in decisions
        if not isinstance(d, DeleteJob)
        and not (isinstance(d, (PutJob, PutRecord)) and d.job.id in gone)
        and not (isinstance(d, (PutTask, PutCheckpoint)) and d.task.job.id in gone)
    ]


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)


class CommitPipeline:
    def __init__(
        self,
        core: Core,
        store: Store,
        route: Callable[[list[Decision]], None],
        give_up: Callable[[], None],
        alarm: Callable[[], bool] = lambda: False,
    ) -> None:
        self.core = core
        self.store = store
        self.route = route
        self.give_up = give_up
        #: Whether etcd's NOSPACE alarm is known to be raised (the master's watch on etcd's space).
        self.alarm = alarm
        #: Held by whoever drains the core, so writes reach etcd in the order they were decided.
        self.lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._synced: list[asyncio.Future[None]] = []
        #: Decisions drained but not committed because etcd is out of space, oldest first.
        self.held: list[Decision] = []
        #: Until when held writes wait before they are offered to etcd again.
        self._full_until = 0.0

    @property
    def out_of_space(self) -> bool:
        """Writes are held, or etcd's alarm says they would be: new work is refused, not queued."""
        return bool(self.held) or self.alarm()

    async def room(self, what: str) -> None:
        """Raise OutOfSpace (saying ``what`` was not done) unless etcd takes writes: with the alarm
        gone, writes still held are offered to etcd first."""
        if self.held and not self.alarm():
            with contextlib.suppress(OutOfSpace):
                await self.sync()
        if self.out_of_space:
            raise OutOfSpace(what)

    def kick(self) -> None:
        self._wake.set()

    async def sync(self) -> None:
        """Return once every decision the core has made so far is committed to etcd (OutOfSpace when
        they are held instead)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._synced.append(fut)
        self.kick()
        await fut

    def fail_waiters(self, error: Exception) -> None:
        for f in self._synced:
            if not f.done():
                f.set_exception(error)
        self._synced = []

    def hold(self, decisions: list[Decision]) -> None:
        """Decisions drained by another (a submission etcd refused) that go out before any later."""
        self.held[:0] = decisions
        self._full_until = time.monotonic() + HELD_RETRY
        self.kick()

    async def _isolate(self, puts: list[Write], whole_refused: bool = True) -> None:
        """Commit ``puts`` in halves, in order, down to the writes etcd refuses one by one (a batch
        etcd refused as a whole is split at once). A task record etcd refuses is written again
        without its result, which becomes an error saying why (in the core too); any other refused
        write is left out, loudly. Either way the rest goes on."""
        if len(puts) > 1:
            if not whole_refused:
                try:
                    await self.store.commit(puts)
                    return
                except Refused:
                    pass
            mid = len(puts) // 2
            await self._isolate(puts[:mid], whole_refused=False)
            await self._isolate(puts[mid:], whole_refused=False)
            return
        for w in puts:
            try:
                await self.store.commit([w])
                continue
            except Refused as e:
                reason = str(e)
            if isinstance(w, PutTask):
                task = w.task
                result = {"error": f"etcd refused this task's record, so its result was not kept: {reason}"}
                log.error("task %s: %s", task.id, result["error"])
                if task.attempt == w.record.get("a"):
                    task.result = result
                try:
                    await self.store.commit([PutTask(task, {**w.record, "r": result})])
                    continue
                except Refused as e:
                    reason = str(e)
            if isinstance(w, (PutTask, PutCheckpoint)):
                what = f"{'checkpoint of ' if isinstance(w, PutCheckpoint) else ''}task {w.task.id}"
            else:
                what = f"{type(w).__name__} of job {w.job.id}"
            log.error("etcd refused the write of %s for good; it is left out: %s", what, reason)

    async def run(self) -> None:
        while True:
            if self.held:
                try:
                    await asyncio.wait_for(self._wake.wait(), HELD_RETRY)
                except asyncio.TimeoutError:
                    pass
            else:
                await self._wake.wait()
            async with self.lock:
                self._wake.clear()
                synced, self._synced = self._synced, []
                decisions = self.held + self.core.drain() if self.held else self.core.drain()
                self.held = []
                if decisions:
                    done = await self._commit(decisions)
                    if done is None:
                        return
                    if not done:
                        self.held = held(decisions)
                        error = OutOfSpace("the change is held by the leader until etcd has room again")
                        for f in synced:
                            if not f.done():
                                f.set_exception(error)
                        continue
                self.route(decisions)
                _resolve(synced)
            # Routing one commit and building the next are each a long step under load: let the
            # callers waiting in between (status, list-jobs, reports) have their turn.
            await asyncio.sleep(0)

    async def _commit(self, decisions: list[Decision]) -> bool | None:
        """Commit until etcd takes it: True once it did, False when etcd is out of space (the deletes
        made, the rest to be held), None once a fenced write says we no longer lead."""
        puts = writes(decisions)
        deletes_only = all(isinstance(d, DeleteJob) for d in puts)
        delay = RETRY_FIRST
        one_by_one = False
        while True:
            try:
                if not deletes_only and time.monotonic() < self._full_until and self.alarm():
                    await self.store.delete_jobs([d.job.id for d in puts if isinstance(d, DeleteJob)])
                    return False
                if one_by_one:
                    await self._isolate(puts)
                else:
                    await self.store.commit(puts)
                if self._full_until and not deletes_only:
                    log.warning("etcd takes writes again: the held writes are committed")
                    self._full_until = 0.0
                return True
            except NoSpace:
                if not self._full_until:
                    log.warning(
                        "etcd is out of space: holding %d writes (and what depends on them) until it has "
                        "room again; expired jobs are still deleted",
                        len(puts),
                    )
                self._full_until = time.monotonic() + HELD_RETRY
                return False
            except Refused as e:
                # Sending the same batch again would be refused forever, with every later write
                # waiting behind it: find the write etcd will not take, and take it out.
                log.error(
                    "etcd refused a commit of %d writes for good (%s): committing them one by one",
                    len(puts),
                    e,
                )
                one_by_one = True
            except Fenced:
                log.warning("a fenced write was rejected: stepping down")
                self.give_up()
                return None
            except EtcdError as e:
                log.warning("cannot commit %d writes yet: %s", len(puts), e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)

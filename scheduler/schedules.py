"""Schedules: job files with ``schedule = "..."``, which the leader submits at each fire time.

A fire makes one job whose id is the schedule's id and the fire time (``nightly.20261202T030000Z``),
and the job is written in the same fenced transaction as the schedule's record saying that fire
is done. A new leader reads the record and runs what is owed after it: a failover at a fire time
neither skips the fire nor runs it twice. ``Schedules`` is the plain state (due fires, overlap,
pause); ``ScheduleRunner`` is the thin asyncio adapter that commits and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from rota.common.cron import fire_stamp, iso
from rota.common.jobspec import JobSpec
from rota.metastore.client import EtcdError
from rota.metastore.election import Fenced
from rota.scheduler.pipeline import NotReady

log = logging.getLogger("rota.leader")

#: Schedules a cluster holds at most: each costs the leader a wake-up per fire.
MAX_SCHEDULES = 1000
#: The leader looks at its schedules at least this often (seconds), and at every fire time.
CHECK_EVERY = 1.0
#: Bytes of a schedule's job file as JSON at most (a schedule is one etcd record).
MAX_SCHEDULE_BYTES = 256 * 1024


@dataclass
class Schedule:
    id: str
    spec: JobSpec
    created: float
    owner: str = ""
    paused: bool = False
    #: The latest fire time handled (its job made, or skipped); None before the first.
    last: float | None = None
    last_job: str | None = None
    fired: int = 0
    skipped: int = 0
    #: Fires left out after an outage, beyond catch-up.
    missed: int = 0
    #: When the latest fire's job was committed, seconds after its fire time.
    last_delay: float | None = None
    #: In memory: the next fire time, from ``last`` (or ``created``).
    next: float = field(default=0.0, compare=False)

    @property
    def cron(self) -> Any:
        assert self.spec.cron is not None
        return self.spec.cron

    def since(self) -> float:
        return self.last if self.last is not None else self.created

    def plan(self) -> None:
        self.next = self.cron.next_after(self.since())

    def job_id(self, t: float) -> str:
        return f"{self.id}.{fire_stamp(t)}"

    def job_spec(self, t: float) -> JobSpec:
        """What one fire submits: the job file without its schedule, named for the fire."""
        return replace(self.spec, id=self.job_id(t), cron=None)

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": self.id, "spec": self.spec.to_dict(), "created": self.created, "paused": self.paused,
            "last": self.last, "last_job": self.last_job, "fired": self.fired, "skipped": self.skipped,
            "missed": self.missed, "last_delay": self.last_delay,
        }  # fmt: skip
        if self.owner:
            rec["owner"] = self.owner
        return rec

    @staticmethod
    def from_record(rec: dict[str, Any]) -> Schedule:
        s = Schedule(
            str(rec["id"]), JobSpec.from_stored(rec["spec"]), float(rec["created"]), str(rec.get("owner", "")),
            bool(rec.get("paused", False)), rec.get("last"), rec.get("last_job"), int(rec.get("fired", 0)),
            int(rec.get("skipped", 0)), int(rec.get("missed", 0)), rec.get("last_delay"),
        )  # fmt: skip
        s.plan()
        return s

    def doc(self) -> dict[str, Any]:
        """What list-schedules shows."""
        cron = self.cron
        return {
            "id": self.id, "name": self.spec.name, "schedule": cron.expr, "time_zone": cron.time_zone,
            "overlap": cron.overlap, "catch_up": cron.catch_up, "paused": self.paused,
            "next_fire": None if self.paused else iso(self.next), "last_fire": iso(self.last),
            "last_job": self.last_job, "fired": self.fired, "skipped": self.skipped, "missed": self.missed,
            "last_delay": None if self.last_delay is None else round(self.last_delay, 3),
            "created": iso(self.created), **({"owner": self.owner} if self.owner else {}),
        }  # fmt: skip


@dataclass
class Fire:
    """One fire time of a schedule, and what to do about it."""

    schedule: Schedule
    time: float
    #: "run" (submit its job), "skip" (overlap = skip and the last job still runs).
    action: str
    #: overlap = cancel-old: the job to cancel first.
    cancel: str | None = None
    #: Fires before this one left out (beyond catch-up).
    missed: int = 0


class Schedules:
    """The schedules a leader holds: which fires are due, decided from the clock and whether each
    schedule's last job still runs. No I/O."""

    def __init__(self) -> None:
        self.by_id: dict[str, Schedule] = {}

    def add(self, s: Schedule) -> None:
        s.plan()
        self.by_id[s.id] = s

    def next_wake(self) -> float | None:
        times = [s.next for s in self.by_id.values() if not s.paused]
        return min(times) if times else None

    def due(self, now: float, running: Callable[[str], bool]) -> list[Fire]:
        """The fires due by ``now``, oldest first per schedule. ``running(job_id)``: whether that
        job has not ended (for ``overlap``)."""
        fires: list[Fire] = []
        for s in self.by_id.values():
            if s.paused or s.next > now:
                continue
            times, missed = s.cron.owed(s.since(), now)
            busy = s.last_job is not None and running(s.last_job)
            for n, t in enumerate(times):
                fire = Fire(s, t, "run", missed=missed if n == 0 else 0)
                if busy and s.cron.overlap == "skip":
                    fire.action = "skip"
                elif busy and s.cron.overlap == "cancel-old" and n == 0:
                    fire.cancel = s.last_job
                fires.append(fire)
                if fire.action == "run":
                    busy = True  # the next owed fire overlaps this one's job
        return fires

    @staticmethod
    def after_fire(fire: Fire, committed_at: float) -> None:
        """Apply a fire to its schedule (call once it is committed)."""
        s = fire.schedule
        s.last = fire.time
        s.missed += fire.missed
        if fire.action == "run":
            s.fired += 1
            s.last_job = s.job_id(fire.time)
            s.last_delay = committed_at - fire.time
        else:
            s.skipped += 1
        s.plan()

    @staticmethod
    def resumed(s: Schedule, now: float) -> None:
        """Unpaused: fires during the pause are not owed; the next is the first after now."""
        s.paused = False
        s.last = max(s.last or 0.0, now)
        s.plan()


class ScheduleRunner:
    """The leader's adapter: creates, pauses, resumes and deletes schedules (fenced writes), and
    fires them on time through the job API."""

    def __init__(self, store: Any, jobs: Any, check: Callable[[], None], give_up: Callable[[], None]) -> None:
        self.store = store
        self.jobs = jobs
        self.check = check
        self.give_up = give_up
        self.state = Schedules()
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    def load(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            try:
                self.state.add(Schedule.from_record(rec))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                log.error("schedule %s cannot be read from etcd and is skipped: %r", rec.get("id"), e)

    def get(self, schedule_id: str) -> Schedule | None:
        self.check()
        return self.state.by_id.get(schedule_id)

    def list(self) -> list[Schedule]:
        self.check()
        return sorted(self.state.by_id.values(), key=lambda s: (s.created, s.id))

    async def create(self, schedule_id: str, spec: JobSpec, owner: str) -> tuple[Schedule, bool]:
        """A schedule, committed; created is False when one with this id exists (it is kept as it is)."""
        self.check()
        async with self._lock:
            known = self.state.by_id.get(schedule_id)
            if known is not None:
                return known, False
            if len(self.state.by_id) >= MAX_SCHEDULES:
                raise ValueError(
                    f"the cluster holds {MAX_SCHEDULES} schedules already (MAX_SCHEDULES): delete one first"
                )
            s = Schedule(schedule_id, spec, time.time(), owner)
            s.plan()
            await self._write(s, create=True)
            self.state.add(s)
        self._changed.set()
        return s, True

    async def set_paused(self, s: Schedule, paused: bool) -> Schedule:
        async with self._lock:
            self.check()
            if s.paused == paused or self.state.by_id.get(s.id) is not s:
                return s
            new = replace(s)
            if paused:
                new.paused = True
            else:
                Schedules.resumed(new, time.time())
            await self._write(new)
            self.state.by_id[s.id] = new
        self._changed.set()
        return new

    async def delete(self, s: Schedule) -> None:
        async with self._lock:
            self.check()
            if self.state.by_id.get(s.id) is not s:
                return
            await self._guard(self.store.delete_schedule(s.id))
            del self.state.by_id[s.id]

    async def _write(self, s: Schedule, create: bool = False) -> None:
        if not await self._guard(self.store.put_schedule(s.id, s.record(), create=create)):
            self.give_up()
            raise NotReady(f"schedule {s.id!r} appeared in etcd under another leader")

    async def _guard(self, write: Any) -> Any:
        try:
            return await write
        except (Fenced, EtcdError) as e:
            self.give_up()
            raise NotReady(f"leadership in doubt while writing a schedule: {e}") from None

    async def run(self) -> None:
        """Fire what is due, then sleep until the next fire time (CHECK_EVERY at most)."""
        while True:
            wake = self.state.next_wake()
            delay = CHECK_EVERY if wake is None else min(CHECK_EVERY, max(0.0, wake - time.time()))
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)
            try:
                await self.fire_due()
            except NotReady as e:
                log.warning("schedules not fired: %s", e)
                await asyncio.sleep(CHECK_EVERY)

    async def fire_due(self) -> None:
        async with self._lock:
            self.check()
            for fire in self.state.due(time.time(), self.jobs.running):
                await self._fire(fire)

    async def _fire(self, fire: Fire) -> None:
        base = self.state.by_id.get(fire.schedule.id)
        if base is None:
            return  # deleted meanwhile
        if fire.cancel is not None:
            await self.jobs.cancel_job(fire.cancel)
        after = replace(base)
        Schedules.after_fire(replace(fire, schedule=after), time.time())
        if fire.action == "run":
            job_id = base.job_id(fire.time)
            _, created = await self.jobs.submit(
                job_id,
                base.job_spec(fire.time),
                base.owner,
                also=[self.store.schedule_put(base.id, after.record())],
            )
            if not created:  # made before (by hand, or a fire whose record was lost): not again
                await self._write(after)
            after.last_delay = time.time() - fire.time
            log.info("schedule %s fired: job %s, %.3fs after its time", base.id, job_id, after.last_delay)
        else:
            await self._write(after)
            log.info(
                "schedule %s skipped its fire at %s: job %s still runs (overlap = skip)",
                base.id, iso(fire.time), base.last_job,
            )  # fmt: skip
        self.state.by_id[base.id] = after

"""Keeping Python's cyclic garbage collector off the objects of big jobs.

A job of 200,000 tasks is about a quarter of a million objects the collector tracks. Every full
collection walks them all: while one such job ran, the leader paused ten times for 60-190 ms each,
collecting nothing, and every call to the masters waited behind the pauses (issue 11). Those
objects live as long as the job, so they are moved out of the collector's sight (``gc.freeze``).

They are built with the collector off (``build``): building frees nothing, and two full
collections over a half-built 200,000-task job held the leader 70-85 ms each. They are given back
(``gc.unfreeze``) once no big job holds its tasks any more (``settle``): an ended job keeps them
while it is among the most recent (a client reads its pages then), and giving back a quarter of a
million live objects at its end cost the leader a 94 ms walk just as that client read it. An
ended job held as a summary drops its tasks, which reference counting frees even while frozen (a
big job's a step a tick: ``Core._let_go``). What stays frozen meanwhile is what was alive when
the job came, cycles that became garbage since included; so once no big job has run for
``HELD_AFTER_END``, the big ended jobs are held as summaries (``let_go``), and everything is
given back once their tasks are gone, or ``LET_GO_GRACE`` later whatever holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator

from rota.scheduler.core import Job

log = logging.getLogger("rota.leader")

#: Seconds after the last big job ended (none running) when the big ended jobs are held as
#: summaries: long enough for its client to read it, short enough that garbage frozen with it does
#: not pile up.
HELD_AFTER_END = 120.0
#: Seconds after asking the core to let go of the big ended jobs when frozen objects are given back
#: even if one still holds its tasks (its end not committed yet, or it is not in the core).
LET_GO_GRACE = 30.0

_off = 0
_was_on = False


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """The cyclic collector off while objects are made and none freed (a leader's rebuild, a big
    job's build). Uses that overlap keep it off until the last ends; then it is as it was."""
    global _off, _was_on
    if not _off:
        _was_on = gc.isenabled()
        gc.disable()
    _off += 1
    try:
        yield
    finally:
        _off -= 1
        if not _off and _was_on:
            gc.enable()


class Collector:
    def __init__(
        self,
        big_job: int,
        clock: Callable[[], float] = time.monotonic,
        let_go: Callable[[Job], object] = lambda job: None,
    ) -> None:
        #: Tasks above which a job is big.
        self.big_job = big_job
        self.clock = clock
        #: Asks the core to hold an ended job as its summary (Core.summarize).
        self.let_go = let_go
        self._let_go_asked = False
        #: The big jobs whose objects are frozen, until they no longer hold their tasks.
        self.big: dict[str, Job] = {}
        #: Since when every big job here has ended (None while one runs).
        self._ended_since: float | None = None

    async def build(self, make: Callable[[], Job]) -> Job:
        """A big job built by ``make`` in a thread beside the event loop, the collector off meanwhile,
        and frozen once built. A job that then never reaches the core goes through ``dropped``."""
        with collector_off():
            job = await asyncio.to_thread(make)
            self.big[job.id] = job
            gc.freeze()
            return job

    def started(self, job: Job) -> None:
        """A job is in the core (submitted, or rebuilt by a new leader): if it is big and still
        running, its objects are not walked from now on."""
        if job.state is None and len(job.tasks) > self.big_job:
            self.big[job.id] = job
            gc.freeze()

    def dropped(self, job: Job) -> None:
        """A job built here that the core does not hold (its submission failed): its tasks go now,
        and what was frozen for it comes back if nothing else keeps it."""
        job.release()
        self.settle()

    def settle(self) -> None:
        """Give the frozen objects back once no big job holds its tasks (ended and held as a summary,
        expired, or dropped). Once none has run for HELD_AFTER_END, the big ended jobs are let go of,
        and LET_GO_GRACE later their objects are given back whatever holds them. Cheap: run at
        every tick of the leader."""
        if not self.big:
            return
        for job_id in [j for j, job in self.big.items() if not job.tasks]:
            del self.big[job_id]
        if any(job.state is None for job in self.big.values()):
            self._ended_since = None
            self._let_go_asked = False
            return
        if self.big:
            now = self.clock()
            if self._ended_since is None:
                self._ended_since = now
            if now - self._ended_since < HELD_AFTER_END:
                return
            if not self._let_go_asked:
                self._let_go_asked = True
                for job in list(self.big.values()):
                    self.let_go(job)
                return
            if now - self._ended_since < HELD_AFTER_END + LET_GO_GRACE:
                return
            self.big.clear()
        self._ended_since = None
        self._let_go_asked = False
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "no big job holds its tasks: %d objects go back to the collector", gc.get_freeze_count()
            )
        gc.unfreeze()

    def clear(self) -> None:
        """This leader stops: what it froze goes back to the collector."""
        self._ended_since = None
        self._let_go_asked = False
        if self.big:
            self.big.clear()
            gc.unfreeze()

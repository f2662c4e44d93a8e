"""Keeping Python's cyclic garbage collector off the objects of big running jobs.

A job of 200,000 tasks is about a million objects the collector tracks. Every full collection walks
them all: while one such job ran, the leader paused ten times for 60-190 ms each, collecting
nothing, and every call to the masters waited behind the pauses (issue 11). Those objects live as
long as the job, so they are moved out of the collector's sight (``gc.freeze``) when a big job
arrives, and given back (``gc.unfreeze``) once no big job is running. An ended job held as a
summary drops its tasks (``Job.release``), so reference counting frees them even while frozen.
"""

from __future__ import annotations

import gc
import logging

from rota.scheduler.core import Job

log = logging.getLogger("rota.leader")


class Collector:
    def __init__(self, big_job: int) -> None:
        #: Tasks above which a job is big.
        self.big_job = big_job
        #: Ids of the big jobs running.
        self.big: set[str] = set()

    def started(self, job: Job) -> None:
        """A job is in the core (submitted, or rebuilt by a new leader): if it is big and still
        running, its objects are not walked from now on."""
        if job.state is None and len(job.tasks) > self.big_job:
            self.big.add(job.id)
            gc.freeze()

    def ended(self, job_id: str) -> None:
        """A job ended or was withdrawn: the frozen objects are given back once no big job runs."""
        if job_id in self.big:
            self.big.discard(job_id)
            if not self.big:
                log.debug("no big job runs: %d objects go back to the collector", gc.get_freeze_count())
                gc.unfreeze()

    def clear(self) -> None:
        """This leader stops: what it froze goes back to the collector."""
        if self.big:
            self.big.clear()
            gc.unfreeze()

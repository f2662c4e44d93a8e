"""Barriers (``rota.task.barrier(name, parties)``): a task waits until ``parties`` tasks of its job
have reached the same named barrier. Pure state, owned by the scheduling core; no I/O.

Arrivals count by task index, not attempt: a task that arrived, was rescheduled and calls again is
counted once, and once the barrier is released its later calls pass at once. Who arrived and
whether the barrier is released is persisted (one record per barrier, ``keys.barrier``) so that a
new leader rebuilds it; the calls waiting (parked) are not, since executors send unanswered calls
again to the next leader, which parks them again.

A call with a ``round`` (``barrier(name, parties, round=N)``) makes the barrier cyclic: its rounds
are released in order and only the current round is kept (in memory and in the record, which gains
``"round"``), so an endless flow does not grow state. A call for a round below the current one, or
for the current one once released, passes at once; a call for a later round starts that round when
the current one is released (skipped rounds count as released) and otherwise waits parked until it
is, then counts for its own round. ``parties`` must agree within a round, not across rounds.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from rota.metastore import keys

#: A barrier's name: 1 to NAME_MAX characters of [A-Za-z0-9._-].
NAME_MAX = 64
#: Barriers one job may have.
MAX_PER_JOB = 64
#: The most parties a barrier may have: its record lists who arrived and is written at each new
#: arrival, so its cost grows with the square of the parties.
MAX_PARTIES = 1024
#: The longest a call waits on the leader before it is answered not ready (the SDK asks again):
#: below the executor's own 30 s wait for an answer.
WAIT_MAX = 20.0

#: The highest round a cyclic barrier call may name (an int64 on the wire).
ROUND_MAX = 2**62

_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{NAME_MAX}}}")


@dataclass(frozen=True, slots=True)
class Parked:
    """A call waiting for its barrier's release."""

    index: int
    attempt: int
    executor: str
    call_id: int
    due: float
    #: A cyclic barrier's round the call is for; None for a plain barrier.
    round: int | None = field(default=None, compare=False)
    #: What the call said, checked against its round once that round is current.
    parties: int = field(default=0, compare=False)
    #: Once answered ready: when its barrier (round) was released, 0 when no longer known.
    released_us: int = field(default=0, compare=False)


@dataclass(slots=True)
class Barrier:
    parties: int
    arrived: set[int] = field(default_factory=set)
    released: bool = False
    parked: list[Parked] = field(default_factory=list)
    #: A cyclic barrier's current round; None for a plain barrier.
    round: int | None = None
    #: When it (its current round) was released: microseconds since the epoch, the leader's clock.
    released_us: int = 0

    def record(self) -> bytes:
        """What etcd keeps of it."""
        body: dict[str, Any] = {
            "parties": self.parties,
            "arrived": sorted(self.arrived),
            "released": self.released,
        }
        if self.round is not None:
            body["round"] = self.round
        if self.released_us:
            body["at"] = self.released_us
        return json.dumps(body, separators=(",", ":")).encode()

    def doc(self, name: str) -> dict[str, Any]:
        """Its entry in get-job."""
        doc: dict[str, Any] = {
            "name": name,
            "parties": self.parties,
            "arrived": len(self.arrived),
            "released": self.released,
        }
        if self.round is not None:
            doc["round"] = self.round
        return doc


@dataclass(slots=True)
class Arrival:
    """What one call decided: an error, or the record to write (when it changed) and the calls to
    answer ready (the caller's own when the barrier is released; every parked one on release)."""

    error: str = ""
    write: tuple[bytes, bytes] | None = None
    ready: list[Parked] = field(default_factory=list)
    #: Calls parked for a later round that turned out wrong once their round came (other parties).
    refused: list[tuple[Parked, str]] = field(default_factory=list)
    #: Calls of later rounds taken off a released round, still to count (``arrive`` empties it).
    requeued: list[Parked] = field(default_factory=list)


def invalid(name: str, parties: int, tasks: int, round: int | None = None) -> str:
    """What is wrong with a barrier call of a job of ``tasks`` tasks ("" when nothing)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = name[:NAME_MAX] + "..." if isinstance(name, str) and len(name) > NAME_MAX else name
        return f"a barrier name is 1 to {NAME_MAX} characters of A-Z a-z 0-9 . _ -, got {shown!r}"
    top = min(tasks, MAX_PARTIES)
    if isinstance(parties, bool) or not isinstance(parties, int) or not 1 <= parties <= top:
        why = "the job's task count" if top == tasks else "MAX_PARTIES"
        return f"barrier {name!r}: parties must be from 1 to {top} ({why}), got {parties!r}"
    if round is not None and (
        isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= ROUND_MAX
    ):
        return f"barrier {name!r}: round must be a whole number from 0 to {ROUND_MAX}, got {round!r}"
    return ""


class Barriers:
    """Every barrier of every running job, and the calls waiting on them."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Barrier]] = {}
        #: Calls parked in all, and the earliest time one of them is due (a bound, not exact).
        self.waiting = 0
        self._next_due = math.inf

    def refusal(self, job_id: str, tasks: int, name: str, parties: int, round: int | None = None) -> str:
        """What ``arrive`` would refuse this call for at once ("" when nothing), changing nothing:
        an arrival that carries a checkpoint saves it only when this is empty."""
        error = invalid(name, parties, tasks, round)
        if error:
            return error
        barriers = self.jobs.get(job_id, {})
        barrier = barriers.get(name)
        if barrier is None:
            if len(barriers) >= MAX_PER_JOB:
                return f"a job has at most {MAX_PER_JOB} barriers: {name!r} would be one more"
            return ""
        if (barrier.round is None) != (round is None):
            if barrier.round is None:
                return f"barrier {name!r} is not cyclic (its first call gave no round); this call gives one"
            return f"barrier {name!r} is cyclic (its first call gave a round); this call gives none"
        if round is None or (round == barrier.round and not barrier.released):
            if barrier.parties != parties:
                return (
                    f"barrier {name!r} has {barrier.parties} parties (set by its first arrival"
                    f"{'' if barrier.round is None else f' in round {barrier.round}'}); this call says {parties}"
                )
        return ""

    def arrive(
        self,
        job_id: str,
        tasks: int,
        call: Parked,
        name: str,
        parties: int,
        round: int | None = None,
        now_us: int = 0,
    ) -> Arrival:
        """Task ``call.index`` (its current attempt, checked by the caller) reaches barrier ``name``
        (its round ``round`` when cyclic); ``now_us`` (wall clock) stamps a release."""
        error = self.refusal(job_id, tasks, name, parties, round)
        if error:
            return Arrival(error)
        barriers = self.jobs.setdefault(job_id, {})
        barrier = barriers.get(name)
        if barrier is None:
            barrier = barriers[name] = Barrier(parties, round=round)
        call = Parked(call.index, call.attempt, call.executor, call.call_id, call.due, round, parties)
        out = Arrival()
        out.error = self._arrive(job_id, name, barrier, call, out, now_us)
        while out.requeued:  # calls of later rounds, their turn now: in order of round
            out.requeued.sort(key=lambda p: p.round or 0)
            later = out.requeued.pop(0)
            error = self._arrive(job_id, name, barrier, later, out, now_us)
            if error:
                out.refused.append((later, error))
        return out

    def _arrive(
        self, job_id: str, name: str, barrier: Barrier, call: Parked, out: Arrival, now_us: int
    ) -> str:
        """Count ``call`` into ``out``; what is wrong with it (its parties) when it cannot count, with
        nothing changed. On a release, the calls parked for later rounds go to ``out.requeued``."""
        if call.round is not None and barrier.round is not None:
            if call.round < barrier.round or (call.round == barrier.round and barrier.released):
                out.ready.append(
                    replace(call, released_us=barrier.released_us if call.round == barrier.round else 0)
                )
                return ""
            if call.round > barrier.round:
                if not barrier.released:
                    self._park(barrier, call)
                    return ""
                barrier.round, barrier.parties, barrier.arrived = call.round, call.parties, set()
                barrier.released, barrier.released_us = False, 0
                out.write = (keys.barrier(job_id, name), barrier.record())
        if barrier.parties != call.parties:
            return (
                f"barrier {name!r} has {barrier.parties} parties (set by its first arrival"
                f"{'' if barrier.round is None else f' in round {barrier.round}'}); this call says {call.parties}"
            )
        if barrier.released:
            out.ready.append(replace(call, released_us=barrier.released_us))
            return ""
        if call.index not in barrier.arrived:
            barrier.arrived.add(call.index)
            if len(barrier.arrived) >= barrier.parties:
                barrier.released, barrier.released_us = True, now_us
            out.write = (keys.barrier(job_id, name), barrier.record())
        if not barrier.released:
            self._park(barrier, call)
            return ""
        self.waiting -= len(barrier.parked)
        stamp = barrier.released_us
        out.ready.extend(replace(p, released_us=stamp) for p in barrier.parked if p.round == barrier.round)
        out.ready.append(replace(call, released_us=stamp))
        out.requeued.extend(p for p in barrier.parked if p.round != barrier.round)
        barrier.parked = []
        return ""

    def _park(self, barrier: Barrier, call: Parked) -> None:
        barrier.parked.append(call)
        self.waiting += 1
        self._next_due = min(self._next_due, call.due)

    def attempt_ended(self, job_id: str, index: int, attempt: int) -> list[Parked]:
        """The calls an attempt that ended had waiting: no longer waited on (the caller answers them)."""
        gone: list[Parked] = []
        for barrier in self.jobs.get(job_id, {}).values():
            if barrier.parked:
                kept: list[Parked] = []
                for p in barrier.parked:
                    (gone if p.index == index and p.attempt <= attempt else kept).append(p)
                barrier.parked = kept
        self.waiting -= len(gone)
        return gone

    def expire(self, now: float) -> list[tuple[Parked, str]]:
        """The calls that waited WAIT_MAX, no longer parked: each with how far its barrier is
        ("arrived/parties"), which its not-ready answer carries."""
        if self._next_due > now:
            return []
        due: list[tuple[Parked, str]] = []
        next_due = math.inf
        for barriers in self.jobs.values():
            for barrier in barriers.values():
                if barrier.parked:
                    kept: list[Parked] = []
                    for p in barrier.parked:
                        if p.due <= now:
                            due.append((p, f"{len(barrier.arrived)}/{barrier.parties}"))
                        else:
                            kept.append(p)
                            next_due = min(next_due, p.due)
                    barrier.parked = kept
        self.waiting -= len(due)
        self._next_due = next_due
        return due

    def forget(self, job_id: str) -> list[Parked]:
        """A job ended: its barriers go, and any call still parked on them is returned."""
        barriers = self.jobs.pop(job_id, None) or {}
        left = [p for b in barriers.values() for p in b.parked]
        self.waiting -= len(left)
        return left

    def restore(self, job_id: str, name: str, record: dict[str, Any], tasks: int) -> None:
        """A barrier read back from etcd by a new leader; ValueError when the record is not one."""
        parties, round = record.get("parties"), record.get("round")
        error = invalid(name, parties, tasks, round) if isinstance(parties, int) else "no parties"
        arrived = record.get("arrived")
        released = record.get("released")
        if error or not isinstance(arrived, list) or not isinstance(released, bool):
            raise ValueError(f"barrier {name!r} of job {job_id}: not a barrier record ({error or 'fields'})")
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < tasks for i in arrived):
            raise ValueError(f"barrier {name!r} of job {job_id}: an arrival is not a task of the job")
        barriers = self.jobs.setdefault(job_id, {})
        if name not in barriers and len(barriers) >= MAX_PER_JOB:
            raise ValueError(f"job {job_id} has more than {MAX_PER_JOB} barriers")
        assert isinstance(parties, int)
        at = record.get("at", 0)
        if isinstance(at, bool) or not isinstance(at, int) or at < 0:
            raise ValueError(f"barrier {name!r} of job {job_id}: 'at' is not a time")
        released = released or len(set(arrived)) >= parties
        barriers[name] = Barrier(
            parties, set(arrived), released, round=round, released_us=at if released else 0
        )

    def docs(self, job_id: str) -> list[dict[str, Any]]:
        """A job's barriers as get-job shows them, by name."""
        return [b.doc(name) for name, b in sorted(self.jobs.get(job_id, {}).items())]

"""Gang placement: the tasks of a gang are placed all at once, on free slots, or not at all.

Pure bookkeeping for the core: which tasks form which gang (``build``), and whether the executors'
free slots can take every member (``plan``), with the placement if they can and a sentence saying
what is missing if they cannot. Once a gang is placed it is done with: a member that fails or is
lost is placed again alone, like any task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from rota.common.jobspec import JobSpec
from rota.scheduler.placement import ExecutorSlot


class Gang:
    """One gang of a job: its name, its members (tasks) and what it needs per kind."""

    __slots__ = ("name", "members", "needs", "placed", "reason")

    def __init__(self, name: str, members: list[Any], needs: Counter[str]) -> None:
        self.name = name
        self.members = members
        self.needs = needs
        #: Placed once (or rebuilt with a member placed before): its members are ordinary tasks now.
        self.placed = False
        #: Why it is still pending ("" once placed, or before it was first tried).
        self.reason = ""


def build(spec: JobSpec, tasks: Sequence[Any]) -> list[Gang | None] | None:
    """Per template of ``spec``, the gang its tasks belong to; None for a job without gangs."""
    if not spec.gang and all(t.gang is None for t in spec.tasks):
        return None
    by_name: dict[str, Gang] = {}
    out: list[Gang | None] = []
    start = 0
    for tmpl in spec.tasks:
        end = start + tmpl.copies()
        name = spec.name if spec.gang else tmpl.gang
        if name is None:
            out.append(None)
        else:
            gang = by_name.get(name)
            if gang is None:
                gang = by_name[name] = Gang(name, [], Counter())
            gang.members.extend(tasks[start:end])
            gang.needs[tmpl.kind] += end - start
            out.append(gang)
        start = end
    return out


def settle(gangs: list[Gang | None]) -> None:
    """A job rebuilt from etcd: a gang one of whose members was placed before is placed."""
    for gang in gangs:
        if gang is not None:
            gang.placed = any(t.attempt for t in gang.members)


def pending_reason(gangs: list[Gang | None] | None) -> str:
    """The reason of the first gang of a job still waiting for room ("" when none is)."""
    for gang in gangs or ():
        if gang is not None and not gang.placed and gang.reason:
            return gang.reason
    return ""


def _load(running: int, slots: int, ex_id: str) -> tuple[float, int, str]:
    """``ExecutorSlot.load`` for an executor holding ``running`` tasks."""
    return (running / slots if slots else 1.0, running, ex_id)


def plan(
    gang: Gang, pending: Sequence[Any], executors: Iterable[ExecutorSlot]
) -> tuple[list[tuple[Any, ExecutorSlot]], str]:
    """Where each of ``pending`` (the gang's members to place) goes, on free slots only, each to the
    least-loaded executor of its kind as ``choose_executor`` would pick it; or ([], why not).

    The kinds with the least room to spare are placed first, so that a member of a scarce kind is
    not crowded out by one that could have gone elsewhere (a greedy choice, not an exhaustive one)."""
    executors = list(executors)
    why = shortfall(gang, pending, executors)
    if why:
        return [], why
    free = [ex for ex in executors if ex.free_slots > 0]
    held = {ex.id: len(ex.running) for ex in free}
    room = {ex.id: ex.free_slots for ex in free}
    by_kind: dict[str, list[Any]] = {}
    for task in pending:
        by_kind.setdefault(task.spec.kind, []).append(task)
    kinds = sorted(
        by_kind, key=lambda k: (sum(room[ex.id] for ex in free if k in ex.kinds) - len(by_kind[k]), k)
    )
    placed: list[tuple[Any, ExecutorSlot]] = []
    for kind in kinds:
        for task in by_kind[kind]:
            best: ExecutorSlot | None = None
            for ex in free:
                if (
                    room[ex.id] > 0
                    and kind in ex.kinds
                    and (
                        best is None
                        or _load(held[ex.id], ex.slots, ex.id) < _load(held[best.id], best.slots, best.id)
                    )
                ):
                    best = ex
            if best is None:
                return [], _reason(gang, Counter(t.spec.kind for t in pending), kind, executors)
            room[best.id] -= 1
            held[best.id] += 1
            placed.append((task, best))
    return placed, ""


def shortfall(gang: Gang, pending: Sequence[Any], executors: Sequence[ExecutorSlot]) -> str:
    """Why the gang cannot fit, when some kind has fewer free slots in all than members ("" when
    each has enough, which ``plan`` then checks member by member). Cheap: kinds x executors."""
    needs = Counter(t.spec.kind for t in pending)
    for kind, n in needs.items():
        if room_for(kind, executors) < n:
            return _reason(gang, needs, kind, executors)
    return ""


def room_for(kind: str, executors: Iterable[ExecutorSlot]) -> int:
    """Free slots for ``kind`` in all. An executor running tasks on credit has fewer than none; it
    has no room, but it does not take room away from the others either."""
    return sum(max(0, ex.free_slots) for ex in executors if kind in ex.kinds)


def short_of_room(gang: Gang, executors: Sequence[ExecutorSlot]) -> str:
    """Why a gang none of whose members was placed cannot fit ("" when the free slots may do): from
    what the whole gang needs per kind, without looking at its members, so that a large gang that
    waits costs a placement round kinds x executors, not its size."""
    for kind, n in gang.needs.items():
        if room_for(kind, executors) < n:
            return _reason(gang, gang.needs, kind, executors)
    return ""


def _reason(gang: Gang, needs: Counter[str], short_kind: str, executors: Iterable[ExecutorSlot]) -> str:
    """What the gang needs (members to place, per kind) and what the cluster has for the kind it
    fell short of."""
    parts = [f"{n} free slots for kind {k!r}" for k, n in sorted(needs.items(), key=lambda kv: -kv[1])]
    first, rest = parts[0], [p.replace(" free slots", "") for p in parts[1:]]
    wanted = " and ".join([first, *rest])
    offering = [ex for ex in executors if ex.accepts_work and short_kind in ex.kinds]
    free = sum(max(0, ex.free_slots) for ex in offering)
    slots = sum(ex.slots for ex in offering)
    where = f"for kind {short_kind!r} " if len(needs) > 1 else ""
    return (
        f"gang {gang.name!r} of {needs.total()} tasks needs {wanted}; the cluster has {free} free {where}"
        f"on {len(offering)} executor{'s' if len(offering) != 1 else ''} ({slots} slot{'s' if slots != 1 else ''} in all)"
    )

"""The masters' upkeep of etcd: compaction, defragmentation and etcd's NOSPACE alarm.

etcd keeps every revision of every key until it is compacted. An embedded member compacts itself
each hour, an external cluster maybe never; with thousands of task writes a minute, that history
is most of the database. The leader compacts it here, keeping one period of history behind the
current revision for watchers to resume from (the executor watch lists again if it fell further
behind). Compaction frees space inside the database file; the file itself shrinks only when a
member is defragmented, and etcd's quota counts the file.

When a member's file reaches the quota, etcd raises its NOSPACE alarm and refuses every write but
deletes until the alarm is disarmed. Every master watches the alarms and the members' sizes
(``EtcdSpace``: logs, metrics, refusals); the leader acts: it compacts up to the present while
the alarm is raised, defragments one member at a time, and disarms once every member's file is
back under the quota with a margin. With the alarm raised no master can be elected (a campaign
needs a lease and a put), so while there is no leader every master does the same, and members may
then be defragmented by several masters at once. The leader also defragments on its own, one
member at a time and at most every ``DEFRAG_GAP``, a member whose file is mostly free pages.
``next_step`` decides, without I/O; ``space_loop`` carries it out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rota.metastore import keys
from rota.metastore.client import Alarm, EtcdClient, EtcdError, MemberStatus

log = logging.getLogger("rota.leader")

#: Seconds between compactions, and the history kept behind the current revision.
COMPACT_EVERY = 60.0
#: How often a master looks at etcd's alarms and members' sizes; while NOSPACE is raised.
SPACE_CHECK = 5.0
NOSPACE_CHECK = 1.0
#: The NOSPACE alarm is disarmed once every member's file is at most this share of the quota.
DISARM_BELOW = 0.8
#: A disarm is not repeated sooner: an alarm that comes straight back (a quota set lower in etcd
#: than the masters believe) must not make every write flap.
DISARM_GAP = 10.0
#: Scheduled defragmentation: a member whose file is at least this share free pages...
DEFRAG_FREE = 0.5
#: ... and at least this share of the quota (never for a few kilobytes),
DEFRAG_MIN_FREE = 0.01
#: ... one member at a time, this long apart at least.
DEFRAG_GAP = 600.0
#: The longest a defragmentation may take (a member of gigabytes takes a while).
DEFRAG_TIMEOUT = 600.0
#: etcd's default backend quota, which an external cluster has unless it was started otherwise.
DEFAULT_EXTERNAL_QUOTA = 2 * 1024**3

NOSPACE = "NOSPACE"


async def compact_loop(client: EtcdClient, every: float = COMPACT_EVERY) -> None:
    """Each period, compact up to the revision the previous period started at."""
    behind = 0
    while True:
        await asyncio.sleep(every)
        try:
            _, revision = await client.read(keys.HEALTH)
            if behind:
                await client.compact(behind)
                log.debug("etcd compacted up to revision %d", behind)
            behind = revision
        except EtcdError as e:
            if "compacted" not in str(e):  # already compacted past it (etcd's own auto-compaction)
                log.warning("cannot compact etcd: %s", e)


# -- deciding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpacePolicy:
    quota: int
    disarm_below: float = DISARM_BELOW
    disarm_gap: float = DISARM_GAP
    defrag_free: float = DEFRAG_FREE
    defrag_min_free: float = DEFRAG_MIN_FREE
    defrag_gap: float = DEFRAG_GAP

    @property
    def disarm_limit(self) -> int:
        return int(self.quota * self.disarm_below)


@dataclass(frozen=True)
class Defragment:
    member: MemberStatus


@dataclass(frozen=True)
class Disarm:
    alarms: tuple[Alarm, ...]


Step = Defragment | Disarm | None


def next_step(
    policy: SpacePolicy,
    alarms: Sequence[Alarm],
    members: Sequence[MemberStatus],
    now: float,
    last_defrag: float,
    last_disarm: float,
    compacted: int = 0,
    defragged: Mapping[int, int] | None = None,
    scheduled: bool = True,
) -> Step:
    """The one thing to do now, if any.

    Under NOSPACE: disarm once every member that answers is below ``disarm_limit`` (and the last
    disarm is ``disarm_gap`` ago); until then defragment a member over it that has free pages worth
    it, or that was not defragmented since the latest compaction (``defragged``: member id to the
    revision compacted when it was; etcd counts the pages a compaction frees only at its next
    write, and none comes while it refuses them). Otherwise, and only when ``scheduled``: defragment
    the member with the most free pages if they are most of its file, ``defrag_gap`` after the last
    one. Members that do not answer are left out: one that comes back full raises the alarm again.
    """
    answered = [m for m in members if not m.error]
    if not answered:
        return None
    done = defragged or {}
    min_free = policy.defrag_min_free * policy.quota
    nospace = tuple(a for a in alarms if a.alarm == NOSPACE)
    if nospace:
        over = [m for m in answered if m.db_size > policy.disarm_limit]
        if not over:
            return Disarm(nospace) if now - last_disarm >= policy.disarm_gap else None
        candidates = [m for m in over if m.free >= min_free or done.get(m.id, -1) < compacted]
    else:
        if not scheduled or now - last_defrag < policy.defrag_gap:
            return None
        candidates = [m for m in answered if m.free >= min_free and m.free >= policy.defrag_free * m.db_size]
    if not candidates:
        return None
    return Defragment(max(candidates, key=lambda m: (m.free, m.db_size, m.name)))


# -- watching ------------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n >= 1024**2 else f"{n / 1024:.0f} KiB"


class EtcdSpace:
    """What this master last saw of etcd's space: its alarms and every member's database size."""

    def __init__(self, quota: int) -> None:
        self.quota = quota
        self.alarms: list[Alarm] = []
        self.members: list[MemberStatus] = []
        #: Members this master defragmented since it started.
        self.defrags = 0

    @property
    def nospace(self) -> bool:
        return any(a.alarm == NOSPACE for a in self.alarms)

    def member_name(self, member_id: int) -> str:
        return next((m.name for m in self.members if m.id == member_id), f"{member_id:x}")

    def observe(self, alarms: Sequence[Alarm], members: Sequence[MemberStatus] | None = None) -> None:
        """Take a new look; a raised or cleared alarm is logged once, here."""
        if members is not None:
            self.members = list(members)
        before = {a.alarm for a in self.alarms}
        self.alarms = list(alarms)
        now = {a.alarm for a in self.alarms}
        for kind in sorted(now - before):
            who = ", ".join(self.member_name(a.member_id) for a in self.alarms if a.alarm == kind)
            if kind == NOSPACE:
                log.error(
                    "etcd raised its NOSPACE alarm (member %s): it refuses every write but deletes, so no "
                    "job is submitted and no task dispatched until space is back; databases: %s; quota %s",
                    who,
                    self.sizes(),
                    mib(self.quota),
                )
            else:
                log.error("etcd raised its %s alarm (member %s)", kind, who)
        for kind in sorted(before - now):
            log.warning("etcd's %s alarm is cleared; databases: %s", kind, self.sizes())

    def sizes(self) -> str:
        return ", ".join(
            f"{m.name} {mib(m.db_size)} ({mib(m.db_size_in_use)} in use)" if not m.error else f"{m.name} ?"
            for m in self.members
        )


async def space_loop(
    client: EtcdClient,
    space: EtcdSpace,
    role: Callable[[], str | None],
    every: float = SPACE_CHECK,
    policy: SpacePolicy | None = None,
) -> None:
    """Watch etcd's space on every master; act when ``role()`` says so: "leader" (everything) or
    "rescue" (no leader can be elected: only what NOSPACE needs)."""
    policy = policy or SpacePolicy(space.quota)
    last_defrag = last_disarm = float("-inf")
    compacted = 0
    defragged: dict[int, int] = {}
    while True:
        try:
            alarms, members = await asyncio.gather(client.alarms(), client.member_statuses())
            space.observe(alarms, members)
            acting = role()
            if acting:
                if space.nospace:
                    compacted = await _compact_all(client, compacted)
                now = time.monotonic()
                step = next_step(
                    policy,
                    alarms,
                    members,
                    now,
                    last_defrag,
                    last_disarm,
                    compacted,
                    defragged,
                    scheduled=acting == "leader",
                )
                if isinstance(step, Defragment):
                    last_defrag = now
                    defragged[step.member.id] = compacted
                    await _defragment(client, space, step.member)
                elif isinstance(step, Disarm):
                    last_disarm = now
                    for alarm in step.alarms:
                        await client.disarm(alarm)
                    log.warning(
                        "disarmed etcd's NOSPACE alarm: every member's database is under %s (%d%% of the "
                        "quota)",
                        mib(policy.disarm_limit),
                        round(policy.disarm_below * 100),
                    )
                    space.observe(await client.alarms())
        except EtcdError as e:
            log.debug("etcd space check: %s", e)
        await asyncio.sleep(NOSPACE_CHECK if space.nospace else every)


async def _compact_all(client: EtcdClient, compacted: int) -> int:
    """Compact up to the present: with NOSPACE raised, history is worth less than the space it holds."""
    _, revision = await client.read(keys.HEALTH)
    if revision > compacted:
        try:
            await client.compact(revision, physical=True)
        except EtcdError as e:
            if "compacted" not in str(e):
                raise
    return revision


async def _defragment(client: EtcdClient, space: EtcdSpace, member: MemberStatus) -> None:
    started = time.monotonic()
    try:
        await client.defragment(member.endpoint, DEFRAG_TIMEOUT)
    except EtcdError as e:
        log.warning("cannot defragment etcd member %s: %s", member.name, e)
        return
    space.defrags += 1
    after = next((m for m in await client.member_statuses() if m.id == member.id), None)
    log.info(
        "defragmented etcd member %s in %.2fs: %s -> %s",
        member.name,
        time.monotonic() - started,
        mib(member.db_size),
        mib(after.db_size) if after and not after.error else "?",
    )
    if after is not None:
        space.observe(space.alarms, [after if m.id == after.id else m for m in space.members])

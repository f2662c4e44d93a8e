"""When the leader defragments etcd members and disarms the NOSPACE alarm (scheduler/upkeep.py)."""

from __future__ import annotations

import logging

import pytest

from rota.metastore.client import Alarm, MemberStatus
from rota.scheduler.upkeep import Defragment, Disarm, EtcdSpace, SpacePolicy, next_step

MiB = 1024**2
POLICY = SpacePolicy(quota=100 * MiB)  # disarm under 80 MiB; scheduled: half the file free, >= 1 MiB
NOSPACE = [Alarm(1, "NOSPACE")]


def member(i: int, size: float, in_use: float, error: str = "") -> MemberStatus:
    return MemberStatus(i, f"m{i}", f"http://127.0.0.1:{2379 + i}", int(size * MiB), int(in_use * MiB), error)


def step(alarms, members, now=1000.0, last_defrag=-1e9, last_disarm=-1e9, compacted=0, defragged=None, **kw):
    return next_step(POLICY, alarms, members, now, last_defrag, last_disarm, compacted, defragged or {}, **kw)


def test_under_nospace_the_fullest_freeable_member_is_defragmented_first_then_the_alarm_disarmed():
    members = [member(1, 101, 60), member(2, 101, 40), member(3, 70, 70)]
    assert step(NOSPACE, members) == Defragment(members[1])
    members[1] = member(2, 40, 40)
    assert step(NOSPACE, members) == Defragment(members[0])
    members[0] = member(1, 60, 60)
    assert step(NOSPACE, members) == Disarm(tuple(NOSPACE))


def test_a_disarm_is_not_repeated_within_its_gap():
    members = [member(1, 10, 10)]
    assert step(NOSPACE, members, now=1000, last_disarm=995) is None
    assert step(NOSPACE, members, now=1000, last_disarm=990) == Disarm(tuple(NOSPACE))


def test_under_nospace_a_member_is_defragmented_once_per_compaction_when_etcd_shows_no_free_pages():
    """etcd counts the pages a compaction frees only at its next write, which NOSPACE refuses."""
    full = member(1, 101, 101)
    assert step(NOSPACE, [full], compacted=7) == Defragment(full)
    assert step(NOSPACE, [full], compacted=7, defragged={1: 7}) is None
    assert step(NOSPACE, [full], compacted=9, defragged={1: 7}) == Defragment(full)


def test_members_that_do_not_answer_are_left_out():
    down = member(2, 0, 0, error="etcd Status: connection refused")
    assert step(NOSPACE, [member(1, 50, 50), down]) == Disarm(tuple(NOSPACE))
    assert step(NOSPACE, [down]) is None


@pytest.mark.parametrize(
    ("size", "in_use", "expected"),
    [(40, 10, True), (40, 30, False), (0.9, 0.1, False)],  # most of it free / little free / tiny file
)
def test_scheduled_defragmentation_takes_a_member_whose_file_is_mostly_free(size, in_use, expected):
    m = member(1, size, in_use)
    assert step([], [m]) == (Defragment(m) if expected else None)


def test_scheduled_defragmentation_waits_its_gap_and_is_the_leaders_alone():
    m = member(1, 40, 10)
    assert step([], [m], now=1000, last_defrag=1000 - POLICY.defrag_gap + 1) is None
    assert step([], [m], now=1000, last_defrag=1000 - POLICY.defrag_gap) == Defragment(m)
    assert step([], [m], scheduled=False) is None
    assert step(NOSPACE, [member(1, 101, 10)], scheduled=False) == Defragment(member(1, 101, 10))


def test_a_corrupt_alarm_is_never_disarmed():
    assert step([Alarm(1, "CORRUPT")], [member(1, 10, 10)]) is None


def test_the_space_watch_logs_an_alarm_once_when_raised_and_once_when_cleared(caplog):
    space = EtcdSpace(4 * MiB)
    members = [member(1, 4.2, 4.2), member(2, 0.5, 0.25)]
    with caplog.at_level(logging.INFO, logger="rota.leader"):
        space.observe([], members)
        space.observe(NOSPACE, members)
        space.observe(NOSPACE + [Alarm(2, "NOSPACE")], members)
        assert space.nospace
        space.observe([], members)
        space.observe([], members)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("etcd raised its NOSPACE alarm (member m1)")
    assert "m1 4.2 MiB (4.2 MiB in use), m2 512 KiB (256 KiB in use); quota 4.0 MiB" in messages[0]
    assert messages[1].startswith("etcd's NOSPACE alarm is cleared")
    assert not space.nospace

"""Barriers: the pure state (scheduler.barriers) and what the core decides with it. No I/O.

(tests/integration/test_barriers.py runs them on a real cluster.)"""

from __future__ import annotations

import json

from test_core import Harness, tmpl

from rota.common.states import RUNNING
from rota.metastore import keys
from rota.scheduler.barriers import MAX_PER_JOB, NAME_MAX, WAIT_MAX, Barriers, Parked, invalid
from rota.scheduler.core import MAX_CHECKPOINT, CallReply, Job, PutCheckpoint, PutRecord, TaskRef
from rota.scheduler.views import job_page_doc


def harness(wall: float = 0.0) -> Harness:
    """A harness whose wall clock stands still (0: releases carry no time, as in the records)."""
    h = Harness()
    h.core.wall = lambda: wall
    return h


def parked(index: int, attempt: int = 1, call_id: int = 0, due: float = 100.0) -> Parked:
    return Parked(index, attempt, "e1", call_id or index + 1, due)


def test_the_nth_party_releases_every_parked_call_and_each_arrival_is_written() -> None:
    b = Barriers()
    for i in range(2):
        a = b.arrive("j", 5, parked(i), "start", 3)
        assert not a.error and not a.ready
        assert a.write is not None and a.write[0] == keys.barrier("j", "start")
        assert json.loads(a.write[1]) == {"parties": 3, "arrived": list(range(i + 1)), "released": False}
    assert b.waiting == 2
    a = b.arrive("j", 5, parked(4), "start", 3)
    assert a.write is not None
    assert json.loads(a.write[1]) == {"parties": 3, "arrived": [0, 1, 4], "released": True}
    assert [p.index for p in a.ready] == [0, 1, 4]
    assert b.waiting == 0
    # Released: any later call passes at once, with nothing written.
    late = b.arrive("j", 5, parked(3), "start", 3)
    assert late.ready == [parked(3)] and late.write is None
    assert b.docs("j") == [{"name": "start", "parties": 3, "arrived": 3, "released": True}]


def test_a_task_counts_once_however_many_attempts_arrive() -> None:
    b = Barriers()
    assert b.arrive("j", 3, parked(0, attempt=1), "x", 2).write is not None
    assert b.attempt_ended("j", 0, 1) == [parked(0, attempt=1)]
    again = b.arrive("j", 3, parked(0, attempt=2), "x", 2)
    assert again.write is None and not again.ready  # counted already: parked, nothing new to write
    assert b.docs("j")[0]["arrived"] == 1
    done = b.arrive("j", 3, parked(1), "x", 2)
    assert [(p.index, p.attempt) for p in done.ready] == [(0, 2), (1, 1)]


def test_bad_names_parties_and_too_many_barriers_are_refused() -> None:
    assert invalid("a.b_c-9", 1, 1) == ""
    assert "1 to 64 characters" in invalid("", 1, 3)
    assert "1 to 64 characters" in invalid("a/b", 1, 3)
    assert "1 to 64 characters" in invalid("x" * (NAME_MAX + 1), 1, 3)
    assert "from 1 to 3" in invalid("a", 0, 3)
    assert "from 1 to 3" in invalid("a", 4, 3)
    assert "from 1 to 3" in invalid("a", True, 3)
    b = Barriers()
    for i in range(MAX_PER_JOB):
        assert not b.arrive("j", 2, parked(0), f"b{i}", 2).error
    assert "at most 64 barriers" in b.arrive("j", 2, parked(0), "one-more", 2).error
    assert not b.arrive("j", 2, parked(1), "b0", 2).error  # an existing one is fine
    assert "from 1 to 2" in b.arrive("k", 2, parked(0), "a", 3).error
    assert "k" not in b.jobs


def test_a_different_parties_count_is_refused_and_changes_nothing() -> None:
    b = Barriers()
    b.arrive("j", 5, parked(0), "x", 3)
    a = b.arrive("j", 5, parked(1), "x", 4)
    assert "has 3 parties" in a.error and "says 4" in a.error
    assert b.docs("j")[0]["arrived"] == 1 and b.waiting == 1


def test_parked_calls_expire_after_the_longest_wait() -> None:
    b = Barriers()
    b.arrive("j", 3, parked(0, due=10.0), "x", 3)
    b.arrive("j", 3, parked(1, due=15.0), "x", 3)
    assert b.expire(9.0) == []
    assert b.expire(12.0) == [(parked(0, due=10.0), "2/3")]
    assert b.expire(14.0) == []
    assert b.expire(15.0) == [(parked(1, due=15.0), "2/3")]
    assert b.waiting == 0
    assert b.docs("j")[0]["arrived"] == 2  # the arrivals stay


def test_restore_reads_records_back_and_refuses_what_is_not_one() -> None:
    b = Barriers()
    b.restore("j", "x", {"parties": 3, "arrived": [0, 2], "released": False}, 4)
    assert b.docs("j") == [{"name": "x", "parties": 3, "arrived": 2, "released": False}]
    a = b.arrive("j", 4, parked(2, attempt=5), "x", 3)
    assert a.write is None and not a.ready  # task 2 arrived before the failover
    assert len(b.arrive("j", 4, parked(3), "x", 3).ready) == 2
    for bad in (
        {"parties": 9, "arrived": [], "released": False},
        {"parties": 2, "arrived": [7], "released": False},
        {"parties": 2, "arrived": "0", "released": False},
        {"arrived": [], "released": False},
        {"parties": 2, "arrived": []},
    ):
        try:
            b.restore("j", "y", bad, 4)
        except ValueError:
            continue
        raise AssertionError(f"restored {bad}")


# -- in the core ----------------------------------------------------------------------


def running_job(h: Harness, n: int = 3, max_attempts: int = 3) -> Job:
    job = h.add_job("j", tmpl(count=n, max_attempts=max_attempts))
    h.attach("e1", slots=n)
    h.drain()
    for t in job.tasks:
        h.report("e1", t.ref(), RUNNING)
    h.drain()
    return job


def replies(out: list) -> list[CallReply]:
    return [d for d in out if isinstance(d, CallReply)]


def test_the_core_writes_each_arrival_and_answers_everyone_after_the_release() -> None:
    h = harness()
    job = running_job(h)
    h.core.barrier("e1", 1, job.tasks[0].ref(), "go", 2)
    out = h.drain()
    assert [type(d) for d in out] == [PutRecord]
    h.core.barrier("e1", 2, job.tasks[2].ref(), "go", 2)
    out = h.drain()
    assert isinstance(out[0], PutRecord) and json.loads(out[0].value or b"")["released"] is True
    assert replies(out) == [CallReply("e1", 1), CallReply("e1", 2)]  # after the write, in the same drain
    h.core.barrier("e1", 3, job.tasks[1].ref(), "go", 2)
    assert h.drain() == [CallReply("e1", 3)]
    assert job_page_doc(job, 0, 1, barriers=h.core.barriers.docs("j"))["barriers"] == [
        {"name": "go", "parties": 2, "arrived": 2, "released": True}
    ]


def test_a_rescheduled_task_rejoins_and_its_old_call_is_answered_with_an_error() -> None:
    h = harness()
    job = running_job(h, n=2)
    task = job.tasks[1]
    h.core.barrier("e1", 1, task.ref(), "go", 2)
    h.drain()
    old = task.ref()
    h.report("e1", old, "FAILED", {"error": "boom"})
    (gone,) = replies(h.drain())
    assert gone.call_id == 1 and "ended while it waited at a barrier" in gone.error
    # The old attempt may no longer call.
    h.core.barrier("e1", 2, old, "go", 2)
    (stale,) = h.drain()
    assert "not its current one" in stale.error
    h.now[0] += 10
    h.core.tick()
    h.drain()
    h.report("e1", task.ref(), RUNNING)
    h.drain()
    assert task.attempt == 2
    h.core.barrier("e1", 3, task.ref(), "go", 2)
    assert h.drain() == []  # counted already: parked, nothing written
    h.core.barrier("e1", 4, job.tasks[0].ref(), "go", 2)
    out = h.drain()
    assert replies(out) == [CallReply("e1", 3), CallReply("e1", 4)]


def test_a_parked_call_is_answered_not_ready_after_the_longest_wait() -> None:
    h = harness()
    job = running_job(h)
    h.core.barrier("e1", 1, job.tasks[0].ref(), "go", 3)
    h.drain()
    h.now[0] += WAIT_MAX - 1
    h.core.tick()
    assert replies(h.drain()) == []
    h.now[0] += 1
    h.core.tick()
    assert replies(h.drain()) == [CallReply("e1", 1, ready=False, addr="1/3")]
    # Asking again parks it again, counted once.
    h.core.barrier("e1", 2, job.tasks[0].ref(), "go", 3)
    assert h.drain() == []


def test_refusals_in_the_core() -> None:
    h = harness()
    job = running_job(h)
    ref = job.tasks[0].ref()
    for ex, r, name, parties, needle in (
        ("e2", ref, "go", 2, "does not run on this executor"),
        ("e1", TaskRef("j", 0, ref.attempt + 1), "go", 2, "not its current one"),
        ("e1", ref, "no/slash", 2, "1 to 64 characters"),
        ("e1", ref, "go", 4, "from 1 to 3"),
    ):
        h.core.barrier(ex, 9, r, name, parties)
        (reply,) = h.drain()
        assert isinstance(reply, CallReply) and needle in reply.error, reply


def test_a_checkpoint_carried_by_an_arrival_is_written_before_it_in_the_same_drain() -> None:
    h = harness()
    job = running_job(h)
    h.core.barrier("e1", 1, job.tasks[0].ref(), "go", 2, checkpoint=b"at v1")
    out = h.drain()
    assert [type(d) for d in out] == [PutCheckpoint, PutRecord]  # one commit, checkpoint first
    assert out[0].data == b"at v1" and out[0].task is job.tasks[0]
    assert replies(out) == []  # waits for the other party, as a plain arrival
    h.core.barrier("e1", 2, job.tasks[1].ref(), "go", 2, checkpoint=b"other")
    out = h.drain()
    assert [type(d) for d in out] == [PutCheckpoint, PutRecord, CallReply, CallReply]
    assert replies(out) == [CallReply("e1", 1), CallReply("e1", 2)]


def test_an_arrival_whose_checkpoint_is_over_budget_waits_for_it_and_a_refused_one_writes_nothing() -> None:
    h = harness()
    job = running_job(h)
    ref = job.tasks[0].ref()
    for i in range(4):  # the task's whole burst
        h.core.save_checkpoint("e1", 10 + i, ref, b"x" * MAX_CHECKPOINT)
    h.drain()
    h.core.barrier("e1", 1, ref, "go", 1, checkpoint=b"state")
    assert h.drain() == []  # neither written nor arrived: the checkpoint waits for its budget
    assert h.core.barriers.docs("j") == []
    h.now[0] += 1.0
    h.core.tick()
    out = h.drain()
    assert [type(d) for d in out] == [PutCheckpoint, PutRecord, CallReply]
    assert out[0].data == b"state" and replies(out) == [CallReply("e1", 1)]
    # Too big, or from an attempt that is not the current one: refused, nothing written or counted.
    h.core.barrier("e1", 2, job.tasks[1].ref(), "other", 2, checkpoint=b"x" * (MAX_CHECKPOINT + 1))
    (big,) = h.drain()
    assert isinstance(big, CallReply) and "64 KiB at most" in big.error
    h.core.barrier("e1", 3, TaskRef("j", 1, 9), "other", 2, checkpoint=b"y")
    (stale,) = h.drain()
    assert isinstance(stale, CallReply) and "not its current one" in stale.error
    h.core.barrier("e1", 4, job.tasks[1].ref(), "go", 2, checkpoint=b"z")  # "go" has 1 party
    (parties,) = h.drain()
    assert isinstance(parties, CallReply) and "has 1 parties" in parties.error
    assert [d["name"] for d in h.core.barriers.docs("j")] == ["go"]


def test_an_arrival_held_with_its_checkpoint_is_refused_when_the_attempt_ends() -> None:
    h = harness()
    job = running_job(h)
    ref = job.tasks[0].ref()
    for i in range(4):
        h.core.save_checkpoint("e1", 10 + i, ref, b"x" * MAX_CHECKPOINT)
    h.drain()
    h.core.barrier("e1", 1, ref, "go", 2, checkpoint=b"state")
    h.report("e1", ref, "FAILED", {"error": "boom"})
    h.drain()
    h.now[0] += 5
    h.core.tick()
    out = h.drain()
    assert not [d for d in out if isinstance(d, (PutCheckpoint, PutRecord))]
    (reply,) = [r for r in replies(out) if r.call_id == 1]
    assert "ended first" in reply.error


def test_a_new_leader_rebuilds_barriers_and_parks_resent_calls_again() -> None:
    h = harness()
    job = running_job(h)
    h.core.barrier("e1", 1, job.tasks[0].ref(), "go", 3)
    h.core.barrier("e1", 2, job.tasks[1].ref(), "go", 3)
    (record,) = [d for d in h.drain() if isinstance(d, PutRecord)][-1:]
    # The new leader: the same job and task records, and the barrier's record.
    h2 = Harness()
    job2 = running_job(h2)
    h2.core.restore_barrier("j", "go", json.loads(record.value or b""))
    h2.core.barrier("e1", 11, job2.tasks[0].ref(), "go", 3)
    h2.core.barrier("e1", 12, job2.tasks[1].ref(), "go", 3)
    assert h2.drain() == []  # re-sent calls: parked, counted once
    h2.core.barrier("e1", 13, job2.tasks[2].ref(), "go", 3)
    assert [r.call_id for r in replies(h2.drain())] == [11, 12, 13]
    # A released barrier passes at once after a rebuild too.
    h3 = Harness()
    job3 = running_job(h3)
    h3.core.restore_barrier("j", "go", {"parties": 3, "arrived": [0, 1, 2], "released": True})
    h3.core.barrier("e1", 21, job3.tasks[1].ref(), "go", 3)
    assert h3.drain() == [CallReply("e1", 21)]


def test_a_job_that_ends_drops_its_barriers() -> None:
    h = harness()
    job = running_job(h, n=2, max_attempts=1)
    h.core.barrier("e1", 1, job.tasks[0].ref(), "go", 2)
    h.drain()
    h.core.cancel_job("j")
    (reply,) = replies(h.drain())
    assert reply.call_id == 1 and reply.error
    assert "j" not in h.core.barriers.jobs and h.core.barriers.waiting == 0


# -- cyclic barriers (round=N) --------------------------------------------------------


def record_of(a) -> dict:
    assert a.write is not None
    return json.loads(a.write[1])


def test_cyclic_rounds_release_in_order_and_keep_only_the_current_round() -> None:
    b = Barriers()
    assert not b.arrive("j", 3, parked(0), "r", 2, round=0).ready
    a = b.arrive("j", 3, parked(1), "r", 2, round=0)
    assert [p.index for p in a.ready] == [0, 1]
    assert record_of(a) == {"parties": 2, "arrived": [0, 1], "released": True, "round": 0}
    # Round 0 again (a task run again): passes at once, nothing written.
    again = b.arrive("j", 3, parked(0, attempt=2), "r", 2, round=0)
    assert [p.index for p in again.ready] == [0] and again.write is None
    # Round 1 starts over from nothing, in the same record.
    a = b.arrive("j", 3, parked(1, call_id=7), "r", 2, round=1)
    assert not a.ready and record_of(a) == {"parties": 2, "arrived": [1], "released": False, "round": 1}
    assert b.docs("j") == [{"name": "r", "parties": 2, "arrived": 1, "released": False, "round": 1}]
    # A round below the current one is released already.
    assert [p.index for p in b.arrive("j", 3, parked(2), "r", 2, round=0).ready] == [2]
    a = b.arrive("j", 3, parked(0), "r", 2, round=1)
    assert sorted(p.index for p in a.ready) == [0, 1] and b.waiting == 0


def test_a_later_round_waits_for_the_current_one_then_counts_for_its_own() -> None:
    b = Barriers()
    b.arrive("j", 3, parked(0), "r", 2, round=0)
    early = b.arrive("j", 3, parked(2, call_id=30), "r", 2, round=1)  # round 0 not released yet
    assert not early.ready and early.write is None and b.waiting == 2
    assert b.docs("j")[0]["round"] == 0 and b.docs("j")[0]["arrived"] == 1
    a = b.arrive("j", 3, parked(1), "r", 2, round=0)
    # Round 0 released (tasks 0 and 1), then task 2's parked call started round 1 and waits in it.
    assert [p.index for p in a.ready] == [0, 1]
    assert record_of(a) == {"parties": 2, "arrived": [2], "released": False, "round": 1}
    assert b.waiting == 1
    done = b.arrive("j", 3, parked(0, call_id=40), "r", 2, round=1)
    assert [p.call_id for p in done.ready] == [30, 40]


def test_a_released_round_lets_a_later_one_start_skipping_rounds_between() -> None:
    b = Barriers()
    b.arrive("j", 2, parked(0), "r", 1, round=0)  # one party: released at once
    a = b.arrive("j", 2, parked(1), "r", 2, round=5)
    assert record_of(a) == {"parties": 2, "arrived": [1], "released": False, "round": 5}
    for r in (1, 4):  # skipped rounds count as released
        assert [p.index for p in b.arrive("j", 2, parked(0), "r", 2, round=r).ready] == [0]
    assert len(b.arrive("j", 2, parked(0), "r", 2, round=5).ready) == 2


def test_cyclic_parties_agree_within_a_round_only_and_kinds_do_not_mix() -> None:
    b = Barriers()
    b.arrive("j", 4, parked(0), "r", 2, round=0)
    assert "has 2 parties" in b.arrive("j", 4, parked(1), "r", 3, round=0).error
    # A later round with other parties waits; once its round comes it is refused, others counted.
    b.arrive("j", 4, parked(2, call_id=20), "r", 3, round=1)
    b.arrive("j", 4, parked(3, call_id=30), "r", 4, round=1)
    a = b.arrive("j", 4, parked(1), "r", 2, round=0)
    assert [p.index for p in a.ready] == [0, 1]
    assert [(p.call_id, "in round 1" in e and "says 4" in e) for p, e in a.refused] == [(30, True)]
    assert record_of(a) == {"parties": 3, "arrived": [2], "released": False, "round": 1}
    assert b.waiting == 1
    assert "is cyclic" in b.arrive("j", 4, parked(0), "r", 3).error
    b.arrive("j", 4, parked(0), "plain", 2)
    assert "is not cyclic" in b.arrive("j", 4, parked(1), "plain", 2, round=0).error
    assert "round must be" in b.arrive("j", 4, parked(1), "r", 3, round=-1).error
    assert "round must be" in invalid("r", 1, 1, True)  # type: ignore[arg-type]


def test_cyclic_records_restore_with_their_round_and_expire_and_end_like_plain_ones() -> None:
    b = Barriers()
    b.restore("j", "r", {"parties": 2, "arrived": [1], "released": False, "round": 3}, 3)
    assert b.docs("j") == [{"name": "r", "parties": 2, "arrived": 1, "released": False, "round": 3}]
    assert b.arrive("j", 3, parked(1), "r", 2, round=2).ready  # below the rebuilt round
    assert not b.arrive("j", 3, parked(1, due=5.0), "r", 2, round=3).ready  # counted already
    b.arrive("j", 3, parked(2, call_id=9, due=6.0), "r", 2, round=4)  # parked for later
    assert [(p.index, where) for p, where in b.expire(5.5)] == [(1, "1/2")]
    (gone,) = b.attempt_ended("j", 2, 1)
    assert (gone.index, gone.call_id, gone.round) == (2, 9, 4)
    assert b.waiting == 0
    try:
        b.restore("j", "s", {"parties": 2, "arrived": [], "released": False, "round": "1"}, 3)
    except ValueError:
        pass
    else:
        raise AssertionError("restored a round that is not a number")


def test_the_core_passes_rounds_and_answers_refused_later_calls() -> None:
    h = harness()
    job = running_job(h, n=3)
    h.core.barrier("e1", 1, job.tasks[0].ref(), "r", 2, round=0)
    h.core.barrier("e1", 2, job.tasks[2].ref(), "r", 3, round=1)  # waits for round 0
    assert [type(d) for d in h.drain()] == [PutRecord]
    h.core.barrier("e1", 3, job.tasks[1].ref(), "r", 2, round=0)
    out = h.drain()
    records = [json.loads(d.value or b"") for d in out if isinstance(d, PutRecord)]
    assert records[-1] == {"parties": 3, "arrived": [2], "released": False, "round": 1}
    assert replies(out) == [CallReply("e1", 1), CallReply("e1", 3)]
    h.core.barrier("e1", 4, job.tasks[0].ref(), "r", 2, round=1)
    (refused,) = h.drain()
    assert isinstance(refused, CallReply) and "has 3 parties" in refused.error
    # A new leader rebuilds the round from the record; round 0 passes at once there.
    h2 = Harness()
    job2 = running_job(h2, n=3)
    h2.core.restore_barrier("j", "r", records[-1])
    h2.core.barrier("e1", 11, job2.tasks[1].ref(), "r", 2, round=0)
    assert h2.drain() == [CallReply("e1", 11)]


def test_rounds_parked_ahead_release_one_after_another_in_order() -> None:
    b = Barriers()
    b.arrive("j", 3, parked(0, call_id=1), "r", 2, round=0)
    for index, call_id, r in ((0, 21, 2), (1, 11, 1), (1, 22, 2), (2, 12, 1)):
        assert not b.arrive("j", 3, parked(index, call_id=call_id), "r", 2, round=r).ready
    a = b.arrive("j", 3, parked(2, call_id=3), "r", 2, round=0)
    assert [p.call_id for p in a.ready] == [1, 3, 11, 12, 21, 22]
    assert record_of(a) == {"parties": 2, "arrived": [0, 1], "released": True, "round": 2}
    assert b.waiting == 0 and not a.refused


def test_parties_are_capped_whatever_the_jobs_size() -> None:
    """A record lists who arrived and is written at each arrival: its cost grows with the square of
    the parties, so a million-task job does not get a million-party barrier."""
    from rota.scheduler.barriers import MAX_PARTIES, invalid

    assert invalid("x", MAX_PARTIES, 1_000_000) == ""
    assert "MAX_PARTIES" in invalid("x", MAX_PARTIES + 1, 1_000_000)
    assert "the job's task count" in invalid("x", 6, 5)


def test_every_party_learns_the_same_release_time_and_a_new_leader_keeps_it() -> None:
    """The release is stamped once (the leader's wall clock): parked parties, the releasing one and
    later callers all get it, the record keeps it, and a new round starts without one."""
    b = Barriers()
    b.arrive("j", 3, parked(0), "start", 2, now_us=111)
    out = b.arrive("j", 3, parked(1), "start", 2, now_us=222)
    assert [(p.index, p.released_us) for p in out.ready] == [(0, 222), (1, 222)]
    assert out.write is not None and json.loads(out.write[1])["at"] == 222
    assert [p.released_us for p in b.arrive("j", 3, parked(2), "start", 2, now_us=999).ready] == [222]
    rebuilt = Barriers()
    rebuilt.restore("j", "start", json.loads(out.write[1]), 3)
    assert [p.released_us for p in rebuilt.arrive("j", 3, parked(2), "start", 2, now_us=999).ready] == [222]
    for bad in (-1, "x", True):
        try:
            Barriers().restore(
                "j", "start", {"parties": 2, "arrived": [0, 1], "released": True, "at": bad}, 3
            )
        except ValueError as e:
            assert "'at'" in str(e)
        else:
            raise AssertionError(f"restored a record with at={bad!r}")
    b.arrive("j", 3, parked(0), "tick", 2, round=0)
    b.arrive("j", 3, parked(1), "tick", 2, round=0, now_us=300)
    nxt = b.arrive("j", 3, parked(0, call_id=7), "tick", 2, round=1, now_us=400)
    assert nxt.write is not None and "at" not in json.loads(nxt.write[1])
    late = b.arrive("j", 3, parked(2), "tick", 2, round=0, now_us=500)
    assert [p.released_us for p in late.ready] == [0]  # a past round's time is no longer known


def test_the_core_answers_a_release_with_its_time() -> None:
    h = harness(wall=1234.5)
    job = running_job(h)
    h.core.barrier("e1", 1, job.tasks[0].ref(), "go", 2)
    h.core.barrier("e1", 2, job.tasks[1].ref(), "go", 2)
    out = replies(h.drain())
    assert sorted((r.call_id, r.released_us) for r in out) == [(1, 1234500000), (2, 1234500000)]

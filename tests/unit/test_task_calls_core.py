"""A task's own calls (checkpoints, progress) in the scheduling core: who may make them, and what
they decide. Pure logic, no I/O."""

from __future__ import annotations

import math

from test_core import Harness, tmpl

from rota.common.states import RUNNING
from rota.scheduler.core import MAX_CHECKPOINT, CallReply, PutCheckpoint, PutTask, TaskRef, restore_task
from rota.scheduler.views import job_page_doc, stored_page_doc, task_doc


def running_task(h: Harness) -> TaskRef:
    job = h.add_job("j", tmpl())
    h.attach("e1", slots=1)
    h.drain()
    task = job.tasks[0]
    assert task.executor == "e1"
    ref = task.ref()
    h.report("e1", ref, RUNNING)
    h.drain()
    return ref


def test_the_current_attempt_saves_a_checkpoint_and_is_answered_after_it() -> None:
    h = Harness()
    ref = running_task(h)
    h.core.save_checkpoint("e1", 7, ref, b"state")
    out = h.drain()
    assert [type(d) for d in out] == [PutCheckpoint, CallReply]
    assert out[0].data == b"state" and out[0].task.id == "j/0"
    assert out[1] == CallReply("e1", 7, "")


def test_stale_attempts_other_executors_and_oversize_checkpoints_are_refused_and_write_nothing() -> None:
    h = Harness()
    ref = running_task(h)
    cases = [
        ("e1", TaskRef("j", 0, ref.attempt - 1), b"x", "not its current one"),
        ("e1", TaskRef("j", 0, ref.attempt + 1), b"x", "not its current one"),
        ("e2", ref, b"x", "does not run on this executor"),
        ("e1", TaskRef("other", 0, 1), b"x", "not running"),
        ("e1", TaskRef("j", 5, 1), b"x", "not running"),
        ("e1", ref, b"x" * (MAX_CHECKPOINT + 1), "64 KiB at most"),
    ]
    for ex, r, data, needle in cases:
        h.core.save_checkpoint(ex, 1, r, data)
        out = h.drain()
        assert len(out) == 1 and isinstance(out[0], CallReply), out
        assert needle in out[0].error, (needle, out[0].error)


def test_progress_is_kept_in_the_task_record_and_document_and_survives_a_rebuild() -> None:
    h = Harness()
    ref = running_task(h)
    h.core.set_progress("e1", 3, ref, 0.25, "a quarter")
    out = h.drain()
    assert isinstance(out[0], PutTask) and out[0].record["p"] == [0.25, "a quarter"]
    assert out[-1] == CallReply("e1", 3, "")
    task = h.core.jobs["j"].tasks[0]
    assert task_doc(task)["progress"] == {"fraction": 0.25, "message": "a quarter"}
    for bad, needle in (
        (1.5, "fraction from 0 to 1"),
        (math.nan, "fraction from 0 to 1"),
        (-0.1, "fraction"),
    ):
        h.core.set_progress("e1", 4, ref, bad, "")
        (reply,) = h.drain()
        assert isinstance(reply, CallReply) and needle in reply.error
    h.core.set_progress("e1", 5, ref, 0.5, "x" * 257)
    (reply,) = h.drain()
    assert "256 characters" in reply.error
    # A new leader reads it back from the record.
    h2 = Harness()
    job = h2.new_job("j", tmpl())
    restore_task(job, 0, task.record())
    assert job.tasks[0].progress == (0.25, "a quarter")
    # The page read from etcd shows what the page from memory shows.
    live = job_page_doc(h.core.jobs["j"], 0, 10)["tasks"]
    stored = stored_page_doc(h.core.jobs["j"], h.core.jobs["j"].spec, {0: task.record()}, 0, 10)["tasks"]
    assert live[0]["progress"] == stored[0]["progress"] == {"fraction": 0.25, "message": "a quarter"}


def test_a_task_without_progress_has_no_progress_field() -> None:
    h = Harness()
    running_task(h)
    assert "progress" not in task_doc(h.core.jobs["j"].tasks[0])


def test_progress_in_a_tight_loop_is_written_once_a_second_and_the_last_one_is_kept() -> None:
    h = Harness()
    ref = running_task(h)
    task = h.core.jobs["j"].tasks[0]
    writes = []
    for i in range(1, 6):
        h.core.set_progress("e1", i, ref, i / 10, f"step {i}")
        out = h.drain()
        assert out[-1] == CallReply("e1", i, "")
        writes += [d.record["p"] for d in out if isinstance(d, PutTask)]
        assert task_doc(task)["progress"]["message"] == f"step {i}"  # shown at once
        h.now[0] += 0.1
    assert writes == [[0.1, "step 1"]]
    h.now[0] += 1.0
    h.core.tick()
    assert [d.record["p"] for d in h.drain() if isinstance(d, PutTask)] == [[0.5, "step 5"]]
    h.core.tick()
    assert not [d for d in h.drain() if isinstance(d, PutTask)]


def test_checkpoints_past_their_byte_budget_wait_and_the_latest_one_is_written() -> None:
    h = Harness()
    ref = running_task(h)
    blob = b"x" * MAX_CHECKPOINT
    for i in range(4):  # the burst: 256 KiB at once
        h.core.save_checkpoint("e1", i, ref, blob)
        assert [type(d) for d in h.drain()] == [PutCheckpoint, CallReply]
    h.core.save_checkpoint("e1", 10, ref, blob)
    h.core.save_checkpoint("e1", 11, ref, b"newer")
    assert h.drain() == []  # held, unanswered
    h.now[0] += 0.5
    h.core.tick()
    assert h.drain() == []
    h.now[0] += 0.6  # a second of budget has grown back
    h.core.tick()
    out = h.drain()
    assert [d.data for d in out if isinstance(d, PutCheckpoint)] == [b"newer"]
    assert [d for d in out if isinstance(d, CallReply)] == [CallReply("e1", 10, ""), CallReply("e1", 11, "")]


def test_a_held_checkpoint_whose_attempt_ended_is_refused_not_written() -> None:
    h = Harness()
    ref = running_task(h)
    for i in range(5):
        h.core.save_checkpoint("e1", i, ref, b"x" * MAX_CHECKPOINT)
    h.drain()
    h.report("e1", ref, "FAILED", {"error": "boom"})
    h.drain()
    h.now[0] += 5
    h.core.tick()
    out = h.drain()
    assert not [d for d in out if isinstance(d, PutCheckpoint)]
    (reply,) = [d for d in out if isinstance(d, CallReply)]
    assert reply.call_id == 4 and "ended first" in reply.error

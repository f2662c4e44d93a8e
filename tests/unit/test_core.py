"""The leader's scheduling core and placement: pure logic driven by a fake clock.

No I/O, no asyncio, no etcd: every event is a method call on ``Core`` and every
decision comes back from ``Core.drain()``, so each test runs in microseconds. The last
test drives the core with a few hundred random events per seed and checks its
invariants after each one, including a leader fail-over rebuilt from the writes it made.
"""

from __future__ import annotations

import functools
import json
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from rota.common.jobspec import JobSpec
from rota.common.states import (
    ACTIVE,
    ASSIGNED,
    CANCELLED,
    FAILED,
    HANDED_BACK,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TASK_STATES,
    TERMINAL,
)
from rota.scheduler import core as core_module
from rota.scheduler.core import (
    DEADLINE_MARGIN,
    RETRY_BASE,
    RETRY_CAP,
    SHORT_RUN,
    Ack,
    CancelTasks,
    Core,
    Decision,
    DeleteJob,
    Dispatch,
    EndedJob,
    Job,
    JobEnded,
    PutJob,
    PutTask,
    Report,
    TaskRef,
    lost_limit,
    restore_task,
    retry_delay,
)
from rota.scheduler.placement import ExecutorSlot, choose_executor

PARAMS: dict[str, dict[str, Any]] = {
    "noop": {},
    "sleep": {"seconds": 0},
    "shell": {"command": ["true"]},
    "python": {"code": "pass"},
    "go": {"code": "package main"},
    "call": {"function": "operator:mul", "args": [6, 7]},
}


def tmpl(
    name: str = "t", kind: str = "noop", *, count: int = 1, shards: int = 0, max_attempts: int | None = None
) -> dict[str, Any]:
    """One ``[[task]]`` table."""
    table: dict[str, Any] = {"name": name, "kind": kind, **PARAMS[kind]}
    if shards:
        table["shards"] = shards
    elif count != 1:
        table["count"] = count
    if max_attempts is not None:
        table["max-attempts"] = max_attempts
    return table


def make_spec(*tasks: dict[str, Any], priority: int | str = 50, max_attempts: int = 3) -> JobSpec:
    return JobSpec.from_dict(
        {"name": "job", "priority": priority, "max-attempts": max_attempts, "task": list(tasks) or [tmpl()]}
    )


def slot(ex_id: str, slots: int = 2, kinds: Iterable[str] = ("noop",)) -> ExecutorSlot:
    return ExecutorSlot(id=ex_id, name=ex_id, addr=f"{ex_id}:1", slots=slots, kinds=frozenset(kinds))


class Harness:
    """A core with a fake clock, and shorthands for the events a test sends it."""

    def __init__(self) -> None:
        self.now = [1000.0]
        self.core = Core(clock=lambda: self.now[0])
        self.seq = 0

    def new_job(
        self,
        job_id: str,
        *tasks: dict[str, Any],
        priority: int | str = 50,
        max_attempts: int = 3,
        seq: int | None = None,
    ) -> Job:
        self.seq += 1
        spec = make_spec(*tasks, priority=priority, max_attempts=max_attempts)
        return Job(job_id, spec, self.seq if seq is None else seq, self.now[0])

    def add_job(self, job_id: str, *tasks: dict[str, Any], **kw: Any) -> Job:
        job = self.new_job(job_id, *tasks, **kw)
        self.core.add_job(job)
        return job

    def attach(
        self, ex_id: str, slots: int = 2, kinds: Iterable[str] = ("noop",), reported: Iterable[TaskRef] = ()
    ) -> ExecutorSlot:
        ex = slot(ex_id, slots, kinds)
        self.core.attach_executor(ex, reported)
        return ex

    def report(self, ex_id: str, ref: TaskRef, state: str, result: dict[str, Any] | None = None) -> None:
        self.core.report(ex_id, [Report(ref, state, result)])

    def drain(self) -> list[Decision]:
        return self.core.drain()


def dispatched(decisions: list[Decision]) -> dict[str, list[tuple[str, int]]]:
    """Executor id -> [(task id, attempt)] of every Dispatch, asserting one Dispatch per executor."""
    out: dict[str, list[tuple[str, int]]] = {}
    for d in decisions:
        if isinstance(d, Dispatch):
            assert d.executor not in out, f"two Dispatch decisions for {d.executor} in one drain"
            out[d.executor] = [(t.id, a) for t, a in d.tasks]
    return out


def puts(decisions: list[Decision]) -> list[tuple[str, dict[str, Any]]]:
    return [(d.task.id, d.record) for d in decisions if isinstance(d, PutTask)]


def only(decisions: list[Decision], kind: type) -> list[Any]:
    return [d for d in decisions if isinstance(d, kind)]


def states(job: Job) -> list[str]:
    return [t.state for t in job.tasks]


def assert_counts(job: Job) -> None:
    actual = Counter(t.state for t in job.tasks)
    assert {s: job.counts[s] for s in TASK_STATES} == {s: actual[s] for s in TASK_STATES}
    assert sum(job.counts.values()) == len(job.tasks)


# -- placement ------------------------------------------------------------------------


def test_a_task_goes_to_an_executor_offering_its_kind() -> None:
    h = Harness()
    h.attach("a", kinds=["noop"])
    h.attach("b", kinds=["shell", "python"])
    job = h.add_job("j", tmpl("sh", "shell"), tmpl("py", "python"), tmpl("n", "noop"))
    out = h.drain()
    assert dispatched(out) == {"b": [("j/0", 1), ("j/1", 1)], "a": [("j/2", 1)]}
    assert [t.executor for t in job.tasks] == ["b", "b", "a"]
    assert states(job) == [ASSIGNED] * 3


def test_shards_spread_least_loaded_first() -> None:
    h = Harness()
    a, b = h.attach("a", slots=2), h.attach("b", slots=2)
    job = h.add_job("j", tmpl("pi", shards=4))
    got = dispatched(h.drain())
    assert sorted(got) == ["a", "b"]
    assert len(got["a"]) == 2 and len(got["b"]) == 2
    assert len(a.running) == 2 and len(b.running) == 2
    # Spread one by one, not the first executor filled first.
    assert [t.executor for t in job.tasks] == ["a", "b", "a", "b"]


def test_placement_compares_the_slots_ratio_not_the_running_count() -> None:
    big, small = slot("big", slots=8), slot("small", slots=2)
    for ex in (big, small):
        ex.connected = True
    big.running.update({object(), object()})  # 2 of 8: 25% busy
    small.running.add(object())  # 1 of 2: 50% busy, but fewer tasks
    assert choose_executor("noop", [small, big]) is big
    assert choose_executor("noop", [big, small]) is big
    # Same load: fewer running tasks first, then the id.
    small.slots = 4
    assert choose_executor("noop", [big, small]) is small
    assert choose_executor("shell", [big, small]) is None


def test_placement_in_the_core_uses_the_slots_ratio() -> None:
    h = Harness()
    h.attach("big", slots=4)
    h.attach("small", slots=1)
    job = h.add_job("j", tmpl(count=5))
    got = dispatched(h.drain())
    assert len(got["big"]) == 4 and len(got["small"]) == 1
    # Both idle: big (by id); then small (0/1 < 1/4); then small is full and big takes the rest.
    assert [t.executor for t in job.tasks] == ["big", "small", "big", "big", "big"]


def test_an_executor_with_no_free_slot_gets_nothing() -> None:
    h = Harness()
    ex = h.attach("a", slots=1)
    job = h.add_job("j", tmpl(count=3))
    assert dispatched(h.drain()) == {"a": [("j/0", 1)]}
    assert ex.free == 0
    assert choose_executor("noop", [ex]) is None
    h.add_job("k")
    assert dispatched(h.drain()) == {}
    assert states(job) == [ASSIGNED, PENDING, PENDING]
    assert h.core.pending_count() == 3
    h.report("a", job.tasks[0].ref(), SUCCEEDED)
    assert dispatched(h.drain()) == {"a": [("j/1", 1)]}


def test_a_kind_no_executor_offers_stays_pending_and_blocks_nothing() -> None:
    h = Harness()
    h.attach("a", slots=4, kinds=["noop", "shell"])
    go = h.add_job("go", tmpl("g", "go", count=2), priority="high")
    mixed = h.add_job("mixed", tmpl("g", "go"), tmpl("n", "noop"), priority="high")
    low = h.add_job("low", tmpl("n", "noop"), tmpl("s", "shell"), priority="low")
    got = dispatched(h.drain())
    assert got == {"a": [("mixed/1", 1), ("low/0", 1), ("low/1", 1)]}
    assert states(go) == [PENDING, PENDING]
    assert go.current_state() == PENDING
    assert states(mixed) == [PENDING, ASSIGNED]
    assert states(low) == [ASSIGNED, ASSIGNED]
    # An executor offering the kind picks the waiting tasks up, highest priority first.
    h.attach("gopher", slots=2, kinds=["go"])
    assert dispatched(h.drain()) == {"gopher": [("go/0", 1), ("go/1", 1)]}
    assert mixed.tasks[0].state == PENDING


def test_a_detached_executor_gets_no_work_but_keeps_its_tasks() -> None:
    h = Harness()
    a = h.attach("a", slots=4)
    first = h.add_job("first")
    h.drain()
    h.core.executor_detached("a")
    assert a.free == 0
    job = h.add_job("j", tmpl(count=2))
    assert h.drain() == []
    assert states(job) == [PENDING, PENDING]
    assert first.tasks[0].state == ASSIGNED and first.tasks[0] in a.running
    h.attach("b", slots=4)
    assert dispatched(h.drain()) == {"b": [("j/0", 1), ("j/1", 1)]}
    h.core.executor_detached("nobody")  # unknown: a no-op
    assert h.drain() == []


# -- priority -------------------------------------------------------------------------


def test_higher_priority_added_later_is_dispatched_first() -> None:
    h = Harness()
    h.attach("a", slots=1)
    busy = h.add_job("busy")
    h.drain()
    low = h.add_job("low", priority="low")
    high = h.add_job("high", priority=90)
    assert h.drain() == []
    h.report("a", busy.tasks[0].ref(), SUCCEEDED)
    assert dispatched(h.drain()) == {"a": [("high/0", 1)]}
    h.report("a", high.tasks[0].ref(), SUCCEEDED)
    assert dispatched(h.drain()) == {"a": [("low/0", 1)]}
    assert low.tasks[0].state == ASSIGNED


def test_equal_priority_is_fifo_by_job_seq_then_task_index() -> None:
    h = Harness()
    later = h.add_job("later", tmpl(count=2), seq=7)
    earlier = h.add_job("earlier", tmpl(count=2), seq=3)
    h.attach("a", slots=1)
    order = []
    for _ in range(4):
        [(tid, _)] = dispatched(h.drain())["a"]
        order.append(tid)
        job = earlier if tid.startswith("earlier") else later
        h.report("a", job.tasks[int(tid.split("/")[1])].ref(), SUCCEEDED)
    assert order == ["earlier/0", "earlier/1", "later/0", "later/1"]


# -- batching -------------------------------------------------------------------------


def test_one_event_dispatches_one_batch_per_executor_after_its_writes() -> None:
    h = Harness()
    h.attach("a", slots=4)
    h.attach("b", slots=4)
    job = h.add_job("j", tmpl(count=10))
    out = h.drain()
    got = dispatched(out)
    assert sorted(got) == ["a", "b"]
    assert len(got["a"]) == 4 and len(got["b"]) == 4
    assert all(attempt == 1 for pairs in got.values() for _, attempt in pairs)
    written = puts(out)
    assert len(written) == 8
    for tid, rec in written:
        task = job.tasks[int(tid.split("/")[1])]
        assert rec == {"s": ASSIGNED, "a": 1, "e": task.executor, "f": 0}
        assert (tid, 1) in got[task.executor]
    # Every PutTask comes before every Dispatch (writes are committed before sending).
    kinds = [type(d) for d in out]
    assert kinds == [PutTask] * 8 + [Dispatch] * 2
    assert states(job).count(PENDING) == 2
    assert h.core.stats.dispatched == 8
    assert h.drain() == []


def test_put_task_records_are_snapshots() -> None:
    h = Harness()
    h.attach("a")
    job = h.add_job("j")
    h.report("a", TaskRef("j", 0, 1), FAILED, {"error": "boom"})
    out = h.drain()
    recs = [rec for _, rec in puts(out)]
    assert recs[0] == {"s": ASSIGNED, "a": 1, "e": "a", "f": 0}
    assert recs[1] == {
        "s": PENDING, "a": 1, "e": "a", "f": 1, "r": {"error": "boom"},
        "y": ["attempt 1 boom; retried after 0.5s (exponential backoff)"],
    }  # fmt: skip
    assert job.tasks[0].state == PENDING


# -- reports --------------------------------------------------------------------------


def test_success_writes_once_frees_the_slot_and_dispatches_the_next_task() -> None:
    h = Harness()
    ex = h.attach("a", slots=1)
    job = h.add_job("j", tmpl(count=2))
    h.drain()
    ref = job.tasks[0].ref()
    result = {"exit_code": 0, "stdout": "hi"}
    h.report("a", ref, SUCCEEDED, result)
    out = h.drain()
    assert puts(out) == [
        ("j/0", {"s": SUCCEEDED, "a": 1, "e": "a", "f": 0, "r": result}),
        ("j/1", {"s": ASSIGNED, "a": 1, "e": "a", "f": 0}),
    ]
    assert [(a.executor, a.refs) for a in only(out, Ack)] == [("a", [ref])]
    assert dispatched(out) == {"a": [("j/1", 1)]}
    assert isinstance(out[-1], Dispatch)
    assert job.tasks[0].result == result
    assert ex.running == {job.tasks[1]}
    assert h.core.stats.finished == 1
    # The same report again: stale, acknowledged, nothing written.
    h.report("a", ref, SUCCEEDED, result)
    out = h.drain()
    assert out == [Ack("a", [ref])]
    assert h.core.stats.stale_reports == 1
    assert h.core.stats.finished == 1


def test_every_report_in_a_batch_is_acked_stale_or_not() -> None:
    h = Harness()
    h.attach("a", slots=2)
    job = h.add_job("j", tmpl(count=2))
    h.drain()
    refs = [t.ref() for t in job.tasks]
    bogus = TaskRef("nope", 0, 1)
    h.core.report(
        "a", [Report(refs[0], RUNNING), Report(bogus, SUCCEEDED), Report(refs[1], SUCCEEDED, {"value": 1})]
    )
    out = h.drain()
    assert only(out, Ack) == [Ack("a", [refs[0], bogus, refs[1]])]
    assert h.core.stats.stale_reports == 1
    assert states(job) == [RUNNING, SUCCEEDED]
    h.core.report("a", [])
    assert h.drain() == []


@pytest.mark.parametrize(
    "case", ["wrong-attempt", "older-attempt", "unknown-job", "bad-index", "negative-index"]
)
def test_stale_reports_are_ignored(case: str) -> None:
    h = Harness()
    h.attach("a", slots=1)
    h.attach("b", slots=2)
    job = h.add_job("j", tmpl(count=2))
    h.drain()
    task = job.tasks[0]
    assert task.executor == "a"
    if case == "older-attempt":
        h.core.executor_lost(task.executor)
        h.drain()
        assert task.attempt == 2
    ref, sender = task.ref(), task.executor
    if case == "wrong-attempt":
        ref = TaskRef("j", 0, task.attempt + 1)
    elif case == "older-attempt":
        ref = TaskRef("j", 0, 1)
    elif case == "unknown-job":
        ref = TaskRef("zzz", 0, 1)
    elif case == "bad-index":
        ref = TaskRef("j", 2, 1)
    elif case == "negative-index":
        ref = TaskRef("j", -1, 1)
    before = [(t.state, t.attempt, t.executor, t.result) for t in job.tasks]
    for state in (RUNNING, SUCCEEDED, FAILED):
        h.report(sender, ref, state, {"error": "late"})
        assert h.drain() == [Ack(sender, [ref])]
    assert h.core.stats.stale_reports == 3
    assert [(t.state, t.attempt, t.executor, t.result) for t in job.tasks] == before
    assert_counts(job)


def test_a_current_attempts_result_counts_once_whoever_sends_it() -> None:
    """An executor that fenced itself registers anew but keeps the results its attempts finished
    before: while the task has not been placed again, the result is the task's, and only once."""
    h = Harness()
    h.attach("a", slots=1)
    job = h.add_job("j", tmpl(count=1))
    h.drain()
    task = job.tasks[0]
    assert (task.executor, task.attempt) == ("a", 1)
    h.attach("a2", slots=1)
    h.drain()
    h.report("a2", task.ref(), SUCCEEDED, {"value": 1})
    out = h.drain()
    assert task.state == SUCCEEDED and task.result == {"value": 1}
    assert Ack("a2", [TaskRef("j", 0, 1)]) in out
    h.report("a", TaskRef("j", 0, 1), SUCCEEDED, {"value": 2})
    assert h.drain() == [Ack("a", [TaskRef("j", 0, 1)])]
    assert task.result == {"value": 1} and h.core.stats.stale_reports == 1
    assert_counts(job)


def test_reports_for_a_terminal_task_are_stale() -> None:
    h = Harness()
    h.attach("a")
    job = h.add_job("j", tmpl(count=2))
    h.drain()
    ref = job.tasks[0].ref()
    h.report("a", ref, FAILED, {"error": "x"})  # requeued (attempt 1 of 3)
    h.report("a", job.tasks[1].ref(), SUCCEEDED)
    h.drain()
    for state in (RUNNING, FAILED, SUCCEEDED):
        h.report("a", job.tasks[1].ref(), state)
        assert puts(h.drain()) == []
    assert job.tasks[1].state == SUCCEEDED
    # A report for the failed attempt after the task was requeued is stale too.
    h.report("a", ref, SUCCEEDED)
    assert puts(h.drain()) == []
    assert job.tasks[0].state == PENDING
    assert h.core.stats.stale_reports == 4


def test_running_report_moves_assigned_to_running_without_a_write() -> None:
    h = Harness()
    h.attach("a")
    job = h.add_job("j")
    h.drain()
    task = job.tasks[0]
    h.report("a", task.ref(), RUNNING)
    out = h.drain()
    assert out == [Ack("a", [task.ref()])]
    assert task.state == RUNNING
    assert job.counts[RUNNING] == 1 and job.counts[ASSIGNED] == 0
    assert job.current_state() == RUNNING
    h.report("a", task.ref(), RUNNING)  # again: nothing changes, still acked
    assert h.drain() == [Ack("a", [task.ref()])]
    assert task.state == RUNNING
    assert h.core.stats.stale_reports == 0
    h.report("a", task.ref(), SUCCEEDED)
    assert puts(h.drain())[0][1]["s"] == SUCCEEDED
    assert_counts(job)


# -- retries --------------------------------------------------------------------------


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert retry_delay(1) == RETRY_BASE
    assert retry_delay(2) == 2 * RETRY_BASE
    assert retry_delay(3) == 4 * RETRY_BASE
    assert retry_delay(100) == RETRY_CAP
    assert retry_delay(1025) == retry_delay(10**9) == RETRY_CAP  # no OverflowError
    assert retry_delay(0) == RETRY_BASE


def test_a_failed_attempt_is_retried_after_the_backoff_with_its_priority() -> None:
    h = Harness()
    ex = h.attach("a", slots=1)
    hi = h.add_job("hi", priority="high", max_attempts=3)
    lo = h.add_job("lo", tmpl(count=2), priority="low")
    assert dispatched(h.drain()) == {"a": [("hi/0", 1)]}
    task = hi.tasks[0]
    t0 = h.now[0]
    h.report("a", task.ref(), FAILED, {"exit_code": 1})
    out = h.drain()
    assert puts(out)[0][0] == "hi/0"
    rec = puts(out)[0][1]
    assert (rec["s"], rec["a"], rec["r"]) == (PENDING, 1, {"exit_code": 1})
    assert task.state == PENDING and task not in ex.running
    assert h.core.stats.requeued == 1
    # While hi waits out its backoff, the free slot goes to the low-priority job.
    assert dispatched(out) == {"a": [("lo/0", 1)]}
    h.now[0] = t0 + retry_delay(1) - 0.01
    assert h.core.tick() == pytest.approx(t0 + retry_delay(1))
    assert h.drain() == []
    h.now[0] = t0 + retry_delay(1)
    assert h.core.tick() is None
    assert h.drain() == []  # ready, but the only slot is busy
    # Back in the queue with its priority: it goes before lo's second task.
    h.report("a", lo.tasks[0].ref(), SUCCEEDED)
    assert dispatched(h.drain()) == {"a": [("hi/0", 2)]}
    assert task.attempt == 2 and task.state == ASSIGNED
    # The second failure waits twice as long.
    t1 = h.now[0]
    h.report("a", task.ref(), FAILED)
    h.drain()
    h.report("a", lo.tasks[1].ref(), SUCCEEDED)
    h.drain()
    h.now[0] = t1 + retry_delay(2) - 0.01
    assert h.core.tick() == pytest.approx(t1 + retry_delay(2))
    assert h.drain() == []
    h.now[0] = t1 + retry_delay(2)
    h.core.tick()
    assert dispatched(h.drain()) == {"a": [("hi/0", 3)]}


def test_a_retry_is_not_dispatched_before_its_backoff_even_with_free_slots() -> None:
    h = Harness()
    h.attach("a", slots=4)
    job = h.add_job("j")
    h.drain()
    h.report("a", job.tasks[0].ref(), FAILED)
    assert dispatched(h.drain()) == {}
    h.attach("b", slots=4)
    assert dispatched(h.drain()) == {}
    h.now[0] += 0.25
    h.core.tick()
    assert dispatched(h.drain()) == {}
    h.now[0] += 0.25
    h.core.tick()
    got = dispatched(h.drain())
    assert list(got.values()) == [[("j/0", 2)]]


def test_past_max_attempts_the_task_and_the_job_fail() -> None:
    h = Harness()
    h.attach("a")
    job = h.add_job("j", max_attempts=2)
    h.drain()
    task = job.tasks[0]
    h.report("a", task.ref(), FAILED, {"error": "one"})
    h.drain()
    h.now[0] += 10
    h.core.tick()
    h.drain()
    assert task.attempt == 2
    h.report("a", task.ref(), FAILED, {"error": "two"})
    out = h.drain()
    reasons = [
        "attempt 1 one; retried after 0.5s (exponential backoff)",
        "attempt 2 two; max-attempts (2) reached: not retried",
    ]
    assert puts(out) == [
        ("j/0", {"s": FAILED, "a": 2, "e": "a", "f": 2, "r": {"error": "two"}, "y": reasons})
    ]
    assert only(out, PutJob) == [PutJob(job)]
    assert only(out, JobEnded) == [JobEnded(job)]
    kinds = [type(d) for d in out]
    assert kinds.index(PutTask) < kinds.index(PutJob) < kinds.index(JobEnded)
    assert job.state == FAILED and job.current_state() == FAILED
    assert job.record()["state"] == FAILED
    assert h.core.tick() is None
    assert h.drain() == []


def test_a_task_level_max_attempts_overrides_the_job() -> None:
    h = Harness()
    h.attach("a", slots=2)
    job = h.add_job("j", tmpl("once", max_attempts=1), tmpl("often", max_attempts=5), max_attempts=2)
    h.drain()
    once, often = job.tasks
    assert (once.max_attempts, often.max_attempts) == (1, 5)
    h.report("a", once.ref(), FAILED)
    h.report("a", often.ref(), FAILED)
    h.drain()
    assert once.state == FAILED
    assert often.state == PENDING
    assert job.state is None  # still running: the job ends when all its tasks have
    for _ in range(4):
        h.now[0] += RETRY_CAP
        h.core.tick()
        h.drain()
        h.report("a", often.ref(), FAILED)
        h.drain()
    assert (often.state, often.attempt) == (FAILED, 5)
    assert job.state == FAILED


def test_a_job_with_one_failed_task_fails_once_the_others_end() -> None:
    h = Harness()
    h.attach("a", slots=3)
    job = h.add_job("j", tmpl(count=3), max_attempts=1)
    h.drain()
    h.report("a", job.tasks[1].ref(), FAILED)
    out = h.drain()
    assert only(out, JobEnded) == []
    h.report("a", job.tasks[0].ref(), SUCCEEDED)
    assert only(h.drain(), JobEnded) == []
    h.report("a", job.tasks[2].ref(), SUCCEEDED)
    out = h.drain()
    assert only(out, JobEnded) == [JobEnded(job)]
    assert job.state == FAILED
    assert_counts(job)


# -- executor lost ----------------------------------------------------------------------


def test_a_lost_executors_tasks_run_elsewhere_with_the_next_attempt() -> None:
    h = Harness()
    h.attach("a", slots=2)
    job = h.add_job("j", tmpl(count=2))
    h.drain()
    h.report("a", job.tasks[0].ref(), RUNNING)
    h.drain()
    h.attach("b", slots=2)
    assert h.drain() == []
    h.core.executor_lost("a")
    out = h.drain()
    # No backoff: requeued and redispatched in the same event.
    assert dispatched(out) == {"b": [("j/0", 2), ("j/1", 2)]}
    assert [(tid, rec["s"], rec["a"]) for tid, rec in puts(out)] == [
        ("j/0", PENDING, 1),
        ("j/1", PENDING, 1),
        ("j/0", ASSIGNED, 2),
        ("j/1", ASSIGNED, 2),
    ]
    assert [t.executor for t in job.tasks] == ["b", "b"]
    assert "a" not in h.core.executors
    assert h.core.stats.requeued == 2
    # Reports from the lost executor are stale now.
    h.report("a", TaskRef("j", 0, 1), SUCCEEDED)
    assert puts(h.drain()) == []
    assert job.tasks[0].state == ASSIGNED
    h.core.executor_lost("a")  # already gone: a no-op
    assert h.drain() == []


def test_a_lost_task_waits_for_a_free_executor() -> None:
    h = Harness()
    a = h.attach("a", slots=1)
    job = h.add_job("j")
    h.drain()
    h.core.executor_lost("a")
    out = h.drain()
    assert dispatched(out) == {}
    assert job.tasks[0].state == PENDING and job.tasks[0].attempt == 1
    assert a.connected is False and a.running == set()
    h.attach("c", slots=1)
    assert dispatched(h.drain()) == {"c": [("j/0", 2)]}


def test_a_lost_attempt_does_not_use_up_max_attempts() -> None:
    """Three lost executors do not fail a task allowed three attempts: only its own failures count."""
    h = Harness()
    job = h.add_job("j", max_attempts=3)
    task = job.tasks[0]
    for i in range(3):
        h.attach(f"x{i}", slots=1)
        h.drain()
        h.core.executor_lost(f"x{i}")
        out = h.drain()
        assert puts(out) == [
            (
                "j/0",
                {
                    "s": PENDING,
                    "a": i + 1,
                    "e": f"x{i}",
                    "f": 0,
                    "l": i + 1,
                    "r": {"error": f"executor x{i} lost"},
                    "y": [f"attempt {n + 1} executor x{n} lost; run again at once" for n in range(i + 1)],
                },
            )
        ]
        assert task.ready_at == 0.0  # no backoff
    h.attach("ok", slots=1)
    h.drain()
    h.report("ok", task.ref(), FAILED, {"error": "own"})
    assert task.state == PENDING and (task.attempt, task.failures, task.lost) == (4, 1, 3)
    assert task.ready_at == h.now[0] + retry_delay(1)  # the backoff follows failures, not attempts
    h.drain()
    h.now[0] += RETRY_CAP
    h.core.tick()
    h.drain()
    h.report("ok", task.ref(), SUCCEEDED, {})
    assert task.state == SUCCEEDED and job.state == SUCCEEDED
    assert {k: v for k, v in task.record().items() if k != "y"} == {
        "s": SUCCEEDED,
        "a": 5,
        "e": "ok",
        "f": 1,
        "l": 3,
        "r": {},
    }
    assert task.record()["y"][-1] == "attempt 4 own; retried after 0.5s (exponential backoff)"


def test_failures_and_losses_are_counted_apart_and_failures_fail_the_task() -> None:
    h = Harness()
    h.attach("a", slots=1)
    job = h.add_job("j", max_attempts=2)
    task = job.tasks[0]
    h.drain()
    h.report("a", task.ref(), FAILED, {"error": "one"})
    h.drain()
    h.now[0] += RETRY_CAP
    h.core.tick()
    h.drain()
    h.core.executor_lost("a")  # lost: runs again, still one failure left
    h.attach("b", slots=1)
    h.drain()
    assert (task.state, task.attempt, task.failures, task.lost) == (ASSIGNED, 3, 1, 1)
    h.report("b", task.ref(), FAILED, {"error": "two"})
    assert task.state == FAILED and job.state == FAILED
    assert (task.failures, task.lost) == (2, 1)


def test_a_task_lost_too_often_fails_as_one_that_may_kill_its_executors() -> None:
    h = Harness()
    job = h.add_job("j", tmpl("last", max_attempts=1))
    task = job.tasks[0]
    limit = lost_limit(1)
    assert limit == core_module.LOST_FLOOR
    assert lost_limit(10) == 10 * core_module.LOST_FACTOR
    for i in range(limit):
        h.attach(f"x{i}", slots=1)
        h.drain()
        h.core.executor_lost(f"x{i}")
        out = h.drain()
    assert task.state == FAILED and job.state == FAILED
    assert (task.attempt, task.failures, task.lost) == (limit, 0, limit)
    error = task.result["error"] if task.result else ""
    assert (
        error.startswith(f"executor x{limit - 1} lost") and f"lost with its executor {limit} times" in error
    )
    assert only(out, JobEnded) == [JobEnded(job)]


def test_records_written_before_the_counts_keep_counting_every_ended_attempt_as_failed() -> None:
    h = Harness()
    job = h.new_job("j", tmpl(count=5), max_attempts=3)
    restore_task(job, 0, {"s": PENDING, "a": 2, "e": "x", "r": {"error": "lost"}})
    restore_task(job, 1, {"s": RUNNING, "a": 2, "e": "x"})
    restore_task(job, 2, {"s": SUCCEEDED, "a": 3, "e": "x"})
    restore_task(job, 3, {"s": FAILED, "a": 3, "e": "x"})
    restore_task(job, 4, {"s": PENDING, "a": 3, "e": "x", "f": 1, "l": 2})
    assert [(t.failures, t.lost) for t in job.tasks] == [(2, 0), (1, 0), (2, 0), (3, 0), (1, 2)]
    h.core.add_job(job)
    h.attach("a", slots=5)
    h.drain()
    h.report("a", job.tasks[0].ref(), FAILED, {"error": "third"})
    assert job.tasks[0].state == FAILED  # as it would have before


# -- cancel ---------------------------------------------------------------------------


def test_cancel_ends_pending_and_active_tasks_and_the_job() -> None:
    h = Harness()
    h.attach("a", slots=1)
    h.attach("b", slots=1)
    job = h.add_job("j", tmpl(count=4))
    h.add_job("other")
    h.drain()
    h.report("a", job.tasks[0].ref(), RUNNING)
    h.drain()
    active = {t.executor: t.ref() for t in job.tasks if t.state in ACTIVE}
    assert sorted(active) == ["a", "b"]
    assert h.core.cancel_job("j") is job
    out = h.drain()
    assert {(tid, rec["s"]) for tid, rec in puts(out) if tid.startswith("j/")} == {
        (f"j/{i}", CANCELLED) for i in range(4)
    }
    assert sorted((c.executor, tuple(c.refs)) for c in only(out, CancelTasks)) == [
        ("a", (active["a"],)),
        ("b", (active["b"],)),
    ]
    assert only(out, PutJob) == [PutJob(job)] and only(out, JobEnded) == [JobEnded(job)]
    assert job.state == CANCELLED and job.current_state() == CANCELLED
    assert states(job) == [CANCELLED] * 4
    # The freed slots go to other work in the same event, never to the cancelled tasks.
    assert [pairs for pairs in dispatched(out).values()] == [[("other/0", 1)]]
    h.attach("c", slots=8)
    h.now[0] += 100
    h.core.tick()
    assert dispatched(h.drain()) == {}
    # Late reports for the cancelled attempts are stale.
    stale = h.core.stats.stale_reports
    for ex_id, ref in active.items():
        h.report(ex_id, ref, SUCCEEDED)
    assert puts(h.drain()) == []
    assert h.core.stats.stale_reports == stale + 2
    assert states(job) == [CANCELLED] * 4
    # Cancelling again changes nothing; an unknown job is None.
    assert h.core.cancel_job("j") is job
    assert h.drain() == []
    assert h.core.cancel_job("nope") is None
    assert_counts(job)


def test_cancel_a_job_with_a_retry_in_backoff() -> None:
    h = Harness()
    h.attach("a", slots=2)
    job = h.add_job("j", tmpl(count=2))
    h.drain()
    h.report("a", job.tasks[0].ref(), FAILED)
    h.drain()
    h.core.cancel_job("j")
    out = h.drain()
    assert only(out, CancelTasks) == [CancelTasks("a", [job.tasks[1].ref()])]
    h.now[0] += 60
    h.core.tick()
    assert h.drain() == []
    assert states(job) == [CANCELLED, CANCELLED]
    assert job.tasks[0].attempt == 1


def test_cancel_an_ended_job_changes_nothing() -> None:
    h = Harness()
    h.attach("a")
    job = h.add_job("j")
    h.drain()
    h.report("a", job.tasks[0].ref(), SUCCEEDED)
    h.drain()
    assert h.core.cancel_job("j") is job
    assert h.drain() == []
    assert job.state == SUCCEEDED


# -- rebuild by a new leader -------------------------------------------------------------


def test_rebuild_adopts_running_tasks_and_reconciles_on_attach() -> None:
    h = Harness()
    core = h.core
    # The executors etcd knows of, not attached to this leader yet.
    core.executors["ex1"] = slot("ex1", slots=5)
    core.executors["ex2"] = slot("ex2", slots=1)
    job = h.new_job("j", tmpl(count=7))
    restore_task(job, 0, {"s": ASSIGNED, "a": 1, "e": "ex1"})  # ex1 reports it
    restore_task(job, 1, {"s": RUNNING, "a": 2, "e": "ex1"})  # ex1 reports an older attempt
    restore_task(job, 2, {"s": SUCCEEDED, "a": 1, "e": "ex1", "r": {"value": 42}})
    restore_task(job, 3, {"s": RUNNING, "a": 1, "e": "gone"})  # its executor's lease is gone
    # 4 has no record: PENDING, never tried.
    restore_task(job, 5, {"s": ASSIGNED, "a": 1, "e": "ex2"})  # ex2 has not re-attached
    restore_task(job, 6, {"s": PENDING, "a": 1, "e": "ex1", "r": {"error": "x"}})  # was in backoff
    assert job.started
    assert_counts(job)
    core.add_job(job)
    core.adopt_running()
    out = h.drain()
    # Only the task of the unknown executor changed; nothing is dispatched to unattached executors.
    assert [(tid, rec["s"], rec["a"]) for tid, rec in puts(out)] == [("j/3", PENDING, 1)]
    assert dispatched(out) == {}
    assert core.executors["ex1"].running == {job.tasks[0], job.tasks[1]}
    assert core.executors["ex2"].running == {job.tasks[5]}
    assert job.current_state() == RUNNING
    assert_counts(job)

    reported = [TaskRef("j", 0, 1), TaskRef("j", 1, 1), TaskRef("j", 2, 1), TaskRef("other", 0, 1)]
    h.attach("ex1", slots=5, reported=reported)
    out = h.drain()
    assert job.tasks[0].state == RUNNING and job.tasks[0].attempt == 1
    assert only(out, CancelTasks) == [
        CancelTasks("ex1", [TaskRef("j", 1, 1), TaskRef("j", 2, 1), TaskRef("other", 0, 1)])
    ]
    written = [(tid, rec["s"], rec["a"]) for tid, rec in puts(out)]
    assert written[0] == ("j/1", PENDING, 2)  # not reported: requeued, no backoff
    assert ("j/0", RUNNING, 1) not in written  # keeping a reported attempt writes nothing
    # ex1 has 4 free slots: the requeued and pending tasks in index order.
    assert dispatched(out) == {"ex1": [("j/1", 3), ("j/3", 2), ("j/4", 1), ("j/6", 2)]}
    assert job.tasks[2].state == SUCCEEDED and job.tasks[2].result == {"value": 42}
    assert job.tasks[5].state == ASSIGNED
    assert_counts(job)
    # ex2 never comes back: its lease expires.
    core.executor_lost("ex2")
    out = h.drain()
    assert job.tasks[5].state == PENDING and job.tasks[5].attempt == 1
    assert dispatched(out) == {}  # ex1 is full
    h.report("ex1", job.tasks[0].ref(), SUCCEEDED)
    assert dispatched(h.drain()) == {"ex1": [("j/5", 2)]}


def test_reattach_keeps_the_running_set_resends_lost_dispatches_and_requeues_what_was_dropped() -> None:
    h = Harness()
    h.attach("a", slots=4)
    job = h.add_job("j", tmpl(count=4))
    h.drain()
    h.report("a", job.tasks[1].ref(), RUNNING)
    h.drain()
    h.core.executor_detached("a")
    refs = [t.ref() for t in job.tasks]
    # j/1 ran there and is gone; j/3's dispatch never arrived (the stream broke with it in flight).
    a2 = h.attach("a", slots=4, reported=[refs[0], refs[2]])
    out = h.drain()
    assert h.core.executors["a"] is a2 and a2.connected
    assert states(job)[0] == RUNNING and states(job)[2] == RUNNING
    assert [(tid, rec["s"], rec["a"]) for tid, rec in puts(out)] == [
        ("j/1", PENDING, 1),
        ("j/1", ASSIGNED, 2),
    ]
    assert dispatched(out) == {"a": [("j/3", 1), ("j/1", 2)]}
    assert job.tasks[3].state == ASSIGNED and job.tasks[3].attempt == 1
    assert only(out, CancelTasks) == []
    assert a2.running == set(job.tasks)
    assert_counts(job)


def test_a_rebuilt_job_that_had_ended_schedules_nothing() -> None:
    h = Harness()
    h.attach("a")
    job = h.new_job("j", tmpl(count=2))
    job.state = CANCELLED
    job.cancelled = True
    restore_task(job, 0, {"s": CANCELLED, "a": 0})
    h.core.add_job(job)
    h.core.adopt_running()
    assert h.drain() == []
    assert job.tasks[1].state == PENDING and job.tasks[1].attempt == 0
    assert h.core.pending_count() == 0


def test_a_rebuilt_job_whose_tasks_all_ended_ends() -> None:
    h = Harness()
    job = h.new_job("j", tmpl(count=2))
    restore_task(job, 0, {"s": SUCCEEDED, "a": 1, "e": "x"})
    restore_task(job, 1, {"s": SUCCEEDED, "a": 1, "e": "x"})
    h.core.add_job(job)
    h.core.adopt_running()
    out = h.drain()
    assert job.state == SUCCEEDED
    assert only(out, JobEnded) == [JobEnded(job)]


def test_a_rebuilt_job_with_cancelled_tasks_stays_cancelled() -> None:
    h = Harness()
    h.attach("a", slots=4)
    job = h.new_job("j", tmpl(count=2))
    restore_task(job, 0, {"s": CANCELLED, "a": 0})  # the job record's CANCELLED was not written
    h.core.add_job(job)
    h.core.adopt_running()
    h.drain()
    assert job.tasks[1].state == CANCELLED
    assert job.state == CANCELLED


# -- job states ------------------------------------------------------------------------


def test_job_states_from_pending_to_succeeded() -> None:
    h = Harness()
    job = h.add_job("j", tmpl(count=2), tmpl("s", "shell"))
    assert job.current_state() == PENDING and job.record()["state"] is None
    assert h.drain() == []
    assert_counts(job)
    h.attach("a", slots=1)
    h.drain()
    assert job.current_state() == RUNNING
    assert_counts(job)
    h.attach("s", slots=1, kinds=["shell"])
    h.drain()
    for _ in range(3):
        active = [t for t in job.tasks if t.state in ACTIVE]
        assert active
        h.report(active[0].executor, active[0].ref(), SUCCEEDED)
        out = h.drain()
        assert_counts(job)
        assert (job.state == SUCCEEDED) == bool(only(out, JobEnded))
    assert job.state == SUCCEEDED and job.current_state() == SUCCEEDED
    assert {s: n for s, n in job.counts.items() if n} == {SUCCEEDED: 3}
    assert h.core.pending_count() == 0


# -- randomized: invariants after every event ----------------------------------------------

KINDS = ("noop", "sleep", "shell", "go")
EX_KINDS = ("noop", "sleep", "shell")


class Sim:
    """A core fed random events, with a model of the executors and of etcd around it.

    ``links`` are the executors attached to the leader and ``held`` what each executor
    process actually runs: like ``scheduler.leader``, the model sends a Dispatch entry
    only if its attempt is still current and delivers messages only over a link.
    ``records`` is etcd: the last PutTask record of each task and the job records,
    from which a fail-over rebuilds the core.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = [0.0]
        self.core = self._new_core()
        self.seq = 0
        self.n_ex = 0
        self.most_credit: dict[str, int] = {}
        self.links: set[str] = set()
        self.held: dict[str, set[TaskRef]] = {}
        self.specs: dict[str, tuple[JobSpec, int, float]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.job_records: dict[str, dict[str, Any]] = {}
        self.final: dict[str, tuple[str, int]] = {}  # task id -> (state, attempt) of its terminal write
        self.ended: Counter[str] = Counter()
        self.last_tick = 0.0
        self.expect_ack: tuple[str, list[TaskRef]] | None = None
        self.writes: Counter[str] = Counter()  # PutTask states since the current core started
        self.seen: Counter[str] = Counter()

    def _new_core(self) -> Core:
        return Core(clock=lambda: self.now[0])

    # -- plumbing ----------------------------------------------------------------------

    def ready(self, t: Any) -> bool:
        """A PENDING task certainly in the queue (not waiting out a backoff)."""
        return t.state == PENDING and t.job.state is None and t.ready_at <= self.last_tick

    def deliver(self) -> list[Decision]:
        out = self.core.drain()
        assigned: dict[tuple[str, int], str] = {}
        put_jobs: set[str] = set()
        first_dispatch = next((i for i, d in enumerate(out) if isinstance(d, Dispatch)), len(out))
        assert all(isinstance(d, Dispatch) for d in out[first_dispatch:]), "dispatches must come last"
        dispatch_to: set[str] = set()
        for d in out:
            if isinstance(d, PutTask):
                tid, rec = d.task.id, d.record
                assert tid not in self.final, f"{tid} written again after its terminal record"
                assert rec["s"] in TASK_STATES and rec["s"] != RUNNING
                prev = self.records.get(tid, {"a": 0})
                if rec["s"] == ASSIGNED:
                    assert rec["a"] == prev["a"] + 1, f"{tid} assigned with attempt {rec['a']} after {prev}"
                    assigned[(tid, rec["a"])] = rec["e"]
                else:
                    assert rec["a"] == prev["a"], f"{tid} changed attempt without an assignment"
                if rec["s"] in TERMINAL:
                    self.final[tid] = (rec["s"], rec["a"])
                    self.seen["terminal-" + rec["s"]] += 1
                self.writes[rec["s"]] += 1
                self.records[tid] = dict(rec)
            elif isinstance(d, PutJob):
                assert d.job.state in TERMINAL and d.job.id not in put_jobs
                assert self.job_records[d.job.id]["state"] is None, "job record ended twice"
                put_jobs.add(d.job.id)
                self.job_records[d.job.id] = d.job.record()
            elif isinstance(d, JobEnded):
                assert d.job.id in put_jobs, "JobEnded before (or without) its PutJob"
                self.ended[d.job.id] += 1
                self.seen["job-" + str(d.job.state)] += 1
            elif isinstance(d, CancelTasks):
                if d.executor in self.links:
                    self.held[d.executor] -= set(d.refs)
                self.seen["cancel"] += 1
            elif isinstance(d, Ack):
                assert self.expect_ack is not None and (d.executor, d.refs) == self.expect_ack
                self.expect_ack = None
            elif isinstance(d, Dispatch):
                assert d.executor not in dispatch_to, "one Dispatch per executor per drain"
                dispatch_to.add(d.executor)
                for t, a in d.tasks:
                    rec = self.records.get(t.id) or {}
                    assert (rec.get("a"), rec.get("e")) == (a, d.executor), (
                        f"{t.id}#{a} dispatched before its write"
                    )
                    if d.executor in self.links and t.attempt == a and t.state in ACTIVE:
                        self.held[d.executor].add(TaskRef(t.job.id, t.index, a))
                        self.seen["dispatch"] += 1
                        if (t.id, a) not in assigned:
                            continue  # a lost dispatch sent again, not a placement
                        assert not self.core.executors[d.executor].draining, (
                            f"{t.id} placed on a draining executor"
                        )
                        # No priority inversion: nothing better of the same kind is left waiting.
                        key = (-t.job.priority, t.job.seq, t.index)
                        for job in self.core.jobs.values():
                            for w in job.tasks:
                                if self.ready(w) and w.spec.kind == t.spec.kind:
                                    assert (-job.priority, job.seq, w.index) > key, f"{w.id} waits for {t.id}"
        assert self.expect_ack is None, "a report was not acknowledged"
        return out

    def check(self) -> None:
        core = self.core
        stats = core.stats
        assert stats.dispatched == self.writes[ASSIGNED]
        assert stats.requeued == self.writes[PENDING]
        assert stats.finished == sum(self.writes[s] for s in TERMINAL)
        assert {ex.id for ex in core.executors.values() if ex.connected} == self.links
        owner: dict[str, str] = {}
        for ex_id, ex in core.executors.items():
            assert ex.id == ex_id
            # Credit beyond the slots, and at most as much again for urgent tasks overtaking (a
            # credit since lowered may leave more than today's credit allows).
            assert len(ex.running) <= 2 * (ex.slots + self.most_credit.get(ex_id, 0))
            assert ex.priorities == Counter(t.job.priority for t in ex.running)
            for t in ex.running:
                assert t.state in ACTIVE, f"{t.id} is {t.state} but in {ex_id}'s running set"
                assert t.executor == ex_id
                assert t.id not in owner, f"{t.id} runs on {owner[t.id]} and {ex_id}"
                owner[t.id] = ex_id
            if ex.connected:
                assert {t.ref() for t in ex.running} == self.held[ex_id], f"{ex_id} disagrees with the leader"
        # Credit is for templates known to be short, and only once the kind's best task may use
        # it: what must never happen is a free slot left idle.
        free_kinds = {k for ex in core.executors.values() if ex.free_slots > 0 for k in ex.kinds}
        for job in core.jobs.values():
            assert_counts(job)
            all_ended = True
            for t in job.tasks:
                # The attempt number counts every placement; failures and losses count how they ended.
                assert 0 <= t.failures <= t.max_attempts and 0 <= t.lost <= lost_limit(t.max_attempts)
                unended = t.attempt - t.failures - t.lost
                if t.state in ACTIVE or t.state == SUCCEEDED:
                    assert unended == 1, (t.id, t.state, t.attempt, t.failures, t.lost)
                elif t.state == CANCELLED:
                    assert unended in (0, 1)
                else:
                    assert unended == 0, (t.id, t.state, t.attempt, t.failures, t.lost)
                if t.state == FAILED:
                    assert t.failures == t.max_attempts or t.lost == lost_limit(t.max_attempts)
                if t.state in ACTIVE:
                    assert owner.get(t.id) == t.executor, f"{t.id} is {t.state} on no executor's set"
                if t.state in TERMINAL:
                    assert self.final.get(t.id) == (t.state, t.attempt)
                else:
                    all_ended = False
                    assert t.id not in self.final, f"{t.id} left its terminal state"
                if self.ready(t):
                    assert t.spec.kind not in free_kinds, f"{t.id} waits while a slot for it is free"
            assert (job.state is not None) == all_ended
            assert self.ended[job.id] == (1 if job.state else 0)
            if job.state is not None:
                if job.cancelled:
                    assert job.state == CANCELLED
                elif job.counts[FAILED]:
                    assert job.state == FAILED
                else:
                    assert job.state == SUCCEEDED
            started = any(t.attempt > 0 for t in job.tasks)
            if job.state is None:
                assert job.current_state() == (RUNNING if started else PENDING)

    # -- events ------------------------------------------------------------------------

    def add_job(self) -> None:
        tasks = []
        for i in range(self.rng.randint(1, 3)):
            kind = self.rng.choices(KINDS, weights=(4, 3, 3, 1))[0]
            copies = self.rng.randint(1, 4)
            split = self.rng.random() < 0.5
            ma = self.rng.choice([None, None, 1, 4])
            tasks.append(tmpl(f"t{i}", kind, count=copies, shards=copies if split else 0, max_attempts=ma))
        self.seq += 1
        job_id = f"job{self.seq}"
        spec = make_spec(
            *tasks, priority=self.rng.choice([10, 50, 50, 90]), max_attempts=self.rng.randint(1, 3)
        )
        self.specs[job_id] = (spec, self.seq, self.now[0])
        self.job_records[job_id] = {"id": job_id, "state": None}
        self.core.add_job(Job(job_id, spec, self.seq, self.now[0]))

    def attach_new(self) -> None:
        if len(self.links) >= 5:
            return
        self.n_ex += 1
        ex_id = f"ex{self.n_ex}"
        kinds = set(self.rng.sample(EX_KINDS, self.rng.randint(1, 3)))
        if self.rng.random() < 0.2:
            kinds.add("go")
        self.held[ex_id] = set()
        self.links.add(ex_id)
        self.core.attach_executor(slot(ex_id, self.rng.randint(1, 3), kinds))

    def reattach(self) -> None:
        """A detached executor comes back, having maybe lost some tasks, maybe with a stray one."""
        detached = [ex for ex in self.core.executors.values() if not ex.connected]
        if not detached:
            return
        ex = self.rng.choice(detached)
        held = self.held[ex.id]
        dropped = set()
        if held and self.rng.random() < 0.5:
            dropped = set(self.rng.sample(sorted(held, key=lambda r: (r.job_id, r.index)), 1))
            held -= dropped
        reported = set(held)
        bogus = None
        if self.rng.random() < 0.5 and self.core.jobs:
            job = self.core.jobs[self.rng.choice(sorted(self.core.jobs))]
            bogus = TaskRef(job.id, self.rng.randrange(len(job.tasks)), 99)
            reported.add(bogus)
        kept = {t.ref() for t in ex.running} & reported
        never_started = {r for r in dropped if self.core.jobs[r.job_id].tasks[r.index].state == ASSIGNED}
        self.links.add(ex.id)
        self.core.attach_executor(slot(ex.id, ex.slots, ex.kinds), reported)
        out = self.deliver()
        new = self.core.executors[ex.id]
        for ref in kept:
            task = self.core.jobs[ref.job_id].tasks[ref.index]
            assert task.state == RUNNING and task.attempt == ref.attempt and task in new.running
        for ref in dropped:
            task = self.core.jobs[ref.job_id].tasks[ref.index]
            if ref in never_started:  # its dispatch was lost: sent again, same attempt
                assert task.state == ASSIGNED and task.attempt == ref.attempt and ref in self.held[ex.id]
                self.seen["resent"] += 1
            else:
                assert task.state not in ACTIVE or task.attempt == ref.attempt + 1, "a dropped task was kept"
            self.seen["dropped"] += 1
        cancelled = {r for c in out if isinstance(c, CancelTasks) and c.executor == ex.id for r in c.refs}
        assert cancelled == reported - kept
        if bogus is not None:
            assert bogus in cancelled
        self.seen["reattach"] += 1

    def report(self, state: str) -> None:
        busy = [ex_id for ex_id in sorted(self.links) if self.held[ex_id]]
        if not busy:
            return
        ex_id = self.rng.choice(busy)
        held = sorted(self.held[ex_id], key=lambda r: (r.job_id, r.index))
        refs = self.rng.sample(held, 2 if len(held) > 1 and self.rng.random() < 0.3 else 1)
        stale = self.core.stats.stale_reports
        reports = []
        for ref in refs:
            st = state if state != "mixed" else self.rng.choice([RUNNING, SUCCEEDED, FAILED])
            result = {"exit_code": 0 if st == SUCCEEDED else 1, "n": self.rng.random()}
            reports.append(Report(ref, st, None if st == RUNNING else result))
            if st != RUNNING:
                self.held[ex_id].discard(ref)
        self.expect_ack = (ex_id, refs)
        self.core.report(ex_id, reports)
        assert self.core.stats.stale_reports == stale, "a current attempt's report was called stale"
        for rep in reports:
            task = self.core.jobs[rep.ref.job_id].tasks[rep.ref.index]
            if rep.state == RUNNING:
                assert task.state == RUNNING
                continue
            assert task.result == rep.result
            if rep.state == SUCCEEDED:
                assert task.state == SUCCEEDED
            elif task.state != FAILED:
                assert task.state == PENDING and task.failures < task.max_attempts
                assert task.ready_at == self.now[0] + retry_delay(task.failures)
            else:
                assert task.failures == task.max_attempts

    def stale_report(self) -> None:
        tasks = [t for j in self.core.jobs.values() for t in j.tasks if t.attempt > 0]
        if not tasks:
            return
        t = self.rng.choice(tasks)
        if t.state in TERMINAL:
            ref, sender = t.ref(), t.executor
        elif self.rng.random() < 0.5 or t.attempt == 1:
            ref, sender = TaskRef(t.job.id, t.index, t.attempt + 1), t.executor
        else:
            ref, sender = TaskRef(t.job.id, t.index, t.attempt - 1), t.executor + "-old"
        before = [(x.state, x.attempt, x.executor) for x in t.job.tasks]
        stale = self.core.stats.stale_reports
        self.expect_ack = (sender, [ref])
        self.core.report(sender, [Report(ref, self.rng.choice([RUNNING, SUCCEEDED, FAILED]))])
        assert self.core.stats.stale_reports == stale + 1
        assert [(x.state, x.attempt, x.executor) for x in t.job.tasks] == before
        out = self.deliver()
        assert out == [Ack(sender, [ref])]
        self.seen["stale"] += 1

    def detach(self) -> None:
        if self.links:
            ex_id = self.rng.choice(sorted(self.links))
            self.links.discard(ex_id)
            self.core.executor_detached(ex_id)

    def lose(self) -> None:
        if not self.core.executors:
            return
        ex_id = self.rng.choice(sorted(self.core.executors))
        on_it = list(self.core.executors[ex_id].running)
        attempts = {t.id: t.attempt for t in on_it}
        self.core.executor_lost(ex_id)
        self.links.discard(ex_id)
        self.held[ex_id] = set()  # fenced out: it stops everything it ran
        assert ex_id not in self.core.executors
        for t in on_it:
            if t.state == FAILED:
                assert t.lost == lost_limit(t.max_attempts)
            else:
                assert t.state in (PENDING, ASSIGNED) and t.ready_at == 0.0
                assert t.attempt in (attempts[t.id], attempts[t.id] + 1)
                assert t.state == PENDING or t.executor != ex_id
        self.seen["lost"] += 1

    def cancel(self) -> None:
        if not self.core.jobs:
            return
        job = self.core.jobs[self.rng.choice(sorted(self.core.jobs))]
        was_ended = job.state is not None
        expected: dict[str, list[TaskRef]] = {}
        for t in job.tasks:
            if t.state in ACTIVE:
                expected.setdefault(t.executor, []).append(t.ref())
        assert self.core.cancel_job(job.id) is job
        out = self.deliver()
        assert {c.executor: c.refs for c in out if isinstance(c, CancelTasks)} == expected
        if not was_ended:
            assert job.state == CANCELLED and all(t.state in TERMINAL for t in job.tasks)
            self.seen["cancelled"] += 1

    def tick(self) -> None:
        self.now[0] += self.rng.choice([0.1, 0.3, 0.6, 1.5, 4.0])
        if self.rng.random() < 0.8:
            wake = self.core.tick()
            self.last_tick = self.now[0]
            waiting = [
                t.ready_at
                for j in self.core.jobs.values()
                for t in j.tasks
                if t.state == PENDING and j.state is None and t.ready_at > self.now[0]
            ]
            if waiting:
                assert wake is not None and self.now[0] < wake <= min(waiting)
            else:
                assert wake is None or wake > self.now[0]

    def failover(self) -> None:
        """A new leader rebuilds from what was written, then the attached executors re-attach.

        Sometimes an executor's lease expired during the change: the new leader does not
        know it, so its tasks are requeued by ``adopt_running``.
        """
        old = self.core
        gone = None
        if old.executors and self.rng.random() < 0.4:
            gone = self.rng.choice(sorted(old.executors))
            self.held[gone] = set()
        new = self._new_core()
        for ex_id, ex in old.executors.items():
            if ex_id != gone:
                new.executors[ex_id] = slot(ex_id, ex.slots, ex.kinds)
                new.executors[ex_id].drain_requested = ex.drain_requested  # kept with its record
        for job_id, (spec, seq, created) in sorted(self.specs.items(), key=lambda kv: kv[1][1]):
            job = Job(job_id, spec, seq, created)
            job.state = self.job_records[job_id]["state"]
            job.cancelled = job.state == CANCELLED
            for index in range(len(job.tasks)):
                rec = self.records.get(f"{job_id}/{index}")
                if rec is not None:
                    restore_task(job, index, rec)
            new.add_job(job)
        self.core, self.links, self.writes = new, set(), Counter()
        new.adopt_running()
        out = self.deliver()
        assert not any(isinstance(d, Dispatch) for d in out), "no executor is attached yet"
        for job_id, job in new.jobs.items():
            before = old.jobs[job_id]
            for t, b in zip(job.tasks, before.tasks, strict=True):
                if b.state in ACTIVE and b.executor == gone:
                    assert (t.state, t.attempt, t.failures, t.lost) == (
                        (FAILED if b.lost + 1 == lost_limit(b.max_attempts) else PENDING),
                        b.attempt,
                        b.failures,
                        b.lost + 1,
                    )
                    continue
                assert (t.state, t.attempt) == ((ASSIGNED if b.state == RUNNING else b.state), b.attempt)
                assert (t.failures, t.lost) == (b.failures, b.lost)
                if t.state in ACTIVE:
                    assert t.executor == b.executor
                if t.state in TERMINAL:
                    assert t.result == b.result
            assert job.state == before.state or (before.state is None and job.state == FAILED and gone)
        for ex_id, ex in old.executors.items():
            if ex.connected and ex_id != gone:
                self.links.add(ex_id)
                new.attach_executor(slot(ex_id, ex.slots, ex.kinds), set(self.held[ex_id]))
                self.deliver()
                self.check()
        self.last_tick = self.now[0]  # retries waiting out a backoff are queued at once
        self.seen["failover"] += 1

    def finish(self) -> None:
        """Lose the detached executors, attach a wide one and succeed everything until all jobs end."""
        for ex_id in [e.id for e in self.core.executors.values() if not e.connected]:
            self.core.executor_lost(ex_id)
            self.held[ex_id] = set()
        self.held["final"] = set()
        self.links.add("final")
        self.core.attach_executor(slot("final", 50, KINDS))
        self.deliver()
        self.check()
        for _ in range(100):
            if all(j.state is not None for j in self.core.jobs.values()):
                return
            self.now[0] += RETRY_CAP
            self.core.tick()
            self.last_tick = self.now[0]
            self.deliver()
            self.check()
            for ex_id in [e for e in sorted(self.links) if self.held[e]]:
                refs = sorted(self.held[ex_id], key=lambda r: (r.job_id, r.index))
                self.expect_ack = (ex_id, refs)
                self.core.report(ex_id, [Report(r, SUCCEEDED, {"exit_code": 0}) for r in refs])
                self.held[ex_id] = set()
                self.deliver()
                self.check()
        pytest.fail("jobs never ended")

    STEPS = (
        ("add_job", 12),
        ("attach_new", 6),
        ("reattach", 3),
        ("report_ok", 18),
        ("report_fail", 12),
        ("report_running", 4),
        ("report_mixed", 4),
        ("stale_report", 5),
        ("detach", 3),
        ("lose", 4),
        ("cancel", 3),
        ("tick", 14),
        ("failover", 1),
        ("credit", 4),
        ("drain", 2),
        ("undrain", 2),
        ("hand_back", 3),
        ("executor_leaves", 1),
    )

    def drain(self) -> None:
        """An operator drains an executor: no placement reaches it until it is undrained."""
        if self.core.executors:
            ex_id = self.rng.choice(sorted(self.core.executors))
            assert self.core.request_drain(ex_id, True, self.rng.choice([None, 5.0]))
            self.seen["drain"] += 1

    def undrain(self) -> None:
        drained = sorted(e.id for e in self.core.executors.values() if e.drain_requested)
        if drained:
            self.core.request_drain(self.rng.choice(drained), False)

    def executor_leaves(self) -> None:
        """An executor says it is shutting down (it drains), or no longer is (a test's liberty)."""
        if self.links:
            ex_id = self.rng.choice(sorted(self.links))
            self.core.set_leaving(ex_id, not self.core.executors[ex_id].leaving)

    def hand_back(self) -> None:
        """A draining executor gives back attempts it will not run (queued, or past its drain timeout)."""
        busy = [e for e in sorted(self.links) if self.held[e] and self.core.executors[e].draining]
        if not busy:
            return
        ex_id = self.rng.choice(busy)
        ref = self.rng.choice(sorted(self.held[ex_id], key=lambda r: (r.job_id, r.index)))
        self.held[ex_id].discard(ref)
        task = self.core.jobs[ref.job_id].tasks[ref.index]
        lost, failures = task.lost, task.failures
        self.expect_ack = (ex_id, [ref])
        self.core.report(ex_id, [Report(ref, HANDED_BACK)])
        assert (task.lost, task.failures) == (lost + 1, failures)
        if task.state == FAILED:
            assert task.lost == lost_limit(task.max_attempts)
        else:
            assert task.ready_at == 0.0 and (task.state == PENDING or task.executor != ex_id)
        self.seen["handed-back"] += 1

    def credit(self) -> None:
        """An executor asks for another flow-control credit."""
        if self.links:
            ex_id, credit = self.rng.choice(sorted(self.links)), self.rng.choice([0, 0, 1, 3])
            self.most_credit[ex_id] = max(credit, self.most_credit.get(ex_id, 0))
            self.core.set_credit(ex_id, credit)

    def step(self) -> None:
        name = self.rng.choices([s for s, _ in self.STEPS], weights=[w for _, w in self.STEPS])[0]
        if name.startswith("report_"):
            state = {"ok": SUCCEEDED, "fail": FAILED, "running": RUNNING, "mixed": "mixed"}[name[7:]]
            self.report(state)
        else:
            getattr(self, name)()
        self.deliver()
        self.check()


SEEDS = range(8)


@functools.cache
def random_run(seed: int) -> Sim:
    """400 random events (checked after each one); cached so the coverage test reuses the runs."""
    sim = Sim(seed)
    for _ in range(400):
        sim.step()
    return sim


@pytest.mark.parametrize("seed", SEEDS)
def test_randomized_events_keep_the_invariants(seed: int) -> None:
    sim = random_run(seed)
    sim.finish()
    tasks = [t for j in sim.core.jobs.values() for t in j.tasks]
    assert all(t.state in TERMINAL for t in tasks)
    assert sorted(sim.final) == sorted(t.id for t in tasks)
    assert all(n == 1 for n in sim.ended.values()) and set(sim.ended) == set(sim.core.jobs)
    # The run exercised what it claims to.
    for what in ("dispatch", "terminal-SUCCEEDED", "terminal-FAILED", "lost", "stale", "job-SUCCEEDED"):
        assert sim.seen[what] > 0, (what, sim.seen)


def test_randomized_runs_cover_every_event() -> None:
    seen: Counter[str] = Counter()
    for seed in SEEDS:
        seen += random_run(seed).seen
    for what in (
        "reattach",
        "drain",
        "handed-back",
        "dropped",
        "resent",
        "failover",
        "cancelled",
        "cancel",
        "job-FAILED",
        "job-CANCELLED",
    ):
        assert seen[what] > 0, (what, seen)


# -- latency observations (the leader's wait and run histograms) ----------------------


def test_wait_and_run_times_are_observed_per_attempt_on_the_cores_clock() -> None:
    seen: list[tuple[str, float]] = []
    h = Harness()
    h.core = Core(
        clock=lambda: h.now[0],
        observe_wait=lambda s: seen.append(("wait", s)),
        observe_run=lambda s: seen.append(("run", s)),
    )
    job = h.add_job("j", tmpl(max_attempts=2))
    h.now[0] += 2.0
    h.attach("a")
    assert seen == [("wait", 2.0)]
    h.now[0] += 0.5
    h.report("a", job.tasks[0].ref(), FAILED, {"error": "boom"})
    assert seen[-1] == ("run", 0.5)
    h.now[0] += 10.0  # past the retry backoff
    h.core.tick()
    assert seen[-1] == ("wait", 10.0)
    h.now[0] += 0.25
    h.report("a", job.tasks[0].ref(), SUCCEEDED, {})
    assert seen == [("wait", 2.0), ("run", 0.5), ("wait", 10.0), ("run", 0.25)]
    assert h.core.stats.requeued == 1 and h.core.stats.requeued_lost == 0


def test_an_attempt_lost_with_its_executor_counts_as_lost_not_failed() -> None:
    h = Harness()
    h.attach("a")
    h.add_job("j", tmpl())
    h.core.executor_lost("a")
    assert (h.core.stats.requeued, h.core.stats.requeued_lost) == (1, 1)


def test_credit_is_used_once_a_template_is_known_short_and_a_lower_credit_sends_no_more() -> None:
    h = Harness()
    h.attach("ex1", slots=1)
    h.core.set_credit("ex1", 3)
    h.add_job("j", tmpl(count=12))
    assert len(dispatched(h.drain())["ex1"]) == 1  # tasks of unknown length take slots only
    h.now[0] += SHORT_RUN + 1
    h.report("ex1", TaskRef("j", 0, 1), SUCCEEDED)
    assert dispatched(h.drain()) == {"ex1": [("j/1", 1)]}  # that one was long: still slots only
    h.report("ex1", TaskRef("j", 1, 1), SUCCEEDED)
    assert len(dispatched(h.drain())["ex1"]) == 4  # short: a slot and the credit
    h.core.set_credit("ex1", 0)
    for i in range(2, 5):  # four held, a credit of 0: the next three results place nothing
        h.report("ex1", TaskRef("j", i, 1), SUCCEEDED)
        assert dispatched(h.drain()) == {}
    h.report("ex1", TaskRef("j", 5, 1), SUCCEEDED)
    assert dispatched(h.drain()) == {"ex1": [("j/6", 1)]}
    h.core.set_credit("ex1", 10**9)
    assert h.core.executors["ex1"].prefetch == 4096  # an executor cannot ask for unbounded work


def test_an_urgent_task_overtakes_less_urgent_work_queued_on_a_busy_executor() -> None:
    h = Harness()
    h.attach("ex1", slots=1)
    h.core.set_credit("ex1", 4)
    h.add_job("low", tmpl(count=21), priority=10)
    h.drain()
    h.report("ex1", TaskRef("low", 0, 1), SUCCEEDED)
    assert len(dispatched(h.drain())["ex1"]) == 5  # one running, four queued: no credit left
    h.add_job("high", tmpl(count=3), priority=90)
    # Sent although the credit is spent: the executor's gate starts them before the queued ones.
    assert dispatched(h.drain()) == {"ex1": [("high/0", 1), ("high/1", 1), ("high/2", 1)]}
    h.add_job("same", tmpl(count=1), priority=10)
    assert dispatched(h.drain()) == {}  # as urgent as the queue: it waits at the leader


def test_overtaking_is_bounded_and_needs_a_queue() -> None:
    h = Harness()
    h.attach("ex1", slots=2)
    h.add_job("low", tmpl(count=2), priority=10)
    h.drain()
    h.add_job("high", tmpl(count=1), priority=90)
    assert dispatched(h.drain()) == {}  # nothing queued to overtake: it waits for a free slot
    h.core.set_credit("ex1", 1)
    h.core.jobs["high"].short[0] = True
    h.add_job("low2", tmpl(count=5), priority=10)
    assert dispatched(h.drain()) == {"ex1": [("high/0", 1)]}  # the credit goes to the urgent one
    h.add_job("urgent", tmpl(count=50), priority=99)
    sent = dispatched(h.drain())["ex1"]
    assert len(sent) == 3  # held: 3, bound 2 x (2 slots + 1 credit) = 6
    assert len(h.core.executors["ex1"].running) == 6


def test_a_task_queued_with_its_job_waits_out_its_backoff_after_a_failure() -> None:
    """A rebuilt job's tasks are queued as a run; one of them placed before the run reaches it and
    failed must still wait for its backoff, not be handed out by the run."""
    h = Harness()
    h.core.executors["ex1"] = slot("ex1", slots=1)
    job = h.new_job("j", tmpl(count=3))
    restore_task(job, 1, {"s": ASSIGNED, "a": 1, "e": "ex1"})
    h.core.add_job(job)
    h.core.adopt_running()
    h.attach("ex1", slots=1, reported=[TaskRef("j", 1, 1)])
    h.drain()
    h.report("ex1", TaskRef("j", 1, 1), FAILED)  # in backoff now; the run places j/0 instead
    assert dispatched(h.drain()) == {"ex1": [("j/0", 1)]}
    h.report("ex1", TaskRef("j", 0, 1), SUCCEEDED)
    assert dispatched(h.drain()) == {"ex1": [("j/2", 1)]}  # j/1 is still in its backoff
    h.report("ex1", TaskRef("j", 2, 1), SUCCEEDED)
    assert dispatched(h.drain()) == {}
    h.now[0] += RETRY_BASE
    h.core.tick()
    assert dispatched(h.drain()) == {"ex1": [("j/1", 2)]}


def test_a_rebuilt_task_placed_before_and_pending_again_is_placed_once() -> None:
    h = Harness()
    job = h.new_job("j", tmpl(count=3))
    restore_task(job, 0, {"s": PENDING, "a": 2, "e": "gone", "r": {"error": "lost"}})
    h.core.add_job(job)
    h.attach("ex1", slots=4)
    assert dispatched(h.drain()) == {"ex1": [("j/0", 3), ("j/1", 1), ("j/2", 1)]}


# -- retention (issue 12) ---------------------------------------------------------------------


def _retention_harness(retention: float = 60.0) -> Harness:
    h = Harness()
    h.core.wall = lambda: h.now[0]
    h.core.retention = retention
    h.attach("a")
    return h


def _run_to_end(h: Harness, job: Job) -> None:
    h.drain()
    for t in job.tasks:
        h.report("a", t.ref(), SUCCEEDED, {})
    for d in only(h.drain(), JobEnded):
        h.core.end_committed(d.job)  # as the leader does once the end is in etcd
    assert job.state == SUCCEEDED


def test_an_ended_job_is_deleted_once_its_retention_passes() -> None:
    h = _retention_harness(60.0)
    job = h.add_job("j")
    _run_to_end(h, job)
    assert job.record()["ended"] == h.now[0]
    h.now[0] += 59.9
    h.core.tick()
    assert only(h.drain(), DeleteJob) == [] and "j" in h.core.jobs
    h.now[0] += 0.1
    h.core.tick()
    assert h.core.expired["j"] == (job.ended, 60.0, job.seq)  # known as expired before the delete commits
    assert only(h.drain(), DeleteJob) == [DeleteJob(job)]
    assert "j" not in h.core.jobs and h.core.pending_count() == 0
    h.core.tick()
    assert only(h.drain(), DeleteJob) == []  # once


def test_a_jobs_own_retention_overrides_the_masters() -> None:
    h = _retention_harness(60.0)
    short = h.new_job("short")
    short.spec.retention = 5.0
    h.core.add_job(short)
    _run_to_end(h, short)
    long_ = h.add_job("long")
    _run_to_end(h, long_)
    h.now[0] += 5
    h.core.tick()
    assert only(h.drain(), DeleteJob) == [DeleteJob(short)] and "long" in h.core.jobs


def test_expiry_is_batched_and_running_jobs_never_expire() -> None:
    h = _retention_harness(10.0)
    ended = [h.add_job(f"e{i}") for i in range(3)]
    for job in ended:
        _run_to_end(h, job)
    running = h.add_job("r", tmpl(count=5))
    h.drain()
    h.now[0] += 1000
    assert h.core.expire(limit=2) == 2
    assert h.core.expire(limit=2) == 1
    assert h.core.expire(limit=2) == 0
    assert set(h.core.jobs) == {"r"} and running.state is None


def test_a_rebuilt_ended_job_keeps_its_end_time_or_counts_from_the_rebuild() -> None:
    h = _retention_harness(100.0)
    old = h.new_job("old")
    restore_task(old, 0, {"s": SUCCEEDED, "a": 1, "e": "a"})
    old.state, old.ended = SUCCEEDED, h.now[0] - 150
    legacy = h.new_job("legacy")  # ended before end times were stored
    restore_task(legacy, 0, {"s": SUCCEEDED, "a": 1, "e": "a"})
    legacy.state = SUCCEEDED
    h.core.add_job(old)
    h.core.add_job(legacy)
    h.core.tick()
    assert [d.job.id for d in only(h.drain(), DeleteJob)] == ["old"]
    assert legacy.ended == h.now[0]


def test_the_expired_ids_remembered_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(core_module, "REMEMBER_EXPIRED", 2)
    h = _retention_harness(10.0)
    for i in range(3):
        _run_to_end(h, h.add_job(f"e{i}"))
    h.now[0] += 100
    assert h.core.expire() == 3
    assert list(h.core.expired) == ["e1", "e2"]


# -- draining (issue 12) -----------------------------------------------------------------------


def test_a_drained_executor_gets_no_work_and_undrained_gets_it_again() -> None:
    h = Harness()
    a = h.attach("a", slots=2)
    assert h.core.request_drain("a", True, 5.0)
    assert not h.core.request_drain("nobody", True)
    assert a.draining and a.drain_timeout == 5.0 and a.free == 0 and a.free_slots == 0
    job = h.add_job("j", tmpl(count=2))
    assert dispatched(h.drain()) == {}
    h.core.request_drain("a", False)
    assert dispatched(h.drain()) == {"a": [("j/0", 1), ("j/1", 1)]}
    assert a.drain_timeout is None
    assert_counts(job)


def test_an_executor_shutting_down_gets_no_work() -> None:
    h = Harness()
    h.attach("a", slots=1)
    h.attach("b", slots=1)
    h.core.set_leaving("a", True)
    h.add_job("j", tmpl(count=2))
    assert dispatched(h.drain()) == {"b": [("j/0", 1)]}
    h.core.set_leaving("a", False)
    assert dispatched(h.drain()) == {"a": [("j/1", 1)]}


def test_a_handed_back_attempt_runs_again_at_once_without_counting_as_failed() -> None:
    h = Harness()
    h.attach("a", slots=2)
    h.attach("b", slots=2)
    job = h.add_job("j", max_attempts=1)
    task = job.tasks[0]
    h.drain()
    first = task.executor
    other = "b" if first == "a" else "a"
    h.core.request_drain(first, True)
    h.report(first, task.ref(), HANDED_BACK)
    out = h.drain()
    assert dispatched(out) == {other: [("j/0", 2)]}
    assert [(a.executor, a.refs) for a in only(out, Ack)] == [(first, [TaskRef("j", 0, 1)])]
    assert (task.failures, task.lost) == (0, 1)
    assert task.result == {"error": f"executor {first} handed it back (draining)"}
    h.report(other, task.ref(), SUCCEEDED, {})
    assert task.state == SUCCEEDED and job.state == SUCCEEDED


def test_nothing_overtakes_onto_a_draining_executor() -> None:
    h = Harness()
    h.attach("a", slots=1)
    h.core.set_credit("a", 1)
    low = h.new_job("low", tmpl(count=2), priority="low")
    low.short[0] = True  # known short: it may use the credit
    h.core.add_job(low)
    assert dispatched(h.drain()) == {"a": [("low/0", 1), ("low/1", 1)]}
    h.core.set_leaving("a", True)
    h.add_job("urgent", priority="high")
    assert dispatched(h.drain()) == {}
    h.core.set_leaving("a", False)
    assert dispatched(h.drain()) == {"a": [("urgent/0", 1)]}  # overtakes the queued low/1


def test_a_drain_survives_a_re_attach() -> None:
    h = Harness()
    h.attach("a", slots=1)
    h.core.request_drain("a", True, 7.0)
    h.core.executor_detached("a")
    again = h.attach("a", slots=1)
    assert again.drain_requested and again.drain_timeout == 7.0 and again.draining
    h.add_job("j")
    assert dispatched(h.drain()) == {}


# -- paging and the hot structures (issue 12) -------------------------------------------------


def test_jobs_are_walked_newest_first_from_any_point_whatever_order_they_were_added() -> None:
    h = Harness()
    for seq in (5, 2, 9, 7):  # a rebuild adds jobs in key order, not in submission order
        h.add_job(f"s{seq}", seq=seq)
    assert [j.id for j in h.core.newest()] == ["s9", "s7", "s5", "s2"]
    assert [j.id for j in h.core.newest(before=(7, "s7"))] == ["s5", "s2"]
    assert [j.id for j in h.core.newest(before=(2, "s2"))] == []


def test_jobs_sharing_a_seq_are_all_held_and_expire_without_error() -> None:
    """Records written in one transaction share a create revision, which a rebuild uses as seq."""
    h = _retention_harness(10.0)
    jobs = [h.new_job(f"t{i}", seq=4) for i in range(3)]
    for job in jobs:
        restore_task(job, 0, {"s": SUCCEEDED, "a": 1, "e": "a"})
        job.state, job.ended = SUCCEEDED, h.now[0]
        h.core.add_job(job)
    assert [j.id for j in h.core.newest()] == ["t2", "t1", "t0"]
    assert [j.id for j in h.core.newest(before=(4, "t1"))] == ["t0"]
    h.now[0] += 100
    assert h.core.expire() == 3 and not h.core.jobs


def test_ended_jobs_leave_the_active_set_and_the_figures_stay_true_through_expiry() -> None:
    h = _retention_harness(10.0)
    done = h.add_job("done", tmpl(count=2))
    _run_to_end(h, done)
    running = h.add_job("running", tmpl(count=3))
    h.drain()
    assert set(h.core.active) == {"running"} and running.state is None
    s = h.core.summary()
    assert s.jobs == Counter({SUCCEEDED: 1, RUNNING: 1})
    assert s.tasks[SUCCEEDED] == 2 and sum(s.tasks.values()) == 5
    h.now[0] += 100
    h.core.tick()
    assert [j.id for j in h.core.newest()] == ["running"]
    s = h.core.summary()
    assert s.jobs == Counter({RUNNING: 1}) and sum(s.tasks.values()) == 3


def test_an_ended_jobs_record_carries_its_summary_and_reads_back() -> None:
    h = _retention_harness(60.0)
    job = h.add_job("j", tmpl(count=2), priority=70)
    _run_to_end(h, job)
    rec = job.record()
    assert rec["name"] == job.spec.name and rec["priority"] == 70 and rec["counts"] == {SUCCEEDED: 2}
    back = EndedJob.from_record("j", job.seq, json.loads(json.dumps(rec)))
    assert back is not None
    assert (back.state, back.ended, back.counts, back.retention) == (SUCCEEDED, job.ended, job.counts, None)
    assert EndedJob.from_record("r", 1, {"id": "r", "created": 1.0, "state": None}) is None  # running
    assert EndedJob.from_record("old", 1, {"id": "old", "created": 1.0, "state": SUCCEEDED}) is None  # legacy


def test_older_ended_jobs_are_held_as_summaries_and_still_expire() -> None:
    h = _retention_harness(60.0)
    h.core.keep_detail = 1
    first = h.add_job("first", tmpl(count=3))
    _run_to_end(h, first)
    second = h.add_job("second")
    _run_to_end(h, second)
    h.core.tick()
    held = h.core.jobs["first"]
    assert isinstance(held, EndedJob) and held.counts == Counter({SUCCEEDED: 3})
    assert h.core.jobs["second"] is second  # the most recent keeps its tasks
    assert [j.id for j in h.core.newest()] == ["second", "first"] and h.core.newest().__next__() is second
    assert h.core.summary().tasks[SUCCEEDED] == 4
    assert h.core.cancel_job("first") is held  # an ended job is left as it is
    h.now[0] += 60
    h.core.tick()
    assert {d.job.id for d in only(h.drain(), DeleteJob)} == {"first", "second"}
    assert not h.core.jobs and sum(h.core.summary().tasks.values()) == 0


def test_a_job_that_expires_before_older_detailed_ones_lets_its_tasks_go_at_once() -> None:
    """Jobs of a shorter retention expire before jobs ended earlier: each drops its tasks when it
    expires, not when every job before it has left the most recent."""
    h = _retention_harness(600.0)
    long_ = h.add_job("long", tmpl(count=2))
    _run_to_end(h, long_)
    short = h.new_job("short", tmpl(count=3))
    short.spec.retention = 5.0
    h.core.add_job(short)
    _run_to_end(h, short)
    h.now[0] += 5
    h.core.tick()
    assert [d.job.id for d in only(h.drain(), DeleteJob)] == ["short"]
    assert short.tasks == [] and h.core._detailed_tasks == 2
    assert h.core.jobs["long"] is long_ and len(long_.tasks) == 2
    h.now[0] += 600
    h.core.tick()
    assert [d.job.id for d in only(h.drain(), DeleteJob)] == ["long"]
    assert long_.tasks == [] and h.core._detailed_tasks == 0 and not h.core._detailed


def test_a_job_that_expires_before_its_end_is_committed_keeps_its_tasks_for_its_waiters() -> None:
    h = _retention_harness(1.0)
    job = h.add_job("j", tmpl(count=2))
    h.drain()
    for t in job.tasks:
        h.report("a", t.ref(), SUCCEEDED, {})
    ended = only(h.drain(), JobEnded)
    h.now[0] += 1
    h.core.tick()
    assert [d.job.id for d in only(h.drain(), DeleteJob)] == ["j"]
    assert len(job.tasks) == 2, "the end's waiters are answered from them once it commits"
    for d in ended:
        h.core.end_committed(d.job)
    assert h.core._detailed_tasks == 0 and not h.core._detailed, "an expired job is not kept in detail"


def test_a_big_job_let_go_of_frees_its_tasks_a_step_a_tick(monkeypatch) -> None:
    """Freeing a 200,000-task job at once holds the leader's loop; a step a tick does not."""
    monkeypatch.setattr(core_module, "FREE_STEP", 2)
    h = _retention_harness(600.0)
    h.core.keep_detail = 0
    big = h.add_job("big", tmpl(count=5))
    _run_to_end(h, big)
    small = h.add_job("small", tmpl(count=2))
    _run_to_end(h, small)
    h.core.tick()
    assert isinstance(h.core.jobs["big"], EndedJob) and isinstance(h.core.jobs["small"], EndedJob)
    assert small.tasks == [], "a small job's tasks go at once"
    sizes = [len(big.tasks)]
    while big.tasks:
        h.core.tick()
        sizes.append(len(big.tasks))
    assert sizes == [3, 1, 0] and not h.core._freeing and h.core._detailed_tasks == 0


def test_the_leader_may_hold_an_ended_job_as_a_summary_before_its_turn() -> None:
    h = _retention_harness(600.0)
    ended = h.add_job("ended", tmpl(count=3))
    _run_to_end(h, ended)
    later = h.add_job("later")
    _run_to_end(h, later)
    running = h.add_job("running", tmpl(count=2))
    assert not h.core.summarize(running), "a running job keeps its tasks"
    assert h.core.summarize(ended) and isinstance(h.core.jobs["ended"], EndedJob) and ended.tasks == []
    assert not h.core.summarize(ended), "once"
    assert h.core._detailed_tasks == 1 and h.core.jobs["later"] is later
    h.core.tick()
    assert [j.id for j in h.core._detailed] == ["later"], "its place in the queue goes at its turn"
    h.now[0] += 600
    h.core.tick()
    assert {d.job.id for d in only(h.drain(), DeleteJob)} == {"ended", "later"}


def test_a_job_cancelled_while_queued_then_let_go_of_does_not_break_placement() -> None:
    """Its queue entry outlives it until an executor has room; by then its tasks may be gone."""
    h = Harness()
    h.core.wall = lambda: h.now[0]
    h.attach("a", slots=1)
    busy = h.add_job("busy")
    queued = h.add_job("queued", tmpl(count=3))
    assert dispatched(h.drain()) == {"a": [("busy/0", 1)]}
    h.core.cancel_job("queued")
    for d in only(h.drain(), JobEnded):
        h.core.end_committed(d.job)
    assert queued.state == CANCELLED and h.core.summarize(queued) and queued.tasks == []
    h.report("a", busy.tasks[0].ref(), SUCCEEDED, {})
    later = h.add_job("later")
    assert dispatched(h.drain()) == {"a": [("later/0", 1)]}
    assert later.tasks[0].state != PENDING


def test_big_ended_jobs_are_held_as_summaries_by_the_collector_and_freed_in_steps(monkeypatch) -> None:
    """The collector's let_go wired to the core, as the leader wires it (job_api.py)."""
    import gc

    from rota.scheduler import collector as collector_mod
    from rota.scheduler.collector import Collector

    monkeypatch.setattr(core_module, "FREE_STEP", 2)
    h = _retention_harness(3600.0)
    clock = [0.0]
    collector = Collector(big_job=3, clock=lambda: clock[0], let_go=h.core.summarize)
    try:
        big = h.add_job("big", tmpl(count=5))
        collector.started(big)
        assert "big" in collector.big and gc.get_freeze_count() > 0
        _run_to_end(h, big)
        h.core.tick()
        collector.settle()
        assert h.core.jobs["big"] is big, "the most recent ended job keeps its tasks a while"
        clock[0] += collector_mod.HELD_AFTER_END
        collector.settle()
        assert isinstance(h.core.jobs["big"], EndedJob) and gc.get_freeze_count() > 0
        while big.tasks:
            h.core.tick()
            collector.settle()
            assert gc.get_freeze_count() > 0 or not big.tasks
        collector.settle()
        assert gc.get_freeze_count() == 0 and not collector.big
    finally:
        collector.clear()
        gc.unfreeze()


def test_a_job_held_as_a_summary_is_freed_by_reference_counting_alone() -> None:
    """Its tasks and it refer to each other; with the cyclic collector kept off big jobs (gc.freeze),
    only dropping the tasks lets it go."""
    import gc

    from rota.scheduler.core import Task as CoreTask

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, (Job, CoreTask)) and o.id in ("big", "big/0"))

    h = _retention_harness(60.0)
    h.core.keep_detail = 0
    job = h.add_job("big", tmpl(count=3))
    _run_to_end(h, job)
    del job
    h.drain()
    gc.collect()
    gc.disable()
    try:
        assert alive() == 2
        h.core.tick()
        assert isinstance(h.core.jobs["big"], EndedJob)
        assert alive() == 0
    finally:
        gc.enable()


# -- the leader's own deadline on an assignment (issue 13) ---------------------------------------


def _timed(h: Harness, timeout: float = 10.0) -> Job:
    job = h.new_job("j", {**tmpl(), "timeout": f"{timeout:g}s"})
    h.core.add_job(job)
    return job


def test_an_attempt_past_its_timeout_plus_the_margin_is_taken_back_and_run_again() -> None:
    h = Harness()
    h.attach("ex1", slots=1)
    job = _timed(h)
    h.drain()
    h.now[0] += 5
    h.report("ex1", TaskRef("j", 0, 1), RUNNING)  # the deadline now counts from here
    h.drain()
    h.now[0] += 10 + DEADLINE_MARGIN - 0.1
    h.core.tick()
    assert h.drain() == [] and job.tasks[0].state == RUNNING
    h.now[0] += 0.2
    h.core.tick()
    out = h.drain()
    assert only(out, CancelTasks) == [CancelTasks("ex1", [TaskRef("j", 0, 1)])]
    task = job.tasks[0]
    assert task.state == PENDING and task.failures == 1 and "took it back" in task.result["error"]
    assert h.core.executors["ex1"].free == 1  # the slot is free again
    h.now[0] += RETRY_CAP
    h.core.tick()
    assert dispatched(h.drain()) == {"ex1": [("j/0", 2)]}


def test_an_attempt_that_ends_in_time_or_a_task_without_a_timeout_is_left_alone() -> None:
    h = Harness()
    h.attach("ex1", slots=2)
    timed = _timed(h)
    untimed = h.add_job("u", tmpl())
    h.drain()
    h.report("ex1", TaskRef("j", 0, 1), SUCCEEDED, {})
    h.drain()
    h.now[0] += 10_000
    h.core.tick()
    assert only(h.drain(), CancelTasks) == []
    assert timed.state == SUCCEEDED and untimed.tasks[0].state == ASSIGNED


def test_a_withdrawn_submission_leaves_no_decision_behind() -> None:
    """Placements made while the job's creation was on its way to etcd are not drained yet."""
    h = Harness()
    h.attach("ex1", slots=4)
    h.drain()
    job = h.add_job("b", tmpl(count=3))  # placed at once, its decisions still in the outbox
    h.core.withdraw_job("b")
    out = h.drain()
    assert [d for d in out if isinstance(d, PutTask) and d.task.job is job] == []
    assert dispatched(out) == {}
    assert "b" not in h.core.jobs and h.core.executors["ex1"].free == 4


def test_an_ended_job_is_held_whole_until_its_end_is_committed() -> None:
    h = _retention_harness(60.0)
    h.core.keep_detail = 0
    job = h.add_job("j")
    h.drain()
    h.report("a", job.tasks[0].ref(), SUCCEEDED, {})
    h.core.tick()
    assert h.core.jobs["j"] is job  # its end is not in etcd yet: get-job must not read etcd
    h.core.end_committed(job)
    h.core.tick()
    assert isinstance(h.core.jobs["j"], EndedJob)

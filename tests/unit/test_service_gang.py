"""Service tasks (restarted within a budget) and gang placement (all at once or not at all) in the
scheduling core, and their job-file keys. Pure logic driven by a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from test_core import Harness, dispatched, only, states, tmpl

from rota.common.jobspec import JobSpec, JobSpecError
from rota.common.states import ASSIGNED, CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED
from rota.scheduler.core import RETRY_CAP, CancelTasks, Job, lost_limit
from rota.scheduler.restarts import Budget, format_window
from rota.scheduler.views import job_doc, job_page_doc, task_doc


def service(name: str = "svc", kind: str = "noop", **keys: Any) -> dict[str, Any]:
    return {**tmpl(name, kind), "service": True, **keys}


def fail_current(h: Harness, job: Job, index: int = 0, code: int = 1) -> None:
    task = job.tasks[index]
    h.report(task.executor, task.ref(), FAILED, {"exit_code": code})
    h.drain()


def place_again(h: Harness) -> None:
    h.now[0] += RETRY_CAP
    h.core.tick()
    h.drain()


# -- job file keys ------------------------------------------------------------------------


def parse(*tasks: dict[str, Any], **job: Any) -> JobSpec:
    return JobSpec.from_dict({"name": "j", **job, "task": list(tasks)})


def test_service_keys_parse_with_their_defaults_and_survive_storage() -> None:
    spec = parse(service(restarts=3, **{"restart-window": "10m"}), service("other"))
    a, b = spec.tasks
    assert (a.service, a.restarts, a.restart_window) == (True, 3, 600.0)
    assert (b.restarts, b.restart_window) == (10, 3600.0)
    assert JobSpec.from_stored(spec.to_dict()) == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("task", "key", "words"),
    [
        ({**tmpl(), "restarts": 3}, "task[0].restarts", "only for service tasks"),
        ({**tmpl(), "restart-window": "1h"}, "task[0].restart-window", "only for service tasks"),
        (service(restarts=1001), "task[0].restarts", "from 0 to 1000"),
        (service(restarts=-1), "task[0].restarts", "from 0 to 1000"),
        (service(**{"restart-window": "soon"}), "task[0].restart-window", "malformed duration"),
        ({**tmpl(), "service": "yes"}, "task[0].service", "true or false"),
        ({**tmpl(), "gang": "no spaces"}, "task[0].gang", "malformed group name"),
        ({**tmpl(), "gang": "x" * 65}, "task[0].gang", "malformed group name"),
        ({**tmpl(), "gang": True}, "task[0].gang", "expected a group name"),
    ],
)
def test_bad_service_and_gang_keys_are_errors_naming_the_key(
    task: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(JobSpecError) as e:
        parse(task)
    assert e.value.key == key and words in e.value.reason


def test_a_job_gang_and_task_gangs_are_one_or_the_other() -> None:
    with pytest.raises(JobSpecError) as e:
        parse(tmpl("a"), {**tmpl("b"), "gang": "g"}, gang=True)
    assert e.value.key == "task[1].gang" and "not both" in e.value.reason
    with pytest.raises(JobSpecError) as e:
        parse(tmpl(), gang="yes")
    assert e.value.key == "gang"
    spec = parse(tmpl("a"), tmpl("b"), gang=True)
    assert spec.gang and JobSpec.from_stored(spec.to_dict()) == spec


def test_the_budget_counts_within_its_window_only() -> None:
    b = Budget(restarts=2, lost_limit=1, span=60.0)
    assert b.failed(0.0) == "" and b.failed(1.0) == ""
    assert b.failed(2.0) == "restarted 2 times within 1m (restarts = 2): given up"
    b = Budget(restarts=2, lost_limit=1, span=60.0)
    for t in (0.0, 30.0, 61.0, 91.0, 122.0):  # never more than 2 within a minute
        assert b.failed(t) == ""
    assert len(b.failures.times) <= 3
    assert b.lost(200.0) == "" and "lost with its executor 2 times within 1m" in b.lost(201.0)
    assert [format_window(s) for s in (3600, 5400, 86400, 45, 1.5)] == ["1h", "90m", "1d", "45s", "1.5s"]


# -- service tasks in the core ------------------------------------------------------------


def test_a_service_task_is_restarted_within_its_budget_without_using_max_attempts() -> None:
    h = Harness()
    h.attach("a", slots=1)
    job = h.add_job("j", service(restarts=5), max_attempts=1)
    h.drain()
    for attempt in range(1, 6):
        assert job.tasks[0].attempt == attempt
        fail_current(h, job)
        assert job.tasks[0].state == PENDING and job.state is None
        place_again(h)
    doc = task_doc(job.tasks[0])
    assert doc["service"] is True and doc["restarts"] == 5
    h.report("a", job.tasks[0].ref(), SUCCEEDED, {"exit_code": 0})
    h.drain()
    assert job.state == SUCCEEDED


def test_a_service_task_gives_up_past_its_budget_naming_it() -> None:
    h = Harness()
    h.attach("a", slots=1)
    job = h.add_job("j", service(restarts=2))
    h.drain()
    fail_current(h, job)
    place_again(h)
    fail_current(h, job)
    place_again(h)
    fail_current(h, job, code=3)
    task = job.tasks[0]
    assert task.state == FAILED and job.state == FAILED
    assert task.result is not None
    assert task.result["error"] == "exited with code 3; restarted 2 times within 1h (restarts = 2): given up"
    assert task.result["exit_code"] == 3


def test_failures_older_than_the_window_no_longer_count() -> None:
    h = Harness()
    h.attach("a", slots=1)
    job = h.add_job("j", service(restarts=1, **{"restart-window": "1m"}))
    h.drain()
    for _ in range(5):  # one failure a minute and a half: never two within a minute
        fail_current(h, job)
        assert job.tasks[0].state == PENDING
        h.now[0] += 90
        h.core.tick()
        h.drain()
        assert job.tasks[0].state == ASSIGNED
    fail_current(h, job)
    h.now[0] += 1
    h.core.tick()
    h.drain()
    fail_current(h, job)  # the second within a minute: past restarts = 1
    assert job.tasks[0].state == FAILED


def test_a_lost_service_task_is_restarted_at_once_and_old_losses_expire() -> None:
    h = Harness()
    job = h.add_job("j", service(**{"restart-window": "1m"}), max_attempts=1)
    limit = lost_limit(1)
    for i in range(3 * limit):  # many more losses than the limit, spread out over time
        h.attach(f"e{i}", slots=1)
        h.drain()
        assert job.tasks[0].executor == f"e{i}"
        h.now[0] += 30
        h.core.executor_lost(f"e{i}")
        h.drain()
        assert job.tasks[0].state == PENDING and job.tasks[0].ready_at == 0.0  # at once, no backoff
    assert job.state is None and job.tasks[0].lost == 3 * limit
    for i in range(limit + 1):  # but limit + 1 within the window fail it
        h.attach(f"f{i}", slots=1)
        h.drain()
        h.core.executor_lost(f"f{i}")
        h.drain()
    assert job.tasks[0].state == FAILED and "within 1m" in (job.tasks[0].result or {})["error"]


def test_the_job_timeout_does_not_apply_to_service_tasks_but_their_own_does() -> None:
    h = Harness()
    h.attach("a", slots=2)
    spec = JobSpec.from_dict(
        {"name": "j", "timeout": "10s", "task": [service("s"), service("t", timeout="20s"), tmpl("plain")]}
    )
    job = Job("j", spec, 1, h.now[0])
    h.core.add_job(job)
    h.drain()
    assert [t.timeout for t in job.tasks] == [None, 20.0, 10.0]
    for t in job.tasks[:2]:
        h.report("a", t.ref(), RUNNING)
    h.drain()
    h.now[0] += 10_000
    h.core.tick()
    cancelled = [r.index for c in only(h.drain(), CancelTasks) for r in c.refs]
    assert cancelled == [1]  # the task with its own timeout; the other service runs on


def test_cancelling_a_job_ends_its_service_tasks() -> None:
    h = Harness()
    h.attach("a", slots=1)
    job = h.add_job("j", service())
    h.drain()
    h.core.cancel_job("j")
    assert job.state == CANCELLED and states(job) == [CANCELLED]


# -- gang placement -----------------------------------------------------------------------


def gang_harness() -> Harness:
    h = Harness()
    h.attach("a", slots=2, kinds=["noop", "sleep"])
    h.attach("b", slots=2, kinds=["noop", "sleep"])
    return h


def test_a_gang_that_does_not_fit_stays_pending_with_its_reason_while_a_smaller_job_runs() -> None:
    h = gang_harness()
    gang = h.add_job("g", {**tmpl("w", count=6), "gang": "pipeline"}, priority=90)
    small = h.add_job("s", tmpl(count=2), priority=10)
    out = h.drain()
    assert states(gang) == [PENDING] * 6
    assert sorted(t for ts in dispatched(out).values() for t, _ in ts) == ["s/0", "s/1"]
    reason = job_doc(gang)["pending_reason"]
    assert reason == (
        "gang 'pipeline' of 6 tasks needs 6 free slots for kind 'noop'; "
        "the cluster has 4 free on 2 executors (4 slots in all)"
    )
    assert "pending_reason" not in job_doc(small)
    # Still pending, not an error, even larger than the cluster.
    assert gang.state is None


def test_a_gang_is_placed_all_at_once_when_an_executor_joins_and_its_reason_clears() -> None:
    h = gang_harness()
    gang = h.add_job("g", {**tmpl("w", count=6), "gang": "pipeline"})
    h.drain()
    assert states(gang) == [PENDING] * 6
    h.attach("c", slots=2)
    out = dispatched(h.drain())
    assert states(gang) == [ASSIGNED] * 6
    assert {ex: len(ts) for ex, ts in out.items()} == {"a": 2, "b": 2, "c": 2}
    assert "pending_reason" not in job_doc(gang)


def test_only_free_slots_count_for_a_gang_not_an_executors_credit() -> None:
    h = Harness()
    h.attach("a", slots=2)
    h.core.set_credit("a", 10)
    gang = h.add_job("g", {**tmpl("w", count=3), "gang": "x"})
    h.drain()
    assert states(gang) == [PENDING] * 3
    assert "needs 3 free slots" in job_page_doc(gang, 0, 10)["pending_reason"]


def test_an_executor_over_its_slots_on_credit_takes_no_room_from_the_others() -> None:
    """Its free slots are below zero: it has no room, but the gang still fits on the others."""
    h = Harness()
    h.attach("a", slots=1)
    h.core.set_credit("a", 10)
    short = h.add_job("short", tmpl("s", count=4))
    short.short[0] = True  # known short: its tasks may queue on credit
    h.core._schedule()
    h.drain()
    assert h.core.executors["a"].free_slots < 0
    h.attach("b", slots=2)
    gang = h.add_job("g", {**tmpl("w", count=2), "gang": "x"})
    h.drain()
    assert states(gang) == [ASSIGNED] * 2
    assert {t.executor for t in gang.tasks} == {"b"}


def test_a_lost_member_is_placed_again_alone() -> None:
    h = gang_harness()
    h.attach("c", slots=2)
    gang = h.add_job("g", {**tmpl("w", count=6), "gang": "pipeline"})
    h.drain()
    on_c = [t.index for t in gang.tasks if t.executor == "c"]
    for t in gang.tasks:
        h.report(t.executor, t.ref(), RUNNING)
    h.drain()
    h.attach("d", slots=1)  # room for one of the two lost members only
    h.core.executor_lost("c")
    out = dispatched(h.drain())
    assert [len(v) for v in out.values()] == [1] and "d" in out
    assert sorted(t.state for t in gang.tasks) == [ASSIGNED] + [PENDING] + [RUNNING] * 4
    assert sorted(t.index for t in gang.tasks if t.state != RUNNING) == sorted(on_c)
    assert "pending_reason" not in job_doc(gang)


def test_a_gang_of_mixed_kinds_needs_room_for_each_kind() -> None:
    h = Harness()
    h.attach("n", slots=4, kinds=["noop"])
    h.attach("s", slots=1, kinds=["sleep", "noop"])
    gang = h.add_job(
        "g", {**tmpl("a", count=3), "gang": "mix"}, {**tmpl("b", "sleep", count=2), "gang": "mix"}
    )
    h.drain()
    assert states(gang) == [PENDING] * 5
    reason = job_doc(gang)["pending_reason"]
    assert reason == (
        "gang 'mix' of 5 tasks needs 3 free slots for kind 'noop' and 2 for kind 'sleep'; "
        "the cluster has 1 free for kind 'sleep' on 1 executor (1 slot in all)"
    )
    h.attach("s2", slots=1, kinds=["sleep"])
    h.drain()
    assert states(gang) == [ASSIGNED] * 5
    # The rare kind went first: noop members did not take the sleep executor's slot.
    assert sorted(t.executor for t in gang.tasks if t.spec.kind == "sleep") == ["s", "s2"]


def test_a_job_level_gang_and_separate_groups_of_one_job() -> None:
    h = gang_harness()
    spec = JobSpec.from_dict(
        {"name": "whole", "gang": True, "task": [tmpl("a", count=3), tmpl("b", count=2)]}
    )
    whole = Job("whole", spec, 1, h.now[0])
    h.core.add_job(whole)
    h.drain()
    assert states(whole) == [PENDING] * 5
    assert job_doc(whole)["pending_reason"].startswith("gang 'whole' of 5 tasks needs 5 free slots")
    h.core.cancel_job("whole")
    h.drain()
    groups = h.add_job(
        "groups", {**tmpl("a", count=3), "gang": "big"}, {**tmpl("b", count=1), "gang": "one"}, tmpl("c")
    )
    h.drain()
    # "big" fits (3 of 4 free slots) and goes first; then "one" needs 1 and gets the last slot.
    assert states(groups) == [ASSIGNED] * 4 + [PENDING]
    assert "pending_reason" not in job_doc(groups)


def test_a_blocked_gang_lets_later_groups_of_the_same_job_run() -> None:
    h = gang_harness()
    job = h.add_job("j", {**tmpl("a", count=5), "gang": "big"}, {**tmpl("b", count=2), "gang": "small"})
    h.drain()
    assert states(job) == [PENDING] * 5 + [ASSIGNED] * 2
    assert "gang 'big' of 5 tasks" in job_doc(job)["pending_reason"]


def test_a_rebuilt_gang_with_a_placed_member_counts_as_placed() -> None:
    h = gang_harness()
    job = h.new_job("j", {**tmpl("a", count=3), "gang": "g"})
    job.tasks[0].attempt = 1  # placed before the leader changed, pending again
    job.started = True
    h.core.add_job(job)
    h.drain()
    assert states(job) == [ASSIGNED] * 3


def test_a_gang_gets_its_reason_on_arrival_even_when_no_round_reaches_it() -> None:
    h = Harness()
    h.attach("a", slots=1)
    h.add_job("busy", tmpl())  # the only slot is taken: no placement round looks at the gang
    h.drain()
    full = h.add_job("g", {**tmpl("w", count=2), "gang": "pair"})
    nowhere = h.add_job("go", {**tmpl("w", "go"), "gang": "solo"})
    h.drain()
    assert job_doc(full)["pending_reason"] == (
        "gang 'pair' of 2 tasks needs 2 free slots for kind 'noop'; the cluster has 0 free on 1 executor "
        "(1 slot in all)"
    )
    assert job_doc(nowhere)["pending_reason"].endswith(
        "the cluster has 0 free on 0 executors (0 slots in all)"
    )


def test_a_gang_member_that_fails_for_good_cancels_the_rest_and_the_job_fails() -> None:
    """A pipeline whose member is gone for good would wait for it forever."""
    h = gang_harness()
    h.attach("c", slots=2)
    gang = h.add_job("g", {**tmpl("w", count=6), "gang": "pipeline"})
    h.drain()
    for t in gang.tasks:
        h.report(t.executor, t.ref(), RUNNING)
    h.drain()
    victim = gang.tasks[2]
    victim.failures = victim.max_attempts - 1
    h.report(victim.executor, victim.ref(), FAILED, {"error": "boom"})
    out = h.drain()
    assert victim.state == FAILED
    assert [t.state for t in gang.tasks if t is not victim] == [CANCELLED] * 5
    assert all("its gang 'pipeline'" in t.result["error"] for t in gang.tasks if t is not victim)
    cancelled = {r.index for d in out if isinstance(d, CancelTasks) for r in d.refs}
    assert cancelled == {t.index for t in gang.tasks if t is not victim}
    assert gang.state == FAILED

"""Tasks that run after others (``after``): the core places a template only once every task it
runs after has ended, skips it when one failed (unless ``on-failure = "run"``), and a new leader
rebuilt from the writes carries on where the old one stopped. Pure logic, a fake clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_core import Harness, assert_counts, dispatched, puts, tmpl

from rota.common.jobspec import JobSpecError, parse_job_text
from rota.common.states import FAILED, PENDING, SKIPPED, SUCCEEDED
from rota.scheduler import translate
from rota.scheduler.core import Job, Report, restore_task
from rota.scheduler.views import task_doc


def after(name: str, *deps: str, count: int = 1, on_failure: str | None = None) -> dict[str, Any]:
    table = {**tmpl(name, count=count), "after": list(deps)}
    if on_failure:
        table["on-failure"] = on_failure
    return table


def diamond(h: Harness, on_failure: str | None = None) -> Job:
    """a; b and c after a; d after b and c."""
    return h.add_job(
        "j", tmpl("a"), after("b", "a"), after("c", "a", count=2), after("d", "b", "c", on_failure=on_failure),
        max_attempts=1,
    )  # fmt: skip


def run_all(h: Harness, ex: str = "e1", fail: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Report every dispatched task ended (FAILED when its name is in ``fail``) until none is left;
    the names in the order they were placed."""
    order: list[str] = []
    while True:
        batch = dispatched(h.drain()).get(ex, [])
        if not batch:
            return order
        job = h.core.active.get("j") or h.core.jobs["j"]
        for task_id, _ in batch:
            task = job.tasks[int(task_id.split("/")[1])]
            order.append(task.name)
            state = FAILED if task.name in fail else SUCCEEDED
            h.core.report(ex, [Report(task.ref(), state, {"value": {"from": task.name}})])


def test_a_diamond_runs_in_order() -> None:
    h = Harness()
    h.attach("e1", slots=8)
    job = diamond(h)
    order = run_all(h)
    assert order[0] == "a" and order[-1] == "d"
    assert sorted(order[1:4]) == ["b", "c-0", "c-1"]
    assert job.state == SUCCEEDED
    assert_counts(job)


def test_a_failed_task_skips_what_runs_after_it_and_fails_the_job() -> None:
    h = Harness()
    h.attach("e1", slots=8)
    job = diamond(h)
    order = run_all(h, fail={"b"})
    assert "d" not in order
    d = job.tasks[-1]
    assert d.state == SKIPPED and "'b'" in d.result["error"]
    assert job.state == FAILED
    assert_counts(job)


def test_a_skip_cascades_down_a_chain_without_placing_anything() -> None:
    h = Harness()
    h.attach("e1", slots=8)
    chain = [tmpl("t0"), *(after(f"t{i}", f"t{i - 1}") for i in range(1, 3000))]
    job = h.add_job("j", *chain, max_attempts=1)
    assert run_all(h, fail={"t0"}) == ["t0"]
    assert [t.state for t in job.tasks[1:]] == [SKIPPED] * 2999
    assert job.state == FAILED


def test_on_failure_run_runs_anyway_and_gets_null_for_the_failed_one() -> None:
    h = Harness()
    h.attach("e1", slots=8)
    job = diamond(h, on_failure="run")
    order = run_all(h, fail={"b"})
    assert order[-1] == "d"
    env = translate.after_env(job.tasks[-1])
    assert json.loads(env["ROTA_AFTER"]) == {"b": None, "c-0": {"from": "c-0"}, "c-1": {"from": "c-1"}}
    assert job.state == FAILED  # b failed


def test_waiting_tasks_say_what_they_wait_for_and_are_not_placed() -> None:
    h = Harness()
    h.attach("e1", slots=8)
    job = diamond(h)
    assert [t for t, _ in dispatched(h.drain())["e1"]] == ["j/0"]
    assert task_doc(job.tasks[1])["waiting_for"] == ["a"]
    assert task_doc(job.tasks[4])["waiting_for"] == ["b", "c"]
    assert "waiting_for" not in task_doc(job.tasks[0])


def test_results_passed_are_capped_and_the_rest_counted() -> None:
    h = Harness()
    h.attach("e1", slots=64)
    job = h.add_job("j", tmpl("m", count=40), after("r", "m"))
    big = "x" * 10_000
    for task_id, _ in dispatched(h.drain())["e1"]:
        task = job.tasks[int(task_id.split("/")[1])]
        h.core.report("e1", [Report(task.ref(), SUCCEEDED, {"value": big})])
    env = translate.after_env(job.tasks[-1])
    assert len(env["ROTA_AFTER"]) <= translate.AFTER_CAP
    kept = json.loads(env["ROTA_AFTER"])
    assert len(kept) + int(env["ROTA_AFTER_OMITTED"]) == 40
    assert 0 < len(kept) < 40


def test_shell_output_is_passed_as_its_last_line() -> None:
    assert translate.output_value({"value": None, "stdout": 'log\n{"n": 3}\n'}) == {"n": 3}
    assert translate.output_value({"value": None, "stdout": "hello\nworld\n"}) == "world"
    assert translate.output_value({"value": None, "stdout": ""}) is None


def rebuild(h: Harness, job: Job) -> Job:
    """What a new leader holds: the job made again from the records its writes left in etcd."""
    records: dict[int, dict[str, Any]] = {}
    for task_id, rec in puts(h.drain()):
        records[int(task_id.split("/")[1])] = rec
    h2 = Harness()
    new = Job(job.id, job.spec, job.seq, job.created)
    for index, rec in records.items():
        restore_task(new, index, rec)
    h.core = h2.core
    h.core.add_job(new)
    return new


@pytest.mark.parametrize("fail", [set(), {"c"}])
def test_a_new_leader_carries_on_from_the_records(fail: set[str]) -> None:
    h = Harness()
    h.attach("e1", slots=8)
    job = diamond(h)
    h.drain()  # a's placement
    a = job.tasks[0]
    decisions: list[Any] = []
    h.core.report("e1", [Report(a.ref(), SUCCEEDED, {"value": 1})])
    decisions = h.drain()
    # b, c-0 and c-1 placed; c ends (or fails); the leader dies before anything else
    for t in job.tasks[2:4]:
        h.core.report("e1", [Report(t.ref(), FAILED if "c" in fail else SUCCEEDED, {"value": 2})])
    writes = decisions + h.drain()
    h.core.drain = lambda: writes  # type: ignore[method-assign]
    new = rebuild(h, job)
    assert new.tasks[1].state != PENDING  # b was placed before: adopted, not placed again
    d = new.tasks[-1]
    if fail:
        # c failed: d is skipped once b ends too, not placed
        h.attach("e1", slots=8)
        h.core.report("e1", [Report(new.tasks[1].ref(), SUCCEEDED, {"value": 3})])
        assert d.state == SKIPPED
        assert new.state == FAILED
    else:
        assert d.state == PENDING and task_doc(d)["waiting_for"] == ["b"]
    assert_counts(new)


def test_cycles_and_unknown_names_are_refused_with_the_names() -> None:
    text = "name = 'j'\n" + "".join(
        f"[[task]]\nname = '{n}'\nkind = 'noop'\nafter = [{', '.join(repr(d) for d in deps)}]\n"
        for n, deps in [("x", ["z"]), ("y", ["x"]), ("z", ["y"])]
    )
    with pytest.raises(JobSpecError, match=r"a cycle: 'x' -> 'z' -> 'y'"):
        parse_job_text(text)
    with pytest.raises(JobSpecError, match=r"task\[0\].after: no task named 'nope'"):
        parse_job_text("name='j'\n[[task]]\nname='x'\nkind='noop'\nafter=['nope']\n")
    with pytest.raises(JobSpecError, match=r"gang"):
        parse_job_text(
            "name='j'\ngang=true\n[[task]]\nname='x'\nkind='noop'\n[[task]]\nname='y'\nkind='noop'\nafter=['x']\n"
        )

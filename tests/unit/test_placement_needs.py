"""Placement by constraints and resources in the core: pure logic, a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from test_core import Harness, dispatched, tmpl

from rota.common import requirements as reqs
from rota.common.states import SUCCEEDED
from rota.scheduler.core import Report
from rota.scheduler.placement import ExecutorSlot


def needing(name: str, count: int = 1, **needs: Any) -> dict[str, Any]:
    return {**tmpl(name, "shell", count=count), **needs}


def attach(
    h: Harness, ex_id: str, slots: int = 4, labels: dict[str, str] | None = None, **resources: float
) -> None:
    ex = ExecutorSlot(id=ex_id, name=ex_id, addr=f"{ex_id}:1", slots=slots, kinds=frozenset(["shell"]),
                      labels=labels or {}, resources=resources)  # fmt: skip
    h.core.attach_executor(ex)


def placed(h: Harness) -> dict[str, list[str]]:
    return {ex: [t for t, _ in tasks] for ex, tasks in dispatched(h.drain()).items()}


def test_constrained_tasks_go_only_where_labels_match() -> None:
    h = Harness()
    attach(h, "a", labels={"zone": "a"})
    attach(h, "b", labels={"zone": "b", "gpu": "t4"})
    h.add_job(
        "j",
        needing("x", 3, constraints={"zone": "b"}),
        needing("y", 2, constraints={"gpu": {"exists": False}}),
    )
    got = placed(h)
    assert sorted(got["b"]) == ["j/0", "j/1", "j/2"] and sorted(got["a"]) == ["j/3", "j/4"]


def test_a_task_that_fits_nowhere_now_does_not_hold_up_others() -> None:
    h = Harness()
    attach(h, "a", gpu=1)
    h.add_job("j", needing("big", 1, resources={"gpu": 2}), needing("plain", 3))
    assert sorted(placed(h)["a"]) == ["j/1", "j/2", "j/3"]


def test_resources_are_held_while_a_task_runs_and_freed_when_it_ends() -> None:
    h = Harness()
    attach(h, "a", slots=4, gpu=1, memory=8 * 2**30)
    job = h.add_job("j", needing("g", 3, resources={"gpu": 1, "memory": "2GiB"}))
    assert placed(h) == {"a": ["j/0"]}
    ex = h.core.executors["a"]
    assert ex.free_resources() == {"gpu": 0.0, "memory": 6.0 * 2**30}
    h.core.report("a", [Report(job.tasks[0].ref(), SUCCEEDED, {})])
    assert placed(h) == {"a": ["j/1"]}
    h.core.executor_lost("a")
    assert ex.used == {}


def test_shortfall_names_what_is_missing() -> None:
    needs = reqs.Requirements(reqs.parse_constraints({"zone": "b"}), reqs.parse_resources({"memory": "4GiB"}))
    assert needs.shortfall([("e1", {"zone": "a"}, {})]) == "no executor has labels zone=b"
    assert (
        needs.shortfall([("e1", {"zone": "b"}, {"memory": 2**30})])
        == "memory 4GiB: the most an executor has is 1GiB (e1)"
    )
    assert needs.shortfall([("e1", {"zone": "b"}, {"memory": 2**33})]) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu", "expected name=amount"),
        ("gpu=x", "expected a number"),
        ("memory=lots", "malformed size"),
        ("gpu=0", "positive"),
    ],
)
def test_the_executor_flag_is_checked(text: str, message: str) -> None:
    with pytest.raises(reqs.RequirementError, match=message):
        reqs.parse_flag(text)


def test_a_task_of_its_own_priority_goes_before_the_jobs_other_tasks() -> None:
    h = Harness()
    attach(h, "a", slots=1)
    h.add_job("j", needing("bulk", 3), {**needing("urgent"), "priority": "high"})
    assert placed(h) == {"a": ["j/3"]}  # submitted last, placed first
    job = h.core.jobs["j"]
    assert job.tasks[3].priority == 90 and job.tasks[0].priority == 50

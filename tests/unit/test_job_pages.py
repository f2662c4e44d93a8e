"""An ended job's page is built a step at a time, and reads exactly as the page built at once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from rota.common.jobspec import JobSpec
from rota.common.states import FAILED, SUCCEEDED
from rota.scheduler.core import Core, Job, restore_task
from rota.scheduler.job_api import PAGE_STEP, JobApi

TASKS = 2 * PAGE_STEP + 345
SPEC = JobSpec.from_dict(
    {
        "name": "big",
        "task": [{"name": "one", "kind": "noop"}, {"name": "many", "kind": "noop", "count": TASKS - 1}],
    }
)


def api() -> JobApi:
    nothing: Any = None  # a page of a job held in memory needs no store, pipeline or routing
    return JobApi(Core(), nothing, nothing, nothing, nothing, nothing)


def ended_job(jobs: JobApi) -> Job:
    """An ended job the core holds with its tasks (as a rebuilt leader finds it)."""
    job = Job("j", SPEC, 1, time.time())
    for i in range(len(job.tasks)):
        rec = {"s": FAILED if i == 7 else SUCCEEDED, "a": 1, "e": "ex-1", "f": 0}
        rec["r"] = {"error": "boom"} if i == 7 else {"value": [i, "ü"], "stdout": "x\n"}
        restore_task(job, i, rec)
    job.state, job.ended = FAILED, time.time()
    jobs.core.add_job(job)
    return job


def test_a_page_built_in_steps_is_the_page_built_at_once() -> None:
    jobs = api()
    job = ended_job(jobs)

    async def both(offset: int, limit: int) -> tuple[bytes | None, dict[str, Any] | None]:
        return await jobs.page_json(job, offset, limit), await jobs.page_doc(job, offset, limit)

    for offset, limit in ((0, TASKS), (0, PAGE_STEP + 1), (5, 2 * PAGE_STEP), (TASKS - 3, 10_000), (0, 10)):
        blob, doc = asyncio.run(both(offset, limit))
        assert blob is not None and doc is not None
        assert blob == json.dumps(doc).encode()
        assert len(json.loads(blob)["tasks"]) == min(limit, TASKS - offset)


def test_an_ended_jobs_big_page_lets_the_event_loop_answer_others_meanwhile() -> None:
    jobs = api()
    job = ended_job(jobs)

    async def run() -> tuple[int, int]:
        turns = 0
        done = False

        async def others() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(others())
        await asyncio.sleep(0)
        start = turns
        await jobs.page_json(job, 0, TASKS)
        during = turns - start
        job.state = None  # a running job's page stays one snapshot: built in one go
        start = turns
        await jobs.page_json(job, 0, TASKS)
        done = True
        await other
        return during, turns - start

    ended_turns, running_turns = asyncio.run(run())
    assert ended_turns >= TASKS // PAGE_STEP, ended_turns
    assert running_turns <= 1, running_turns


def test_a_page_of_a_job_that_expired_after_it_was_looked_up_is_not_built_from_what_it_let_go() -> None:
    jobs = api()
    job = ended_job(jobs)
    jobs.core.wall = lambda: time.time() + 2 * jobs.core.retention_of(job)
    jobs.core.tick()
    assert "j" not in jobs.core.jobs and job.tasks == []
    assert asyncio.run(jobs.page_json(job, 0, TASKS)) is None
    assert asyncio.run(jobs.page_doc(job, 0, 10)) is None

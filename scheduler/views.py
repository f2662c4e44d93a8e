"""The JSON documents of docs/contract.md (get-job, list-jobs, list-executors), built from the core's state."""

from __future__ import annotations

import asyncio
from typing import Any

from rota.common.states import TASK_STATES
from rota.scheduler.core import Job, Task
from rota.scheduler.placement import ExecutorSlot

RESULT_KEYS = ("exit_code", "stdout", "stderr", "value", "error")


def result_doc(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    doc = {k: result.get(k) for k in RESULT_KEYS}
    if result.get("truncated"):
        doc["truncated"] = True
    return doc


def task_doc(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.name,
        "state": task.state,
        "attempt": task.attempt,
        "failures": task.failures,
        "lost": task.lost,
        "executor": task.executor or None,
        "result": result_doc(task.result),
    }


def job_doc(job: Job, with_tasks: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": job.id,
        "name": job.spec.name,
        "state": job.current_state(),
        "priority": job.spec.priority,
        "counts": {s: job.counts[s] for s in TASK_STATES if job.counts[s]},
    }
    if with_tasks:
        doc["tasks"] = [task_doc(t) for t in job.tasks]
    return doc


def executor_state(ex: ExecutorSlot) -> str:
    if not ex.connected:
        return "disconnected"
    return "draining" if ex.draining else "ready"


def executor_doc(ex: ExecutorSlot) -> dict[str, Any]:
    return {
        "id": ex.id,
        "name": ex.name,
        "addr": ex.addr,
        "slots": ex.slots,
        "running": len(ex.running),
        "labels": dict(ex.labels),
        "kinds": sorted(ex.kinds),
        "state": executor_state(ex),
        "last_heartbeat": ex.heartbeat_at or None,
    }


#: Tasks turned into documents between two yields to the event loop.
DOC_CHUNK = 5000
#: The most tasks one GetJob page carries: a page is built, encoded and sent in tens of
#: milliseconds, so a client with a short timeout reads any job and the leader's loop never stalls.
MAX_TASK_PAGE = 10_000


def job_page_doc(job: Job, offset: int, limit: int) -> dict[str, Any]:
    """The get-job document with tasks ``[offset, offset + limit)`` only."""
    doc = job_doc(job, with_tasks=False)
    doc["tasks"] = [task_doc(t) for t in job.tasks[offset : offset + min(limit, MAX_TASK_PAGE)]]
    return doc


async def job_doc_yielding(job: Job) -> dict[str, Any]:
    """``job_doc`` for a job of any size without holding the leader's event loop for long.

    A get-job of 100,000 tasks takes a third of a second to build; done in one go, a
    million-task job would starve the lease keep-alive that runs on the same loop.
    """
    doc = job_doc(job, with_tasks=False)
    tasks: list[dict[str, Any]] = []
    for start in range(0, len(job.tasks), DOC_CHUNK):
        if start:
            await asyncio.sleep(0)
        tasks.extend(task_doc(t) for t in job.tasks[start : start + DOC_CHUNK])
    doc["tasks"] = tasks
    return doc

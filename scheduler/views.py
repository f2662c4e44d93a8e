"""The JSON documents of docs/contract.md (get-job, list-jobs, list-executors), built from the core's state."""

from __future__ import annotations

from typing import Any

from rota.common.paging import MAX_TASK_PAGE
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


def job_page_doc(job: Job, offset: int, limit: int) -> dict[str, Any]:
    """The get-job document with tasks ``[offset, offset + limit)`` only."""
    doc = job_doc(job, with_tasks=False)
    doc["tasks"] = [task_doc(t) for t in job.tasks[offset : offset + min(limit, MAX_TASK_PAGE)]]
    return doc

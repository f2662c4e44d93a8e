"""The JSON documents of docs/contract.md (get-job, list-jobs, list-executors), built from the core's state."""

from __future__ import annotations

import json
from typing import Any

from rota.common.jobspec import JobSpec
from rota.common.paging import MAX_TASK_PAGE
from rota.common.states import FAILED, PENDING, RUNNING, SKIPPED, SUCCEEDED, TASK_STATES
from rota.scheduler import gang
from rota.scheduler.core import AnyJob, EndedJob, Job, Task, failures_of
from rota.scheduler.placement import ExecutorSlot

RESULT_KEYS = ("exit_code", "stdout", "stderr", "value", "error")
#: Bytes (as JSON) a job's report may take; a larger one is not shown.
REPORT_MAX = 16 * 1024


def result_doc(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    doc = {k: result.get(k) for k in RESULT_KEYS}
    if result.get("truncated"):
        doc["truncated"] = True
    return doc


def report_of(state: str, result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The job's report from its report task's state and result: once SUCCEEDED, the result's
    value when a JSON object (a ``call`` task's return value), else the last non-empty line of its
    stdout when that parses as a JSON object; None when none is there or it is over REPORT_MAX."""
    if state != SUCCEEDED or not result:
        return None
    value = result.get("value")
    if value is None:
        stdout = result.get("stdout") or ""
        tail = stdout[-(REPORT_MAX + 1024) :].rstrip().rsplit("\n", 1)[-1].strip()
        if not tail.startswith("{") or len(tail.encode()) > REPORT_MAX:
            return None
        try:
            value = json.loads(tail)
        except (ValueError, RecursionError):
            return None
    if not isinstance(value, dict) or len(json.dumps(value).encode()) > REPORT_MAX:
        return None
    return value


def live_report(job: Job) -> dict[str, Any] | None:
    """The report of a job held in memory (None without a report task or before it succeeded)."""
    index = job.spec.report_index()
    if index is None:
        return None
    task = job.tasks[index]
    return report_of(task.state, task.result)


def task_doc(task: Task, endpoints: dict[str, str] | None = None, reason: str = "") -> dict[str, Any]:
    """``endpoints``: port -> host:port of the task's published endpoints; ``reason``: why a
    pending task with constraints or resources is not placed yet."""
    doc = {
        "id": task.id,
        "name": task.name,
        "state": task.state,
        "attempt": task.attempt,
        "failures": task.failures,
        "lost": task.lost,
        "executor": task.executor or None,
        "result": result_doc(task.result),
    }
    if task.progress is not None:
        doc["progress"] = {"fraction": task.progress[0], "message": task.progress[1]}
    if task.reasons:
        doc["retries"] = list(task.reasons)
    if task.spec.service:
        doc["service"] = True
        doc["restarts"] = task.failures + task.lost
    if reason and task.state == PENDING:
        doc["pending_reason"] = reason
    deps = task.job.deps
    if deps is not None and task.state == PENDING and not deps.ready(task.template):
        doc["waiting_for"] = [task.job.spec.tasks[t].name for t in deps.waiting_for(task.template)]
    if endpoints:
        doc["endpoints"] = dict(sorted(endpoints.items()))
    return doc


def job_doc(job: AnyJob) -> dict[str, Any]:
    """The get-job document without ``tasks`` (list-jobs, a wait still running); pages add them."""
    doc: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "state": job.current_state(),
        "priority": job.priority,
        "counts": {s: job.counts[s] for s in TASK_STATES if job.counts[s]},
    }
    if job.owner:
        doc["owner"] = job.owner
    if job.type is not None:
        doc["type"] = job.type
    if isinstance(job, Job) and job.gangs is not None and job.state is None:
        reason = gang.pending_reason(job.gangs)
        if reason:
            doc["pending_reason"] = reason
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
        "resources": dict(ex.resources),
        "resources_free": ex.free_resources(),
    }


def job_page_doc(
    job: Job,
    offset: int,
    limit: int,
    endpoints: dict[int, dict[str, str]] | None = None,
    barriers: list[dict[str, Any]] | None = None,
    executors: list[ExecutorSlot] | None = None,
) -> dict[str, Any]:
    """The get-job document with tasks ``[offset, offset + limit)`` only; ``endpoints``: by task
    index, the ports published now (Endpoints.of_job); a running job's barriers when it has any;
    ``executors``: the cluster's, to say why tasks with constraints or resources wait."""
    doc = job_doc(job)
    if barriers:
        doc["barriers"] = barriers
    report = live_report(job)
    if report is not None:
        doc["report"] = report
    if job.deps is not None:
        doc["graph"] = graph_doc(job)
    shown = endpoints or {}
    page = job.tasks[offset : offset + min(limit, MAX_TASK_PAGE)]
    reasons = placement_reasons(job, page, executors or [])
    doc["tasks"] = [task_doc(t, shown.get(t.index), reasons.get(t.template, "")) for t in page]
    return doc


def graph_doc(job: Job) -> list[dict[str, Any]]:
    """A job's task groups and what each runs after, for a picture of its graph: per group its
    state as a whole (from the counts the core keeps: no walk over the tasks)."""
    deps = job.deps
    assert deps is not None
    out = []
    for t, tmpl in enumerate(job.spec.tasks):
        copies = tmpl.copies()
        ended = copies - deps.left[t]
        if ended == copies and deps.unmet[t] is not None and tmpl.on_failure == "skip":
            group = SKIPPED
        elif ended == copies:
            group = FAILED if deps.failed[t] else SUCCEEDED
        elif not deps.ready(t):
            group = PENDING
        else:
            group = RUNNING
        out.append(
            {"name": tmpl.name, "after": list(tmpl.after), "tasks": copies, "ended": ended, "state": group}
        )
    return out


def placement_reasons(job: Job, tasks: list[Task], executors: list[ExecutorSlot]) -> dict[int, str]:
    """Per template with constraints or resources that has pending tasks among ``tasks``: why
    they are not placed now (once per template, not per task)."""
    out: dict[int, str] = {}
    for t in {t.template for t in tasks if t.state == PENDING}:
        tmpl = job.spec.tasks[t]
        if not tmpl.needs:
            continue
        offering = [e for e in executors if tmpl.kind in e.kinds and e.accepts_work]
        why = tmpl.needs.shortfall([(e.name, e.labels, e.free_resources()) for e in offering], "has free")
        if not why and not any(e.can_run(tmpl.needs) for e in offering):
            why = (
                "no free slot on an executor that fits"
                if offering
                else f"no executor offers kind {tmpl.kind!r}"
            )
        out[t] = f"waiting for: {why}" if why else ""
    return out


def task_names(spec: JobSpec, offset: int, limit: int) -> list[str]:
    """The names of tasks ``[offset, offset + limit)`` of a job, without building its tasks."""
    return [name for name, _ in _named(spec, offset, limit)]


def _named(spec: JobSpec, offset: int, limit: int) -> list[tuple[str, bool]]:
    """(name, whether a service task) of tasks ``[offset, offset + limit)`` of a job."""
    out: list[tuple[str, bool]] = []
    start = 0
    for tmpl in spec.tasks:
        end = start + tmpl.copies()
        lo, hi = max(offset, start), min(offset + limit, end)
        out.extend((tmpl.copy_name(i - start), tmpl.service) for i in range(lo, hi))
        start = end
        if start >= offset + limit:
            break
    return out


def stored_page_doc(
    job: EndedJob,
    spec: JobSpec,
    records: dict[int, dict[str, Any]],
    offset: int,
    limit: int,
    report_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``job_page_doc`` for an ended job held as a summary, from its spec and task records (and
    its report task's record, when it has one)."""
    doc = job_doc(job)
    if report_record is not None:
        report = report_of(report_record.get("s", ""), report_record.get("r"))
        if report is not None:
            doc["report"] = report
    limit = min(limit, MAX_TASK_PAGE)
    tasks = []
    for i, (name, service) in enumerate(_named(spec, offset, limit), offset):
        rec = records.get(i, {})
        attempt = int(rec.get("a", 0))
        tasks.append({
            "id": f"{job.id}/{i}",
            "name": name,
            "state": rec.get("s", "PENDING"),
            "attempt": attempt,
            "failures": failures_of(rec),
            "lost": int(rec.get("l", 0)),
            "executor": rec.get("e") or None,
            "result": result_doc(rec.get("r")),
        })  # fmt: skip
        p = rec.get("p")
        if isinstance(p, list) and len(p) == 2:
            tasks[-1]["progress"] = {"fraction": float(p[0]), "message": str(p[1])}
        y = rec.get("y")
        if isinstance(y, list) and y:
            tasks[-1]["retries"] = [str(r) for r in y]
        if service:
            tasks[-1]["service"] = True
            tasks[-1]["restarts"] = tasks[-1]["failures"] + tasks[-1]["lost"]
    doc["tasks"] = tasks
    return doc

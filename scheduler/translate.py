"""Between the wire and the core: protobuf messages to core events, core decisions to messages."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from rota.common import results
from rota.common.states import FAILED, HANDED_BACK, RUNNING, SUCCEEDED
from rota.protos import rota_pb2
from rota.scheduler.core import Report, Task, TaskRef
from rota.scheduler.placement import ExecutorSlot, bounded_prefetch


def refs(refs: Iterable[TaskRef]) -> list[rota_pb2.TaskRef]:
    return [rota_pb2.TaskRef(job_id=r.job_id, index=r.index, attempt=r.attempt) for r in refs]


def task_refs(refs: Iterable[rota_pb2.TaskRef]) -> list[TaskRef]:
    return [TaskRef(r.job_id, r.index, r.attempt) for r in refs]


#: Bytes of ROTA_AFTER at most: one environment string may hold 128 KiB on Linux (MAX_ARG_STRLEN).
AFTER_CAP = 100 * 1024


def output_value(result: dict[str, Any] | None) -> Any:
    """What a task hands the tasks that run after it: its return value (``call``, ``python``), else
    the last non-empty line of its stdout, as JSON when it parses, else as a string."""
    if not result:
        return None
    if result.get("value") is not None:
        return result["value"]
    stdout = result.get("stdout") or ""
    tail = stdout[-AFTER_CAP:].rstrip().rsplit("\n", 1)[-1].strip()
    if not tail:
        return None
    try:
        return json.loads(tail)
    except (ValueError, RecursionError):
        return tail


def after_env(task: Task) -> dict[str, str]:
    """ROTA_AFTER: a JSON object of name -> output value of each task this one runs after (null
    for one that did not succeed), in job order, as many as fit AFTER_CAP; ROTA_AFTER_OMITTED
    counts those left out (a fan-in over thousands of tasks): the first that do not fit end the walk.
    Empty for a task that runs after none."""
    job = task.job
    deps = job.deps
    if deps is None or not deps.after[task.template]:
        return {}
    parts: list[str] = []
    size, total = 2, 0
    for t in sorted(deps.after[task.template]):
        start, copies = deps.starts[t], job.spec.tasks[t].copies()
        total += copies
        if size >= AFTER_CAP:
            continue  # full: the rest are counted, not walked (a fan-in may follow 100,000 tasks)
        for dep in job.tasks[start : start + copies]:
            value = output_value(dep.result) if dep.state == SUCCEEDED else None
            part = f"{json.dumps(dep.name)}:{json.dumps(value)}"
            if size + len(part) + 1 > AFTER_CAP:
                size = AFTER_CAP
                break
            parts.append(part)
            size += len(part) + 1
    omitted = total - len(parts)
    env = {"ROTA_AFTER": "{" + ",".join(parts) + "}"}
    if omitted:
        env["ROTA_AFTER_OMITTED"] = str(omitted)
    return env


def assignment(
    task: Task, attempt: int, params_json: bytes, retention: float, after: dict[str, str] | None = None
) -> rota_pb2.TaskAssignment:
    spec = task.spec
    env = {"ROTA_JOB_ID": task.job.id, "ROTA_TASK_ID": task.id, "ROTA_ATTEMPT": str(attempt)}
    if after:
        env.update(after)
    if spec.shards:
        env["ROTA_SHARD_INDEX"] = str(task.copy)
        env["ROTA_SHARD_COUNT"] = str(spec.shards)
    msg = rota_pb2.TaskAssignment(
        task=rota_pb2.TaskRef(job_id=task.job.id, index=task.index, attempt=attempt),
        kind=spec.kind,
        params_json=params_json,
        env=env,
        timeout=task.timeout or 0.0,
        priority=task.priority,
        retention=retention,
        service=spec.service,
        ports=spec.ports,
    )
    if spec.limits:
        lim = spec.limits
        msg.limits.cpu = lim.cpu or 0.0
        msg.limits.memory = lim.memory or 0
        msg.limits.processes = lim.processes or 0
        msg.limits.file_size = lim.file_size or 0
    return msg


def report(r: rota_pb2.TaskReport) -> Report:
    ref = TaskRef(r.task.job_id, r.task.index, r.task.attempt)
    if r.state in (RUNNING, HANDED_BACK):
        return Report(ref, r.state)
    ok = r.state == SUCCEEDED
    value, error = None, r.error or None
    if r.value_json and len(r.value_json) <= results.VALUE_CAP:
        try:
            value = json.loads(r.value_json)
        except (ValueError, RecursionError):
            ok, error = False, "the return value is not readable JSON"
    result: dict[str, Any] = {
        "exit_code": r.exit_code if r.has_exit_code else None,
        "stdout": r.stdout,
        "stderr": r.stderr,
        "value": value,
        "error": error,
    }
    if r.truncated:
        result["truncated"] = True
    within = results.bound(result, len(r.value_json))
    return Report(ref, SUCCEEDED if ok and within else FAILED, result)


def executor_slot(executor_id: str, lease_id: int, hello: rota_pb2.Hello) -> ExecutorSlot:
    """What the core knows of an executor that just attached."""
    return ExecutorSlot(
        id=executor_id,
        name=hello.name,
        addr=hello.addr,
        slots=max(1, hello.slots),
        kinds=frozenset(hello.kinds),
        labels=dict(hello.labels),
        resources={k: v for k, v in hello.resources.items() if v > 0 and len(k) <= 63},
        lease_id=lease_id,
        prefetch=bounded_prefetch(hello.prefetch),
        leaving=hello.leaving,
        heartbeat_at=time.time(),
    )


def drain(ex: ExecutorSlot) -> rota_pb2.LeaderMessage:
    """Tell an executor the drain an operator asked for (or its end)."""
    msg = rota_pb2.Drain(drain=ex.drain_requested)
    if ex.drain_requested and ex.drain_timeout is not None:
        msg.timeout = ex.drain_timeout
    return rota_pb2.LeaderMessage(drain=msg)

"""The ``sleep`` kind: waits ``seconds`` in the event loop, no process; for demos and failover tests."""

from __future__ import annotations

import asyncio

from rota.executor.kinds.base import Kind, ParamError, TaskResult, TaskSpec, bad_params, timed_out


class SleepKind(Kind):
    name = "sleep"
    needs_work_dir = False
    task_calls = False
    log_files = False

    async def run(self, spec: TaskSpec) -> TaskResult:
        try:
            seconds = _seconds(spec.params.get("seconds", 0))
        except ParamError as exc:
            return bad_params(spec, exc)
        if spec.timeout is not None and spec.timeout < seconds:
            await asyncio.sleep(spec.timeout)
            return TaskResult(ok=False, error=timed_out(spec.timeout))
        await asyncio.sleep(seconds)
        return TaskResult(ok=True, exit_code=0)


def _seconds(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
        raise ParamError(f"'seconds' must be a non-negative number, got {raw!r}")
    return float(raw)

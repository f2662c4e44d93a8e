"""The ``python`` kind: ``code`` run by the executor's own interpreter, so it sees the same packages."""

from __future__ import annotations

import sys

from rota.executor import run_as
from rota.executor.kinds.base import (
    Kind,
    ParamError,
    TaskResult,
    TaskSpec,
    bad_params,
    default_limits,
    inherited_env,
    run_subprocess,
    task_env,
)
from rota.executor.kinds.spares import KEEP_MAX, Spares


class PythonKind(Kind):
    name = "python"

    def __init__(self, slots: int = 1) -> None:
        super().__init__(slots)
        self.spares: Spares | None = None

    async def start(self) -> None:
        if self.spares is None:
            self.spares = Spares(min(self.slots, KEEP_MAX), default_limits(), inherited_env())
            await self.spares.start()

    async def close(self) -> None:
        if self.spares is not None:
            await self.spares.close()

    async def run(self, spec: TaskSpec) -> TaskResult:
        try:
            code = spec.params.get("code")
            if not isinstance(code, str):
                raise ParamError("'code' must be a string")
            env = task_env(spec)
        except ParamError as exc:
            return bad_params(spec, exc)
        started = None
        if self.spares is not None and spec.work_dir and self.spares.usable(spec.limits, env):
            started = self.spares.take(code, run_as.task_env(env), spec.work_dir)
        return await run_subprocess([sys.executable, "-c", code], spec, env, started)

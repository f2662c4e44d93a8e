"""The ``python`` kind: ``code`` run by the executor's own interpreter, so it sees the same packages."""

from __future__ import annotations

import sys

from rota.executor.kinds.base import (
    Kind,
    ParamError,
    TaskResult,
    TaskSpec,
    bad_params,
    run_subprocess,
    task_env,
)


class PythonKind(Kind):
    name = "python"

    async def run(self, spec: TaskSpec) -> TaskResult:
        try:
            code = spec.params.get("code")
            if not isinstance(code, str):
                raise ParamError("'code' must be a string")
            env = task_env(spec)
        except ParamError as exc:
            return bad_params(spec, exc)
        return await run_subprocess([sys.executable, "-c", code], spec, env)

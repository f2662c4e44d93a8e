"""The ``go`` kind: ``code`` written to ``main.go`` and run with ``go run``; offered only where Go is on PATH."""

from __future__ import annotations

import shutil
from pathlib import Path

from rota.executor.kinds.base import (
    Kind,
    ParamError,
    TaskResult,
    TaskSpec,
    bad_params,
    run_subprocess,
    task_env,
)


class GoKind(Kind):
    name = "go"

    def available(self) -> bool:
        return shutil.which("go") is not None

    async def run(self, spec: TaskSpec) -> TaskResult:
        try:
            code = spec.params.get("code")
            if not isinstance(code, str):
                raise ParamError("'code' must be a string")
            env = task_env(spec)
        except ParamError as exc:
            return bad_params(spec, exc)
        go = shutil.which("go", path=env.get("PATH"))
        if go is None:
            return TaskResult(ok=False, error="go: no Go toolchain on PATH")
        # Shared by every task under the executor's work dir, so only the first build of a package is slow.
        cache = Path(spec.work_dir).resolve().parent / "go-cache"
        env.setdefault("GOCACHE", str(cache / "build"))
        env.setdefault("GOPATH", str(cache / "path"))
        try:
            (Path(spec.work_dir) / "main.go").write_text(code)
        except OSError as exc:
            return TaskResult(ok=False, error=f"go: cannot write main.go: {exc}")
        return await run_subprocess([go, "run", "main.go"], spec, env)

"""The ``noop`` kind: succeeds at once; useful to exercise scheduling without doing work."""

from __future__ import annotations

from rota.executor.kinds.base import Kind, TaskResult, TaskSpec


class NoopKind(Kind):
    name = "noop"
    needs_work_dir = False
    task_calls = False
    log_files = False

    async def run(self, spec: TaskSpec) -> TaskResult:
        return TaskResult(ok=True, exit_code=0)

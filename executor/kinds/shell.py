"""The ``shell`` kind: a list runs without a shell (no quoting surprises); a string runs with /bin/sh -c."""

from __future__ import annotations

from rota.executor.kinds.base import (
    Kind,
    ParamError,
    TaskResult,
    TaskSpec,
    bad_params,
    run_subprocess,
    task_env,
)


class ShellKind(Kind):
    name = "shell"

    async def run(self, spec: TaskSpec) -> TaskResult:
        try:
            argv = command_argv(spec.params.get("command"))
            env = task_env(spec)
        except ParamError as exc:
            return bad_params(spec, exc)
        return await run_subprocess(argv, spec, env)


def command_argv(command: object) -> list[str]:
    """TOML numbers in a command list are accepted as their text (``["sleep", 1]``)."""
    if isinstance(command, str):
        if not command.strip():
            raise ParamError("'command' is empty")
        return ["/bin/sh", "-c", command]
    if isinstance(command, list) and command:
        if all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in command):
            return [str(a) for a in command]
    raise ParamError("'command' must be a string or a non-empty list of strings")

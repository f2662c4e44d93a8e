"""Task kinds against real subprocesses and worker processes: success, failure, limits, kills, registry."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rota.executor import registry
from rota.executor.kinds import base, spares
from rota.executor.kinds.base import OUTPUT_CAP, TRUNCATED_MARK, Kind, Ride, TaskResult, TaskSpec
from rota.executor.kinds.call import CallKind
from rota.executor.kinds.go import GoKind
from rota.executor.kinds.noop import NoopKind
from rota.executor.kinds.python import PythonKind
from rota.executor.kinds.shell import ShellKind
from rota.executor.kinds.sleep import SleepKind

T = TypeVar("T")

BUILTINS = {
    "noop": NoopKind,
    "sleep": SleepKind,
    "shell": ShellKind,
    "python": PythonKind,
    "go": GoKind,
    "call": CallKind,
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., TaskSpec]:
    work = tmp_path / "work"
    work.mkdir()

    def make(
        kind: str, timeout: float | None = None, env: dict[str, str] | None = None, **params: Any
    ) -> TaskSpec:
        return TaskSpec(
            job_id="job-1",
            task_id="job-1/t0",
            attempt=1,
            kind=kind,
            params=params,
            env={"ROTA_JOB_ID": "job-1", "ROTA_TASK_ID": "job-1/t0", "ROTA_ATTEMPT": "1", **(env or {})},
            timeout=timeout,
            work_dir=str(work),
        )

    return make


def alive(pid: int) -> bool:
    """A zombie counts as dead: it runs nothing, and PID 1 in a container may never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_dead(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Processes a test saw start; killed at teardown so a failing test leaks nothing."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def wait_for_file(path: Path, within: float = 5.0) -> str:
    deadline = time.monotonic() + within
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        await asyncio.sleep(0.02)
    return path.read_text().strip()


@asynccontextmanager
async def call_pool(slots: int = 1) -> AsyncIterator[CallKind]:
    kind = CallKind(slots)
    await kind.start()
    try:
        yield kind
    finally:
        await kind.close()


# noop and sleep


def test_noop_succeeds(make_spec):
    assert run(NoopKind(1).run(make_spec("noop"))).ok


def test_sleep_sleeps_for_seconds(make_spec):
    started = time.monotonic()
    assert run(SleepKind(1).run(make_spec("sleep", seconds=0.2))).ok
    assert time.monotonic() - started >= 0.2


def test_sleep_longer_than_timeout_times_out(make_spec):
    started = time.monotonic()
    result = run(SleepKind(1).run(make_spec("sleep", timeout=0.1, seconds=30)))
    assert not result.ok and result.error == "timed out after 0.1s"
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("seconds", ["5", -1, True])
def test_sleep_rejects_a_bad_seconds_value(make_spec, seconds):
    result = run(SleepKind(1).run(make_spec("sleep", seconds=seconds)))
    assert not result.ok and "'seconds'" in result.error


# shell and python: subprocesses


def test_shell_list_runs_without_a_shell(make_spec):
    result = run(ShellKind(1).run(make_spec("shell", command=["echo", "hello", "$HOME", "*"])))
    assert result == TaskResult(ok=True, exit_code=0, stdout="hello $HOME *\n")


def test_shell_list_failure_reports_exit_code(make_spec):
    result = run(ShellKind(1).run(make_spec("shell", command=["false"])))
    assert not result.ok and result.exit_code == 1 and result.error == "exit code 1"


def test_shell_string_runs_with_sh_and_captures_both_streams(make_spec):
    result = run(ShellKind(1).run(make_spec("shell", command="echo out; echo err >&2; exit 3")))
    assert not result.ok
    assert (result.exit_code, result.stdout, result.stderr, result.error) == (
        3,
        "out\n",
        "err\n",
        "exit code 3",
    )


def test_shell_sees_rota_variables_task_env_and_work_dir(make_spec):
    spec = make_spec(
        "shell",
        env={"ROTA_SHARD_INDEX": "2", "ROTA_SHARD_COUNT": "4"},
        command='echo "$ROTA_JOB_ID $ROTA_TASK_ID $ROTA_ATTEMPT $ROTA_SHARD_INDEX/$ROTA_SHARD_COUNT $GREETING $N"; pwd',
    )
    spec.params["env"] = {"GREETING": "hi", "N": 7}
    result = run(ShellKind(1).run(spec))
    assert result.ok, result
    line, cwd = result.stdout.splitlines()
    assert line == "job-1 job-1/t0 1 2/4 hi 7"
    assert Path(cwd).resolve() == Path(spec.work_dir).resolve()


def test_a_shell_task_inherits_only_what_the_executor_passes_on(make_spec, monkeypatch):
    """PATH and the like, and --pass-env names; never the executor's other variables."""
    monkeypatch.setenv("EXECUTOR_SECRET", "s3cret")
    monkeypatch.setenv("PASSED_ON", "yes")
    command = 'echo "${EXECUTOR_SECRET:-none} ${PASSED_ON:-none}"; command -v ls >/dev/null && echo path'
    result = run(ShellKind(1).run(make_spec("shell", command=command)))
    assert result.stdout == "none none\npath\n"
    monkeypatch.setattr(base, "_passed", ())
    base.pass_env(["PASSED_ON"])
    result = run(ShellKind(1).run(make_spec("shell", command=command)))
    assert result.stdout == "none yes\npath\n"


@pytest.mark.parametrize("command", [None, [], "  ", ["echo", None], {"a": 1}])
def test_shell_rejects_a_bad_command(make_spec, command):
    result = run(ShellKind(1).run(make_spec("shell", command=command)))
    assert not result.ok and "'command'" in result.error


def test_shell_missing_program_fails_cleanly(make_spec):
    result = run(ShellKind(1).run(make_spec("shell", command=["/nonexistent/rota-prog"])))
    assert not result.ok and "cannot start" in result.error and result.exit_code is None


def test_output_is_cut_at_the_cap_and_the_child_is_never_blocked(make_spec):
    code = "import sys; sys.stdout.write('x' * 1_000_000); sys.stderr.write('tail')"
    result = run(ShellKind(1).run(make_spec("shell", timeout=10, command=[sys.executable, "-c", code])))
    assert result.ok and result.truncated
    assert result.stdout == "x" * OUTPUT_CAP + TRUNCATED_MARK
    assert result.stdout.endswith("\n[... truncated]")
    assert result.stderr == "tail"


def test_output_under_the_cap_is_not_marked(make_spec):
    result = run(PythonKind(1).run(make_spec("python", code=f"print('y' * {OUTPUT_CAP - 1}, end='')")))
    assert result.ok and not result.truncated and len(result.stdout) == OUTPUT_CAP - 1


def test_timeout_kills_the_process_group(make_spec, pids):
    spec = make_spec("shell", timeout=0.5, command="sleep 30 & echo $! > child.pid; wait")
    started = time.monotonic()
    result = run(ShellKind(1).run(spec))
    elapsed = time.monotonic() - started
    child = int((Path(spec.work_dir) / "child.pid").read_text())
    pids.append(child)
    assert not result.ok and result.error == "timed out after 0.5s"
    assert elapsed < 1.5
    assert wait_dead(child)


def test_timeout_of_a_plain_sleep(make_spec):
    started = time.monotonic()
    result = run(ShellKind(1).run(make_spec("shell", timeout=0.3, command=["sleep", "30"])))
    assert not result.ok and "timed out" in result.error
    assert time.monotonic() - started < 1.3


def test_leftovers_are_killed_when_the_main_process_exits(make_spec, pids):
    spec = make_spec("shell", timeout=10, command="sleep 30 >/dev/null 2>&1 & echo $!")
    started = time.monotonic()
    result = run(ShellKind(1).run(spec))
    pids.append(int(result.stdout))
    assert result.ok and time.monotonic() - started < 2
    assert wait_dead(int(result.stdout))


def test_cancellation_kills_the_process_group_and_reraises(make_spec, pids):
    spec = make_spec("shell", command="echo $$ > leader.pid; sleep 30 & echo $! > child.pid; wait")

    async def scenario() -> None:
        task = asyncio.create_task(ShellKind(1).run(spec))
        try:
            pids.append(int(await wait_for_file(Path(spec.work_dir) / "leader.pid")))
            pids.append(int(await wait_for_file(Path(spec.work_dir) / "child.pid")))
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    assert all(wait_dead(pid) for pid in pids)


def test_python_runs_code_with_the_executor_interpreter(make_spec):
    code = "import os, sys; print(sys.executable); print(os.environ['ROTA_TASK_ID'])"
    result = run(PythonKind(1).run(make_spec("python", code=code)))
    assert result.ok
    assert result.stdout.splitlines() == [sys.executable, "job-1/t0"]


def test_python_exception_fails_with_the_traceback(make_spec):
    result = run(PythonKind(1).run(make_spec("python", code="raise ValueError('boom')")))
    assert not result.ok and result.exit_code == 1
    assert "ValueError: boom" in result.stderr


def test_python_exit_status_is_reported(make_spec):
    result = run(PythonKind(1).run(make_spec("python", code="import sys; sys.exit(4)")))
    assert (result.ok, result.exit_code, result.error) == (False, 4, "exit code 4")


def test_python_in_a_spare_interpreter_behaves_as_a_fresh_one(make_spec):
    """A started kind keeps spares with gRPC imported ahead; a task in one sees its own environment,
    directory, argv, __main__ and empty stdin, and fails or exits just as it would in a new process
    (no frame of the spare in the traceback). A task setting a PYTHON* variable starts fresh."""
    probe = (
        "import os, sys; print('grpc' in sys.modules, sys.argv, __name__, os.getcwd(), "
        "os.environ['ROTA_TASK_ID'], os.environ.get('MINE'), repr(sys.stdin.read()))"
    )

    async def scenario() -> None:
        kind = PythonKind(2)
        await kind.start()
        try:
            spec = make_spec("python", code=probe, env={"MINE": "yes"})
            warm = await kind.run(spec)
            assert warm.ok, warm
            assert warm.stdout.split() == [
                "True",
                "['-c']",
                "__main__",
                spec.work_dir,
                "job-1/t0",
                "yes",
                "''",
            ]
            boom = await kind.run(make_spec("python", code="def f():\n    raise ValueError('boom')\nf()"))
            assert not boom.ok and boom.exit_code == 1
            assert boom.stderr.startswith('Traceback (most recent call last):\n  File "<string>", line 3')
            assert "ValueError: boom" in boom.stderr and "_become" not in boom.stderr
            code = await kind.run(make_spec("python", code="import sys; sys.exit(4)"))
            assert (code.ok, code.exit_code) == (False, 4)
            for start_var in ({"PYTHONHASHSEED": "7"}, {"LC_ALL": "C"}):
                cold = await kind.run(make_spec("python", code=probe, env=start_var))
                assert cold.ok and cold.stdout.split()[0] == "False", start_var
        finally:
            await kind.close()

    run(scenario())


def test_spares_start_one_at_a_time(make_spec):
    """The first spare at once, the others START_SPACING apart: side by side they would take the
    CPU from running tasks."""
    tick = os.sysconf("SC_CLK_TCK")

    def started(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19]) / tick

    async def scenario() -> None:
        kind = PythonKind(3)
        await kind.start()
        try:
            assert kind.spares is not None and len(kind.spares._idle) == 1
            for _ in range(200):
                if len(kind.spares._idle) == 3:
                    break
                await asyncio.sleep(0.05)
            at = [started(p.pid) for p in kind.spares._idle]
            assert len(at) == 3 and all(
                b - a >= spares.START_SPACING - 0.05 for a, b in zip(at[:-1], at[1:], strict=True)
            ), at
            result = await kind.run(make_spec("python", code="import sys; print('grpc' in sys.modules)"))
            assert result.ok and result.stdout.strip() == "True"
        finally:
            await kind.close()

    run(scenario())


def test_python_in_a_spare_is_killed_with_its_group_on_timeout(make_spec, pids):
    async def scenario() -> None:
        kind = PythonKind(1)
        await kind.start()
        try:
            code = "import os, subprocess, time; print(os.getpid(), flush=True); time.sleep(30)"
            result = await kind.run(make_spec("python", code=code, timeout=1.0))
            assert not result.ok and "timed out" in result.error
            pids.append(int(result.stdout.split()[0]))
        finally:
            await kind.close()

    run(scenario())
    assert all(wait_dead(pid) for pid in pids)


def test_python_requires_code(make_spec):
    result = run(PythonKind(1).run(make_spec("python")))
    assert not result.ok and "'code'" in result.error


# go


def test_go_is_unavailable_without_a_toolchain(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert GoKind().available() is False


@pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain on PATH")
def test_go_runs_hello_world(make_spec):
    code = 'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() { fmt.Println("hello", os.Getenv("ROTA_JOB_ID")) }\n'
    kind = GoKind(1)
    assert kind.available()
    result = run(kind.run(make_spec("go", timeout=120, code=code)))
    assert result.ok, result
    assert result.stdout == "hello job-1\n"
    broken = run(kind.run(make_spec("go", timeout=120, code="package main\n\nfunc main() { undefined() }\n")))
    assert not broken.ok and broken.exit_code != 0 and "undefined" in broken.stderr


# call: the warm worker pool


def test_call_returns_the_function_value(make_spec):
    async def scenario() -> None:
        async with call_pool() as kind:
            result = await kind.run(make_spec("call", function="operator:mul", args=[6, 7]))
            assert result == TaskResult(ok=True, value=42)
            result = await kind.run(
                make_spec("call", function="builtins:int", args=["ff"], kwargs={"base": 16})
            )
            assert result.value == 255
            result = await kind.run(make_spec("call", function="os.path:join", args=["a", "b"]))
            assert result.value == "a/b"

    run(scenario())


def test_call_scratch_dir_is_emptied_between_tasks_and_removed_with_its_worker(make_spec):
    """No directory per task, but what one task leaves in its cwd is gone before the next runs."""

    async def scenario() -> str:
        async with call_pool() as kind:
            wrote = await kind.run(make_spec("call", function="pathlib:Path.mkdir", args=["left-behind"]))
            assert wrote.ok, wrote
            cwd = (await kind.run(make_spec("call", function="os:getcwd"))).value
            listed = await kind.run(make_spec("call", function="os:listdir", args=["."]))
            assert listed.value == []
            away = await kind.run(make_spec("call", function="os:chdir", args=["/"]))
            assert away.ok
            again = await kind.run(make_spec("call", function="os:getcwd"))
            assert again.value == cwd
            assert Path(cwd).is_dir()
        return str(cwd)

    cwd = run(scenario())
    assert not Path(cwd).exists()


def test_call_captures_prints_and_sees_the_task_env(make_spec):
    async def scenario() -> None:
        async with call_pool() as kind:
            printed = await kind.run(make_spec("call", function="builtins:print", args=["hello"]))
            assert printed.ok and printed.stdout == "hello\n" and printed.value is None
            spec = make_spec(
                "call", env={"ROTA_SHARD_INDEX": "3"}, function="os:getenv", args=["ROTA_SHARD_INDEX"]
            )
            assert (await kind.run(spec)).value == "3"
            cwd = await kind.run(make_spec("call", function="os:getcwd"))
            assert Path(cwd.value).resolve().parent == Path(spec.work_dir).resolve()
            leaked = make_spec("call", function="os:getenv", args=["ROTA_SHARD_INDEX"])
            leaked.env.pop("ROTA_SHARD_INDEX", None)
            assert (await kind.run(leaked)).value is None

    run(scenario())


def test_calls_in_one_batch_each_see_only_their_own_variables(make_spec):
    async def scenario() -> None:
        async with call_pool() as kind:
            first = Ride(
                make_spec("call", env={"A_VAR": "1", "B_VAR": "x"}, function="os:getenv", args=["A_VAR"])
            )
            second = Ride(make_spec("call", env={"B_VAR": "y"}, function="os:getenv", args=["A_VAR"]))
            third = Ride(make_spec("call", env={"B_VAR": "y"}, function="os:getenv", args=["B_VAR"]))
            changed = Ride(make_spec("call", env={"B_VAR": "y"}, function="os:putenv", args=["B_VAR", "z"]))
            environ = Ride(make_spec("call", env={"B_VAR": "y"}, function="os:environ.pop", args=["B_VAR"]))
            after = Ride(make_spec("call", env={"B_VAR": "y"}, function="os:getenv", args=["B_VAR"]))
            await kind.run_batch([first, second, third, changed, environ, after])
            values = [r.result.result().value for r in (first, second, third, environ, after)]
            assert values == ["1", None, "y", "y", "y"], values  # a value the function removed comes back
            later = await kind.run(make_spec("call", function="os:getenv", args=["B_VAR"]))
            assert later.value is None  # the batch's variables were taken back

    run(scenario())


def test_call_exception_reports_type_message_and_traceback(make_spec):
    async def scenario() -> None:
        async with call_pool() as kind:
            result = await kind.run(make_spec("call", function="operator:truediv", args=[1, 0]))
            assert not result.ok and result.error == "ZeroDivisionError: division by zero"
            assert "Traceback" in result.stderr and result.stderr.rstrip().endswith(
                "ZeroDivisionError: division by zero"
            )
            exited = await kind.run(make_spec("call", function="sys:exit", args=[5]))
            assert not exited.ok and exited.error == "SystemExit: 5"
            assert (await kind.run(make_spec("call", function="operator:mul", args=[2, 3]))).value == 6

    run(scenario())


def test_call_import_errors_fail_the_task(make_spec):
    async def scenario() -> None:
        async with call_pool() as kind:
            missing = await kind.run(make_spec("call", function="rota_no_such_module:fn"))
            assert not missing.ok and missing.error.startswith("ModuleNotFoundError: No module named")
            assert "rota_no_such_module" in missing.stderr
            no_attr = await kind.run(make_spec("call", function="operator:no_such_function"))
            assert not no_attr.ok and no_attr.error.startswith("AttributeError")

    run(scenario())


@pytest.mark.parametrize(
    "params",
    [
        {"function": "operator"},
        {"function": ":mul"},
        {"function": 3},
        {"function": "operator:mul", "args": "x"},
    ],
)
def test_call_rejects_bad_params_without_using_a_worker(make_spec, params):
    result = run(CallKind(1).run(make_spec("call", **params)))
    assert not result.ok and result.error.startswith("call: '")


def test_call_non_json_value_fails_naming_the_type(make_spec):
    async def scenario() -> None:
        async with call_pool() as kind:
            result = await kind.run(make_spec("call", function="builtins:object"))
            assert not result.ok and result.value is None
            assert "object" in result.error and "JSON" in result.error
            nested = await kind.run(make_spec("call", function="builtins:set", args=[[1]]))
            assert not nested.ok and "set" in nested.error

    run(scenario())


def test_call_pool_is_warm(make_spec):
    async def scenario() -> None:
        async with call_pool() as kind:
            first = await kind.run(make_spec("call", function="os:getpid"))
            second = await kind.run(make_spec("call", function="os:getpid"))
            assert first.ok and first.value == second.value != os.getpid()

    run(scenario())


def test_call_pool_starts_small_and_grows_to_its_slots_as_calls_need(make_spec):
    """Two workers at start; four calls at once make it four; more calls never make it more."""

    def workers() -> int:
        return sum(p.name == "rota-call" for p in multiprocessing.active_children())

    async def scenario() -> None:
        async with call_pool(slots=4) as kind:
            assert workers() == 2
            naps = [kind.run(make_spec("call", function="time:sleep", args=[0.3])) for _ in range(4)]
            assert all(r.ok for r in await asyncio.gather(*naps))
            assert workers() == 4
            pids = await asyncio.gather(
                *(kind.run(make_spec("call", function="os:getpid")) for _ in range(8))
            )
            assert len({r.value for r in pids}) <= 4 and workers() == 4

    run(scenario())


def test_a_call_timeout_runs_from_when_its_worker_is_up_not_from_its_spawn(make_spec):
    """Calls that make the pool grow wait for their new workers to start (a fifth of a second or
    more each, four at once here) without that wait counting against their timeout."""

    async def scenario() -> None:
        async with call_pool(slots=6) as kind:
            await asyncio.sleep(1.0)  # the two warm workers are up
            quick = [
                kind.run(make_spec("call", function="time:sleep", args=[0.01], timeout=0.25))
                for _ in range(6)
            ]
            results = await asyncio.gather(*quick)
            assert all(r.ok for r in results), [r.error for r in results]

    run(scenario())


def test_call_runs_slots_tasks_in_parallel(make_spec):
    async def scenario() -> None:
        async with call_pool(slots=2) as kind:
            warm = await asyncio.gather(
                *(kind.run(make_spec("call", function="os:getpid")) for _ in range(2))
            )
            assert len({r.value for r in warm}) == 2
            started = time.monotonic()
            naps = await asyncio.gather(
                *(kind.run(make_spec("call", function="time:sleep", args=[0.5])) for _ in range(2))
            )
            assert all(r.ok for r in naps)
            assert time.monotonic() - started < 0.9

    run(scenario())


def test_call_timeout_replaces_only_that_worker(make_spec, pids):
    async def scenario() -> None:
        async with call_pool() as kind:
            old = (await kind.run(make_spec("call", function="os:getpid"))).value
            pids.append(old)
            started = time.monotonic()
            result = await kind.run(make_spec("call", timeout=0.5, function="time:sleep", args=[30]))
            assert not result.ok and result.error == "timed out after 0.5s"
            assert time.monotonic() - started < 1.5
            assert wait_dead(old)
            new = await kind.run(make_spec("call", function="os:getpid"))
            pids.append(new.value)
            assert new.ok and new.value != old
            assert (await kind.run(make_spec("call", function="operator:mul", args=[6, 7]))).value == 42

    run(scenario())


def test_call_worker_that_dies_is_reported_and_replaced(make_spec, pids):
    async def scenario() -> None:
        async with call_pool() as kind:
            old = (await kind.run(make_spec("call", function="os:getpid"))).value
            pids.append(old)
            result = await kind.run(make_spec("call", function="os:_exit", args=[3]))
            assert not result.ok and result.error == "worker process died (exit code 3)"
            assert result.exit_code == 3
            new = await kind.run(make_spec("call", function="os:getpid"))
            pids.append(new.value)
            assert new.ok and new.value != old

    run(scenario())


def test_call_cancellation_kills_the_worker_and_its_children(make_spec, pids):
    async def scenario() -> None:
        async with call_pool() as kind:
            old = (await kind.run(make_spec("call", function="os:getpid"))).value
            pids.append(old)
            spawn = make_spec("call", function="subprocess:run")
            spawn.params["args"] = [f"sleep 30 & echo $! > {spawn.work_dir}/child.pid; wait"]
            spawn.params["kwargs"] = {"shell": True}
            task = asyncio.create_task(kind.run(spawn))
            try:
                pids.append(int(await wait_for_file(Path(spawn.work_dir) / "child.pid")))
            finally:
                task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert all(wait_dead(pid) for pid in pids)
            assert (await kind.run(make_spec("call", function="operator:mul", args=[6, 7]))).value == 42

    run(scenario())


def test_call_close_stops_every_worker(make_spec, pids):
    async def scenario() -> None:
        kind = CallKind(2)
        try:
            await kind.start()
            results = await asyncio.gather(
                *(kind.run(make_spec("call", function="os:getpid")) for _ in range(2))
            )
            pids.extend(r.value for r in results)
        finally:
            await kind.close()
        assert not any(alive(pid) for pid in pids)
        assert not (await kind.run(make_spec("call", function="os:getpid"))).ok

    run(scenario())


# registry


def test_discover_finds_all_builtins():
    found = registry.discover()
    for name, cls in BUILTINS.items():
        assert found[name] is cls


def test_load_kinds_instantiates_the_available_ones(monkeypatch):
    monkeypatch.setattr(GoKind, "available", lambda self: False)
    kinds = registry.load_kinds(3)
    assert set(kinds) == set(BUILTINS) - {"go"}
    assert isinstance(kinds["call"], CallKind) and kinds["call"].slots == 3


def test_load_kinds_allow_filters():
    assert set(registry.load_kinds(1, allow=["shell", "noop"])) == {"shell", "noop"}
    assert registry.load_kinds(1, allow=[]) == {}


def test_load_kinds_unknown_allowed_name_is_an_error():
    with pytest.raises(ValueError, match=r"'bogus'.*available: call, go, noop, python, shell, sleep"):
        registry.load_kinds(1, allow=["shell", "bogus"])


class _PluginKind(Kind):
    name = "plugin"

    async def run(self, spec: TaskSpec) -> TaskResult:
        return TaskResult(ok=True)


def test_broken_plugins_are_logged_and_skipped(monkeypatch, caplog):
    group = registry.ENTRY_POINT_GROUP
    eps = [
        EntryPoint("noop", "rota.executor.kinds.noop:NoopKind", group),
        EntryPoint("broken", "rota_no_such_plugin:Kind", group),
        EntryPoint("notakind", "os:getcwd", group),
        EntryPoint("plugin", f"{__name__}:_PluginKind", group),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    with caplog.at_level(logging.ERROR, logger="rota.kinds"):
        found = registry.discover()
    assert found == {"noop": NoopKind, "plugin": _PluginKind}
    logged = caplog.text
    assert "'broken'" in logged and "'notakind'" in logged


def test_call_batch_runs_on_one_worker_and_settles_each_call_in_order(make_spec):
    async def scenario() -> None:
        async with call_pool() as kind:
            rides = [Ride(make_spec("call", function="os:getpid")) for _ in range(5)]
            rides.append(Ride(make_spec("call", function="operator:mul", args=[6, "x" * 2])))
            rides.append(Ride(make_spec("call", function="operator:mul", args=[6, 7])))
            await kind.run_batch(rides)
            results = [r.result.result() for r in rides]
            assert len({r.value for r in results[:5]}) == 1  # one worker, one message
            assert results[5].ok and results[5].value == "xx" * 6
            assert results[6].value == 42
            assert all(r.seconds is not None and r.seconds >= 0 for r in results)

    run(scenario())


def test_a_quick_calls_result_is_not_held_up_by_a_long_call_after_it(make_spec):
    """Replies wait a moment for others to share a pipe write, but never for the next call to end."""

    async def scenario() -> None:
        async with call_pool() as kind:
            quick = Ride(make_spec("call", function="operator:mul", args=[6, 7]))
            long = Ride(make_spec("call", function="time:sleep", args=[1.5]))
            started = time.monotonic()
            batch = asyncio.create_task(kind.run_batch([quick, long]))
            assert (await asyncio.shield(quick.result)).value == 42
            assert time.monotonic() - started < 0.75, "the quick call's result waited for the long one"
            await asyncio.wait_for(batch, 10)
            assert long.result.result().ok

    run(scenario())


def test_a_worker_sends_the_replies_of_quick_calls_together(make_spec, monkeypatch):
    from rota.executor.kinds import call

    received: list[int] = []
    reader = call._receive

    def counting(conn):  # noqa: ANN001, ANN202
        message = reader(conn)
        received.append(len(message.get("replies", ())))
        return message

    monkeypatch.setattr(call, "_receive", counting)

    async def scenario() -> None:
        async with call_pool() as kind:
            rides = [Ride(make_spec("call", function="operator:mul", args=[i, 2])) for i in range(20)]
            await kind.run_batch(rides)
            assert [r.result.result().value for r in rides] == [2 * i for i in range(20)]

    run(scenario())
    replies = [n for n in received if n]
    assert sum(replies) == 20 and len(replies) < 10, replies


def test_call_batch_skips_a_withdrawn_call_and_a_timeout_costs_only_the_running_one(make_spec, tmp_path):
    marks = tmp_path / "marks"

    async def scenario() -> None:
        async with call_pool() as kind:
            slow = Ride(make_spec("call", function="time:sleep", args=[0.5]))
            withdrawn = Ride(
                make_spec("call", function="pathlib:Path.touch", args=[str(marks / "withdrawn")])
            )
            hung = Ride(make_spec("call", timeout=0.3, function="time:sleep", args=[30]))
            after = Ride(make_spec("call", function="pathlib:Path.touch", args=[str(marks / "after")]))
            batch = asyncio.create_task(kind.run_batch([slow, withdrawn, hung, after]))
            await asyncio.sleep(0.1)
            withdrawn.cancel()  # still queued in the worker behind the slow call: skipped there
            await asyncio.wait_for(batch, 10)
            assert slow.result.result().ok
            assert not withdrawn.result.result().ok
            assert hung.result.result().error.startswith("timed out")
            assert after.result.result().ok  # run on a fresh worker after the hung one was killed

    marks.mkdir()
    run(scenario())
    assert not (marks / "withdrawn").exists() and (marks / "after").exists()


class _Planted:
    """Unpickling this would touch a file: what code in a call worker could do to the executor."""

    path = ""

    def __reduce__(self):  # noqa: ANN204
        return (Path(self.path).touch, ())


def test_the_executor_reads_its_call_workers_as_json_never_pickle(tmp_path):
    import multiprocessing
    import pickle

    from rota.executor.kinds import call

    ours, theirs = multiprocessing.Pipe()
    try:
        _Planted.path = str(tmp_path / "ran")
        theirs.send_bytes(pickle.dumps(_Planted()))
        with pytest.raises(OSError, match="unreadable"):
            call._receive(ours)
        assert not (tmp_path / "ran").exists()
        theirs.send_bytes(b"[1, 2]")
        with pytest.raises(OSError, match="not a JSON object"):
            call._receive(ours)
        call._send(theirs, {"i": 3, "ok": True, "value": "42"})
        assert call._receive(ours) == {"i": 3, "ok": True, "value": "42"}
    finally:
        ours.close()
        theirs.close()

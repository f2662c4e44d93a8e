"""What every task kind implements, and the subprocess plumbing the process-based kinds share."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rota.common.limits import Limits
from rota.common.results import OUTPUT_CAP, TRUNCATED_MARK
from rota.executor import confine, run_as

#: A task's log file (``TaskSpec.log_prefix``) stops growing here: the disk is shared by every task.
LOG_FILE_CAP = 16 * 1024 * 1024
LOG_TRUNCATED_MARK = b"\n[... log truncated at 16 MiB]\n"
#: The suffixes of a task's stdout and stderr log files, in that order.
LOG_SUFFIXES = (".out", ".err")

log = logging.getLogger("rota.executor")

# After the task's main process exits, output still in the pipes gets this long to arrive before whatever
# the task left running in its process group is killed.
_DRAIN_GRACE = 1.0


@dataclass
class TaskSpec:
    """One attempt of one task, as the executor hands it to a kind."""

    job_id: str
    task_id: str
    attempt: int
    kind: str
    params: dict[str, Any]
    env: dict[str, str]
    timeout: float | None
    work_dir: str
    #: When set, a kind that can stream what the task writes to ``<log_prefix>.out`` and ``.err`` as it
    #: arrives, for ``master-client logs`` (run_subprocess does); the result's capture is unaffected.
    log_prefix: str = ""
    #: What bounds the attempt: the task's own limits, else the executor's defaults (all but the
    #: wall clock, which is ``timeout``). Process kinds get them through run_subprocess.
    limits: Limits = field(default_factory=Limits)


@dataclass
class TaskResult:
    """What a kind reports; ``error`` is for humans, ``ok`` is what the scheduler acts on."""

    ok: bool
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    value: Any = None
    error: str = ""
    truncated: bool = False
    #: How long the task itself ran, when the kind knows better than the time it held a slot
    #: (a call that waited in its batch); the executor's flow control uses it.
    seconds: float | None = field(default=None, compare=False)


class Ride:
    """One call task handed to the pool: its spec, and the future its result lands in.

    ``cancel`` is how the task's owner withdraws it: a call not yet started is skipped, one
    running is stopped by killing its worker (and its process group)."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.result: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self.cancelled = False
        self._on_cancel: Callable[[Ride], None] | None = None

    def cancel(self) -> None:
        if not self.cancelled and not self.result.done():
            self.cancelled = True
            if self._on_cancel is not None:
                self._on_cancel(self)


def settle(ride: Ride, result: TaskResult) -> None:
    if not ride.result.done():
        ride.result.set_result(result)


class Kind(abc.ABC):
    """A way of running a task. Subclasses are found through the ``rota.kinds`` entry-point group."""

    name: str = ""
    #: False for kinds that never touch the file system: they are spared a scratch directory per task.
    needs_work_dir: bool = True
    #: Log files for ``master-client logs``: True when the kind streams output to them as it runs
    #: (``TaskSpec.log_prefix``), None when it captures output and the executor writes the files at
    #: the end (only if there is output), False when it prints nothing.
    log_files: bool | None = True
    #: More than 1 for a kind that runs several tasks back to back in one slot (``run_batch``).
    batch_size: int = 1
    #: False for kinds that run no task code: their attempts get no secret for task calls (rota.task).
    task_calls: bool = True

    def __init__(self, slots: int = 1) -> None:
        self.slots = max(1, slots)

    def available(self) -> bool:
        """False when this host cannot run the kind (a missing toolchain): the executor then omits it."""
        return True

    async def start(self) -> None:  # noqa: B027 - a no-op is the right default
        """Warm up before the first task, so start-up cost is not paid by a task's timeout."""

    @abc.abstractmethod
    async def run(self, spec: TaskSpec) -> TaskResult:
        """Run one attempt; honour ``spec.timeout``; on cancellation kill everything and re-raise."""

    async def run_batch(self, rides: list[Ride]) -> None:
        """Run several attempts in one slot, settling each ride as it ends (``batch_size`` > 1)."""
        for ride in rides:
            if not ride.cancelled:
                settle(ride, await self.run(ride.spec))

    async def close(self) -> None:  # noqa: B027 - a no-op is the right default
        """Release what ``start`` acquired."""


class ParamError(ValueError):
    """A task's kind-specific parameters are unusable; reported as a failed attempt, not a crash."""


def bad_params(spec: TaskSpec, exc: ParamError) -> TaskResult:
    return TaskResult(ok=False, error=f"{spec.kind}: {exc}")


def timed_out(timeout: float | None) -> str:
    return f"timed out after {timeout:g}s" if timeout is not None else "timed out"


def cap_text(text: str, truncated: bool) -> str:
    return text + TRUNCATED_MARK if truncated else text


def param_env(spec: TaskSpec) -> dict[str, str]:
    """The task's own ``env`` table, checked, with TOML numbers and booleans turned into strings."""
    raw = spec.params.get("env", {})
    if not isinstance(raw, Mapping):
        raise ParamError("'env' must be a table of strings")
    env: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise ParamError(f"'env' entry {key!r} must map a name to a string")
        env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


#: What a task inherits of the executor's environment: enough to find and run programs, never the
#: executor's own credentials (an executor started with a cloud token in its environment must not
#: hand it to every job). ``--pass-env`` adds names.
INHERITED = (
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL", "TERM",
    "PYTHONPATH", "VIRTUAL_ENV", "GOPATH", "GOROOT", "GOCACHE",
)  # fmt: skip
_passed: tuple[str, ...] = ()


def pass_env(names: Iterable[str]) -> None:
    """Let tasks inherit these variables of the executor too (its ``--pass-env``)."""
    global _passed
    _passed = tuple(names)


_defaults = Limits()


def task_defaults(limits: Limits) -> None:
    """What bounds a task that asks for no limits of its own (the executor's --task-default-limits,
    within its maxima): the call kind's warm workers run under these."""
    global _defaults
    _defaults = replace(limits, timeout=None)


def default_limits() -> Limits:
    return _defaults


def inherited_env() -> dict[str, str]:
    """The part of the executor's environment every task gets."""
    allowed = {*INHERITED, *_passed}
    return {k: v for k, v in os.environ.items() if k in allowed or k.startswith("LC_")}


def task_env(spec: TaskSpec) -> dict[str, str]:
    """The environment a subprocess task sees: what it inherits of the executor's (INHERITED), then
    Rota's variables, then the task's own."""
    return {**inherited_env(), **spec.env, **param_env(spec)}


def kill_group(pid: int) -> None:
    """SIGKILL a whole process group whose leader was started with ``start_new_session=True``."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_marked(env: Mapping[str, str], rounds: int = 5) -> int:
    """SIGKILL every process whose environment names this attempt (``ROTA_TASK_ID`` and
    ``ROTA_ATTEMPT``): what the task started and then left its process group (``setsid()``, a
    daemon) and would outlive it. Returns how many were killed. Reads /proc; a few ms at most."""
    task_id, attempt = env.get("ROTA_TASK_ID"), env.get("ROTA_ATTEMPT")
    if not task_id or not attempt:
        return 0
    markers = (f"\0ROTA_TASK_ID={task_id}\0".encode(), f"\0ROTA_ATTEMPT={attempt}\0".encode())
    me, killed = os.getpid(), 0
    for _ in range(rounds):  # again, for what forked while the last round ran
        found = 0
        try:
            pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
        except OSError:
            return killed
        for pid in pids:
            if pid == me:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    data = b"\0" + f.read()
            except OSError:
                continue
            if all(m in data for m in markers):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    found += 1
        killed += found
        if not found:
            break
    return killed


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _LogFile:
    """One stream's log file, written unbuffered so that a reader following it sees output at once."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "wb", buffering=0)  # closed by run_subprocess
        self.size = 0
        self.full = False

    def write(self, chunk: bytes) -> None:
        if self.full:
            return
        room = LOG_FILE_CAP - self.size
        if len(chunk) <= room:
            data = chunk
        else:
            data, self.full = chunk[:room] + LOG_TRUNCATED_MARK, True
        try:
            self.file.write(data)
        except OSError as exc:  # a full disk must not fail the task: its result is still captured
            log.warning("cannot write %s: %s; its log stops here", self.file.name, exc)
            self.full = True
        self.size += len(data)

    def close(self) -> None:
        self.file.close()


def _open_logs(prefix: str) -> list[_LogFile | None]:
    """Created before the process starts, so a reader can tell a streaming task from one that is not."""
    files: list[_LogFile | None] = []
    if not prefix:
        return [None for _ in LOG_SUFFIXES]
    with contextlib.suppress(OSError):  # opening the files below says what is wrong
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
    for suffix in LOG_SUFFIXES:
        try:
            files.append(_LogFile(prefix + suffix))
        except OSError as exc:
            log.warning("cannot create log file %s%s: %s", prefix, suffix, exc)
            files.append(None)
    return files


class _Capture:
    """Reads a pipe to EOF, keeping the first OUTPUT_CAP bytes; reading on past the cap keeps the child
    from blocking on a full pipe, and what was kept survives the reader being cancelled. Every chunk also
    goes to the log file, if there is one, as it arrives."""

    def __init__(self, stream: asyncio.StreamReader, log_file: _LogFile | None = None) -> None:
        self.data = bytearray()
        self.truncated = False
        self.log_file = log_file
        self.task = asyncio.ensure_future(self._drain(stream))

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            if self.log_file is not None:
                self.log_file.write(chunk)
            room = OUTPUT_CAP - len(self.data)
            if len(chunk) > room:
                self.truncated = True
                chunk = chunk[: max(room, 0)]
            self.data += chunk

    def text(self) -> str:
        return cap_text(self.data.decode("utf-8", errors="replace"), self.truncated)


async def run_subprocess(
    argv: Sequence[str],
    spec: TaskSpec,
    env: Mapping[str, str],
    started: asyncio.subprocess.Process | None = None,
) -> TaskResult:
    """Run ``argv`` as the task: own session, cwd ``spec.work_dir``, output capped (and streamed to the
    log files of ``spec.log_prefix``), timeout and cancellation enforced by killing the process group,
    ``spec.limits`` by a cgroup or rlimits (``rota.executor.confine``). The task owns its group, so
    anything it leaves running after its main process exits is killed too. ``started``: a process
    already started as the task would have been (a spare interpreter), supervised the same way."""
    bounds = _confinement(spec)
    logs = _open_logs(spec.log_prefix)
    try:
        return await _run_process(argv, spec, env, logs, bounds, started)
    finally:
        for f in logs:
            if f is not None:
                f.close()
        if bounds is not None and bounds.cgroup:
            await asyncio.to_thread(bounds.close)


def _confinement(spec: TaskSpec) -> confine.Confinement | None:
    if not spec.limits:
        return None
    tree = confine.mode().cgroups
    try:
        return confine.Confinement(spec.limits, tree)
    except OSError as exc:  # a cgroup that cannot be made must not fail every task: rlimits still bound it
        log.warning("cannot make a cgroup for the task (%s); it runs under rlimits", exc)
        return confine.Confinement(spec.limits, None)


async def _run_process(
    argv: Sequence[str],
    spec: TaskSpec,
    env: Mapping[str, str],
    logs: list[_LogFile | None],
    bounds: confine.Confinement | None,
    started: asyncio.subprocess.Process | None = None,
) -> TaskResult:
    try:
        proc = started or await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=spec.work_dir,
            env=run_as.task_env(env),
            start_new_session=True,
            preexec_fn=bounds.preexec() if bounds is not None else None,
            **run_as.child_options(),
        )
    except OSError as exc:
        return TaskResult(ok=False, error=f"cannot start {argv[0]!r}: {exc.strerror or exc}")
    except subprocess.SubprocessError as exc:  # the cgroup or an rlimit refused in the child
        return TaskResult(ok=False, error=f"cannot start {argv[0]!r} in its limits: {exc}")
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Capture(proc.stdout, logs[0]), _Capture(proc.stderr, logs[1])
    watchdog = None
    if bounds is not None and bounds.watches_processes():
        watchdog = asyncio.ensure_future(_watch_processes(proc.pid, bounds))
    try:
        expired = await _supervise(proc, [out.task, err.task], spec.timeout)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        kill_group(proc.pid)
        if bounds is not None:
            bounds.kill()
        await _settle(proc, [out.task, err.task])
        # What left the group (setsid, a daemon) goes too: a task leaves nothing running.
        await asyncio.to_thread(kill_marked, env)
    code = proc.returncode
    result = TaskResult(
        ok=not expired and code == 0,
        exit_code=code,
        stdout=out.text(),
        stderr=err.text(),
        truncated=out.truncated or err.truncated,
    )
    if expired:
        result.error = timed_out(spec.timeout)
    elif code is None:
        result.error = "process could not be reaped"
    elif code != 0:
        reason = bounds.verdict(code, result.stderr) if bounds is not None else ""
        result.error = reason or describe_exit(code)
    return result


async def _watch_processes(session: int, bounds: confine.Confinement) -> None:
    """Rlimit mode's process cap: kill the task's group once its session holds too many processes."""
    while True:
        await asyncio.sleep(confine.PROCESS_POLL)
        over = await asyncio.to_thread(bounds.count_over, session)
        if over:
            bounds.too_many = over
            kill_group(session)
            return


async def _supervise(
    proc: asyncio.subprocess.Process, readers: list[asyncio.Future[None]], timeout: float | None
) -> bool:
    """Wait for the main process, then briefly for its output; True when the timeout expired first."""
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        return True
    await asyncio.wait(readers, timeout=_DRAIN_GRACE)
    return False


async def _settle(proc: asyncio.subprocess.Process, readers: list[asyncio.Future[None]]) -> None:
    """After the group was killed: collect the last output and reap, never waiting long or leaking a reader."""
    pending: list[asyncio.Future[Any]] = [*readers, asyncio.ensure_future(proc.wait())]
    try:
        await asyncio.wait(pending, timeout=_DRAIN_GRACE)
    finally:
        for fut in pending:
            if fut.done() and not fut.cancelled():
                fut.exception()
            else:
                fut.cancel()

"""Spare interpreters for the ``python`` kind: started ahead, with the modules Python tasks most
often begin with already imported, each waiting on its stdin for one task.

A ``python`` task costs a new interpreter and its imports: 0.14 s of CPU for asyncio, gRPC and
protobuf alone, and seconds when several start at once on a busy machine (as when a dead
executor's tasks move here). A spare has paid that ahead. Handed a task (its code, environment and
directory) it becomes the task, and is supervised as a fresh process would be: its own session,
the same limits, the same kill on timeout or cancellation. It serves one task; a new spare is
started a moment later, so that refills do not slow a burst of starts, and spares start one at a
time, so that refilling does not slow the tasks running.

A spare is used only where it is indistinguishable from a fresh process: the executor's default
limits under rlimits (a cgroup is made per task, after a spare started), and a task environment
whose ``PYTHON*``, ``LC_*`` and ``LANG`` are the spare's (the interpreter reads them as it starts).
What a task starts inherits its environment, so ``kill_marked`` finds it as before; the spare's own
``/proc/<pid>/environ`` still shows the environment it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Mapping

from rota.common.limits import Limits
from rota.executor import confine, run_as

log = logging.getLogger("rota.executor")

#: Imported by a spare before it is handed a task (what one that fails to import is skipped).
PRELOAD = ("asyncio", "json", "grpc", "google.protobuf.message", "rota.task")
#: Spares kept per executor, at most (each about 35 MB idle); never more than its slots.
KEEP_MAX = 8
#: How long after a spare is taken its replacement starts.
REFILL_DELAY = 1.0
#: Spares start one at a time, this far apart: eight start-ups side by side (a third of a second
#: of CPU each) took the CPU from the running tasks for a second or more on a busy machine.
START_SPACING = 0.3

BOOT = r"""
import os, sys
for _name in sys.argv[1].split(","):
    try:
        __import__(_name)
    except Exception:
        pass
_line = sys.stdin.buffer.readline()
if not _line:
    raise SystemExit(0)


def _become(go):
    import os, sys  # its own names: the loop below empties __main__, where the module's live
    code = compile(go["code"], "<string>", "exec")
    os.environ.clear()
    os.environ.update(go["env"])
    os.chdir(go["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.argv = ["-c"]
    main = sys.modules["__main__"].__dict__
    for key in [k for k in main if not (k.startswith("__") and k.endswith("__"))]:
        del main[key]
    try:
        exec(code, main)
    except SystemExit:
        raise
    except BaseException as e:
        tb = e.__traceback__.tb_next  # the task's frames only, as a fresh interpreter shows them
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        raise SystemExit(1)


_become(__import__("json").loads(_line))
"""


def _at_start(name: str) -> bool:
    """A variable the interpreter reads as it starts (sys.path, hashing, stdio encoding)."""
    return name.startswith(("PYTHON", "LC_")) or name == "LANG"


class Spares:
    """Up to ``keep`` idle spare interpreters under ``limits``, refilled as they are taken."""

    def __init__(self, keep: int, limits: Limits, inherited: Mapping[str, str]) -> None:
        self.keep = keep
        self.limits = limits
        self.env = run_as.task_env(inherited)
        self._idle: list[asyncio.subprocess.Process] = []
        self._starting = 0
        self._closed = False
        #: The pending refill, if any, and the one running: one at a time, each fills up to ``keep``.
        self._refill: asyncio.TimerHandle | None = None
        self._filling: asyncio.Future[None] | None = None

    def usable(self, limits: Limits, env: Mapping[str, str]) -> bool:
        """Whether a task with these limits and environment may run in a spare."""
        if self.keep <= 0 or limits != self.limits or confine.mode().cgroups:
            return False
        return all(self.env.get(k) == v for k, v in env.items() if _at_start(k))

    async def start(self) -> None:
        """The first spare now, the others one by one after it."""
        if self.keep > 0:
            await self._start_one()
            self._refill_later(START_SPACING)

    async def fill(self) -> None:
        while not self._closed and len(self._idle) + self._starting < self.keep:
            await self._start_one()
            if len(self._idle) + self._starting < self.keep:
                await asyncio.sleep(START_SPACING)

    async def _start_one(self) -> None:
        self._starting += 1
        try:
            bounds = confine.Confinement(self.limits, None) if self.limits else None
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                BOOT,
                ",".join(PRELOAD),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd="/",
                env=self.env,
                start_new_session=True,
                preexec_fn=bounds.preexec() if bounds is not None else None,
                **run_as.child_options(),
            )
        except (OSError, ValueError) as exc:  # a spare is an optimisation: tasks start cold
            log.warning("cannot start a spare Python interpreter: %s", exc)
            self.keep = 0
            return
        finally:
            self._starting -= 1
        if self._closed:
            await _stop(proc)
        else:
            self._idle.append(proc)

    def take(self, code: str, env: Mapping[str, str], cwd: str) -> asyncio.subprocess.Process | None:
        """A spare turned into this task (its code running), or None when none is ready."""
        while self._idle:
            proc = self._idle.pop(0)
            if proc.returncode is not None or proc.stdin is None:
                continue
            line = json.dumps({"code": code, "env": dict(env), "cwd": cwd}).encode() + b"\n"
            try:
                proc.stdin.write(line)
                proc.stdin.close()
            except (OSError, RuntimeError):
                asyncio.ensure_future(_stop(proc))
                continue
            self._refill_later()
            return proc
        self._refill_later()
        return None

    def _refill_later(self, delay: float = REFILL_DELAY) -> None:
        if self._closed or self.keep <= 0 or self._refill is not None:
            return
        if self._filling is not None and not self._filling.done():
            return  # the running fill goes on to ``keep``

        def go() -> None:
            self._refill = None
            filling = self._filling = asyncio.ensure_future(self.fill())

            def done(f: asyncio.Future[None]) -> None:
                if self._filling is f:
                    self._filling = None

            filling.add_done_callback(done)

        self._refill = asyncio.get_running_loop().call_later(delay, go)

    async def close(self) -> None:
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filling
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_stop(p) for p in idle))


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """An unused spare ends on end-of-input; one that does not is killed."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError, RuntimeError):
            proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 2.0)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

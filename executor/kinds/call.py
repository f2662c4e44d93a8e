"""The ``call`` kind: ``function = "module:function"`` run with ``args``/``kwargs`` in a pool of warm worker
processes, so a task pays for an import once per worker, not an interpreter start per task.

Each worker is a ``spawn``-context process in its own session, looping over a Pipe. A task that times out
or is cancelled kills only its worker's process group; a worker that dies is reported and replaced. While
the function runs, the worker's ``os.environ`` carries the task's variables, its cwd is the worker's own
scratch dir (emptied after any task that left something in it, so the common function that writes no
file costs no directory per task) and ``sys.stdout``/``sys.stderr`` are captured (output written straight
to file descriptors 1 and 2, by C code or child processes, goes to the executor's own streams instead).
Workers are daemonic so that they never outlive the executor; a function therefore cannot start a
``multiprocessing`` pool of its own.

Limits: the warm workers run under the memory and file-size rlimits of the executor's default limits
(not its CPU seconds, which a worker would add up over every task it serves). A call whose limits
differ (its job file's ``limits``) runs alone in a fresh worker started under all of its rlimits
(CPU seconds count the worker's start too), then retired; the batched path pays nothing for that.
The process cap does not apply to calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import resource
import shutil
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from rota.common.limits import Limits
from rota.executor import confine, run_as
from rota.executor.kinds.base import (
    OUTPUT_CAP,
    Kind,
    ParamError,
    Ride,
    TaskResult,
    TaskSpec,
    bad_params,
    cap_text,
    default_limits,
    inherited_env,
    kill_group,
    param_env,
    settle,
    timed_out,
)

_TRACEBACK_LINES = 40
_EXIT_WAIT = 2.0
#: A worker holds a reply at most this long for others to go with it (a pipe write per reply was
#: two fifths of a worker's time on one-line functions); the batch's last reply goes at once.
REPLY_HOLD = 0.002
#: The stack of the thread that sends held replies: small, since it counts against the worker's
#: memory limit (8 MiB by default).
SENDER_STACK = 256 * 1024


class _Worker:
    def __init__(self, process: BaseProcess, conn: Connection, limits: Limits | None = None) -> None:
        self.process = process
        self.conn = conn
        #: A task's own limits, for a worker started for that task alone; None for a pool worker.
        self.limits = limits
        #: Where the pipe's reader (registered once) puts replies and the worker's death.
        self.events: asyncio.Queue[tuple[str, Any]] | None = None
        #: The executor's work dir, under which the worker keeps its scratch dir.
        self.scratch_root = ""
        #: Whether it has said it is up: a call's timeout runs from then, not from its spawn.
        self.ready = False

    def readable(self) -> None:
        """The event loop's reader: every reply waiting in the pipe, or the worker's death."""
        try:
            while True:
                reply = _receive(self.conn)
                if reply.get("ready") is True and "i" not in reply:
                    self.ready = True
                    if self.events is not None:
                        self.events.put_nowait(("ready", None))
                elif self.events is not None:
                    for one in reply.get("replies", ()):
                        self.events.put_nowait(("reply", one))
                if not self.conn.poll():
                    return
        except (EOFError, OSError):
            with contextlib.suppress(OSError, ValueError):
                asyncio.get_running_loop().remove_reader(self.conn.fileno())
            if self.events is not None:
                self.events.put_nowait(("died", None))

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def kill(self) -> None:
        """The whole group, so children the function started die too; the worker itself in case it has
        not reached ``setsid`` yet."""
        kill_group(self.pid)
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()

    async def exit_code(self) -> int | None:
        """Poll instead of ``join``: the pipe reports EOF a moment before the process can be reaped."""
        deadline = time.monotonic() + _EXIT_WAIT
        while self.process.exitcode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.process.exitcode


class CallKind(Kind):
    name = "call"
    needs_work_dir = False
    log_files = None
    #: Calls sent to a worker in one message, at most. The worker answers each within REPLY_HOLD of
    #: its end, quick ones many to a write, and never waits for the executor.
    batch_size = 32
    #: Workers started with the executor; more start as calls need them, up to one per slot. An
    #: executor of 15 slots that runs few calls keeps 2 interpreters, not 15 (each about 20 MB
    #: and a fifth of a CPU-second to start, all at once).
    warm_at_start = 2

    def __init__(self, slots: int = 1) -> None:
        super().__init__(slots)
        self._ctx = multiprocessing.get_context("spawn")
        #: Pool workers started (idle or busy; a replaced one counts once).
        self._pooled = 0
        self._idle: asyncio.Queue[_Worker] | None = None
        self._busy: set[_Worker] = set()
        self._reapers: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(min(self.slots, self.warm_at_start)):
                self._grow()

    def _respawn(self) -> _Worker:
        """A pool worker in place of one retired; the pool is one smaller if it cannot start."""
        try:
            return self._spawn()
        except BaseException:
            self._pooled -= 1
            raise

    def _grow(self) -> None:
        assert self._idle is not None
        self._idle.put_nowait(self._spawn())
        self._pooled += 1

    async def run(self, spec: TaskSpec) -> TaskResult:
        ride = Ride(spec)
        batch = asyncio.ensure_future(self.run_batch([ride]))
        try:
            return await asyncio.shield(ride.result)
        except asyncio.CancelledError:
            ride.cancel()
            raise
        finally:
            await asyncio.gather(batch, return_exceptions=True)

    async def run_batch(self, rides: list[Ride]) -> None:
        """Run calls one after another on one worker, sent in one message; each ride's result is
        set as its call ends. A ride cancelled or timed out while running costs the worker (it is
        killed with what it started); the rides after it go to a fresh one."""
        todo: list[tuple[Ride, dict[str, Any]]] = []
        pool_limits = default_limits()
        for ride in rides:
            try:
                request = _request(ride.spec)
            except ParamError as exc:
                settle(ride, bad_params(ride.spec, exc))
                continue
            if ride.spec.limits == pool_limits:
                todo.append((ride, request))
            elif not self._closed:
                await self._run_alone(ride, request)
            else:
                settle(ride, TaskResult(ok=False, error="call: the worker pool is closed"))
        while todo:
            if self._closed:
                for ride, _ in todo:
                    settle(ride, TaskResult(ok=False, error="call: the worker pool is closed"))
                return
            await self.start()
            assert self._idle is not None
            if self._idle.empty() and self._pooled < self.slots:
                self._grow()
            worker = await self._idle.get()
            if not worker.process.is_alive():
                self._retire(worker)
                worker = self._respawn()
            self._busy.add(worker)
            healthy = False
            try:
                todo, healthy = await self._on_worker(worker, todo)
            finally:
                self._busy.discard(worker)
                worker.events = None
                if healthy and not self._closed:
                    self._idle.put_nowait(worker)
                else:
                    self._retire(worker)
                    if not self._closed:
                        self._idle.put_nowait(self._respawn())

    async def _run_alone(self, ride: Ride, request: dict[str, Any]) -> None:
        """A call with limits of its own: in a worker started under them, retired after it."""
        worker = self._spawn(ride.spec.limits)
        self._busy.add(worker)
        try:
            await self._on_worker(worker, [(ride, request)])
        finally:
            self._busy.discard(worker)
            worker.events = None
            self._retire(worker)

    async def _on_worker(
        self, worker: _Worker, todo: list[tuple[Ride, dict[str, Any]]]
    ) -> tuple[list[tuple[Ride, dict[str, Any]]], bool]:
        """One batch on one worker; returns the calls left to run elsewhere and whether the worker
        is fit to keep."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        worker.events = events
        batch = [ride for ride, _ in todo if not ride.cancelled]
        for ride, _ in todo:
            if ride.cancelled:
                settle(ride, TaskResult(ok=False, error="cancelled"))
        if not batch:
            return [], True
        requests = {id(ride): request for ride, request in todo}
        worker.scratch_root = requests[id(batch[0])]["cwd"]

        def withdraw(ride: Ride) -> None:
            events.put_nowait(("cancel", ride))

        for ride in batch:
            ride._on_cancel = withdraw
        try:
            _send(worker.conn, {"batch": [(i, requests[id(r)]) for i, r in enumerate(batch)]})
        except OSError:
            events.put_nowait(("died", None))
        current = 0
        timer: asyncio.TimerHandle | None = None

        def arm() -> asyncio.TimerHandle | None:
            t = batch[current].spec.timeout if current < len(batch) else None
            return loop.call_later(t, events.put_nowait, ("timeout", current)) if t else None

        timer = arm() if worker.ready else None
        try:
            while current < len(batch):
                what, body = await events.get()
                if what == "ready":
                    if timer is None:
                        timer = arm()
                elif what == "reply":
                    i = body.pop("i")
                    if i != current:
                        continue
                    if not body.get("skipped"):
                        settle(batch[i], _result(body, worker.limits))
                    current += 1
                    if timer is not None:
                        timer.cancel()
                    timer = arm()
                elif what == "cancel":
                    i = batch.index(body)
                    if i > current:  # not started, as far as we know: the worker skips it
                        with contextlib.suppress(OSError):
                            _send(worker.conn, {"skip": i})
                        settle(body, TaskResult(ok=False, error="cancelled"))
                    elif i == current:
                        settle(body, TaskResult(ok=False, error="cancelled"))
                        return _rest(batch, current + 1, requests), False
                elif what == "timeout" and body == current:
                    settle(batch[current], TaskResult(ok=False, error=timed_out(batch[current].spec.timeout)))
                    return _rest(batch, current + 1, requests), False
                elif what == "died":
                    code = await worker.exit_code()
                    reason = (
                        confine.Confinement(worker.limits, None).verdict(code, "") if worker.limits else ""
                    )
                    settle(
                        batch[current],
                        TaskResult(
                            ok=False,
                            exit_code=code,
                            error=reason or f"worker process died (exit code {code})",
                        ),
                    )
                    return _rest(batch, current + 1, requests), False
            return [], True
        except asyncio.CancelledError:
            for ride in batch[current:]:
                settle(ride, TaskResult(ok=False, error="cancelled"))
            raise
        finally:
            if timer is not None:
                timer.cancel()
            for ride in batch:
                ride._on_cancel = None

    async def close(self) -> None:
        """Idle workers exit on EOF; busy ones and stragglers are killed."""
        self._closed = True
        idle: list[_Worker] = []
        while self._idle is not None and not self._idle.empty():
            idle.append(self._idle.get_nowait())
        for worker in idle:
            worker.conn.close()
        for worker in self._busy:
            worker.kill()
        deadline = time.monotonic() + 1.0
        while any(w.process.is_alive() for w in idle) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for worker in idle:
            self._retire(worker)
        if self._reapers:
            await asyncio.gather(*self._reapers)

    def _spawn(self, own: Limits | None = None) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe()
        environ = run_as.task_env(inherited_env())
        pool = default_limits()
        bounds = own if own is not None else Limits(memory=pool.memory, file_size=pool.file_size)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, environ, confine.rlimits(bounds), run_as.current()),
            name="rota-call",
            daemon=True,
        )
        # The worker is a new program (spawn): it starts with the environment of this moment, which
        # /proc/<pid>/environ shows for its whole life. So it starts with the clean one.
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
        try:
            process.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        child_conn.close()
        worker = _Worker(process, parent_conn, own)
        asyncio.get_running_loop().add_reader(parent_conn.fileno(), worker.readable)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with contextlib.suppress(OSError, ValueError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())
        worker.conn.close()
        task = asyncio.ensure_future(self._reap(worker))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    @staticmethod
    async def _reap(worker: _Worker) -> None:
        if await worker.exit_code() is None:
            worker.process.join(0.1)
        if worker.scratch_root:
            shutil.rmtree(_scratch_dir(worker.scratch_root, worker.pid), ignore_errors=True)


def _rest(
    batch: list[Ride], start: int, requests: dict[int, dict[str, Any]]
) -> list[tuple[Ride, dict[str, Any]]]:
    """The calls of a batch after ``start`` that still want running (on another worker)."""
    return [(r, requests[id(r)]) for r in batch[start:] if not r.result.done()]


def _request(spec: TaskSpec) -> dict[str, Any]:
    function = spec.params.get("function")
    if not isinstance(function, str) or not _split_target(function):
        raise ParamError(f"'function' must be 'module:function', got {function!r}")
    args = spec.params.get("args", [])
    kwargs = spec.params.get("kwargs", {})
    if not isinstance(args, (list, tuple)):
        raise ParamError("'args' must be a list")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ParamError("'kwargs' must be a table")
    return {
        "function": function,
        "args": list(args),
        "kwargs": dict(kwargs),
        "env": {**spec.env, **param_env(spec)},
        "cwd": spec.work_dir,
    }


def _result(reply: dict[str, Any], limits: Limits | None = None) -> TaskResult:
    if limits and not reply["ok"]:
        reason = confine.Confinement(limits, None).verdict(1, reply["error"])
        if reason:
            reply = {**reply, "error": f"{reason}: {reply['error']}"}
    return TaskResult(
        seconds=reply.get("seconds"),
        ok=reply["ok"],
        stdout=reply["stdout"],
        stderr=reply["stderr"],
        value=json.loads(reply["value"]) if reply["ok"] else None,
        error=reply["error"],
        truncated=reply["truncated"],
    )


def _scratch_dir(root: str, pid: int) -> str:
    return os.path.join(root, f"call-{pid}")


def _split_target(function: str) -> tuple[str, str] | None:
    module, sep, attr = function.partition(":")
    if not sep or not module.strip() or not attr.strip():
        return None
    return module.strip(), attr.strip()


# Everything below runs in the worker processes.


class _CappedText(io.TextIOBase):
    """A ``sys.stdout`` stand-in that keeps the first OUTPUT_CAP characters."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[str] = []
        self._size = 0
        self.truncated = False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        room = OUTPUT_CAP - self._size
        kept = s if len(s) <= room else s[: max(room, 0)]
        self.truncated = self.truncated or len(kept) < len(s)
        self._parts.append(kept)
        self._size += len(kept)
        return len(s)

    def getvalue(self) -> str:
        return cap_text("".join(self._parts), self.truncated)


#: The largest message read from the pipe (a worker's reply carries at most two capped outputs and
#: a return value, which the runner caps again): a bigger one ends the worker.
MAX_MESSAGE = 32 * 1024 * 1024


def _send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message).encode())


def _receive(conn: Connection) -> dict[str, Any]:
    """One message, as JSON: never pickle, which would let code in a worker run code in the
    executor. Too large, or not a JSON object: OSError, read as the worker's end."""
    try:
        message = json.loads(conn.recv_bytes(MAX_MESSAGE))
    except (ValueError, UnicodeDecodeError) as e:
        raise OSError(f"unreadable message from the other end of a call worker's pipe: {e}") from None
    if not isinstance(message, dict):
        raise OSError("a call worker's message is not a JSON object")
    return message


def _worker_main(
    conn: Connection,
    environ: dict[str, str],
    limits: Sequence[tuple[int, tuple[int, int]]] = (),
    identity: run_as.RunAs | None = None,
) -> None:
    """Serve batches until the executor closes its end of the pipe (or dies, which closes it too).

    Each call's reply goes back as soon as it ends. A ``skip`` notice that arrives while a batch
    runs withdraws a call not yet started. The worker keeps only what tasks inherit of the
    executor's environment (``environ``): the functions it calls never see the executor's secrets.
    ``limits`` are the (resource, (soft, hard)) rlimits it runs under; ``identity`` the user it
    becomes first (--run-as)."""
    for which, value in limits:
        resource.setrlimit(which, value)
    run_as.drop(identity)
    os.environ.clear()
    os.environ.update(environ)
    with contextlib.suppress(OSError):
        os.setsid()
    _send(conn, {"ready": True})
    replies = _Replies(conn)
    task_env = _TaskEnv()
    while True:
        try:
            message = _receive(conn)
            skip: set[int] = set()
            for i, request in message.get("batch", ()):
                while conn.poll():
                    notice = _receive(conn)
                    if "skip" in notice:
                        skip.add(notice["skip"])
                if i in skip:
                    replies.add({"i": i, "skipped": True})
                    continue
                t0 = time.perf_counter()
                reply = _execute(request, task_env)
                reply.update(i=i, seconds=time.perf_counter() - t0)
                replies.add(reply)
            task_env.leave()
            replies.flush()
        except (EOFError, OSError):
            return


class _Replies:
    """A worker's replies, sent in order: each within REPLY_HOLD of its call's end (a thread sends
    what a long call after it would hold up), many in one write when calls are quick.

    A worker that dies holding replies loses them, as an executor that dies loses the results it has
    not reported: those calls count as the worker's death and may run again. Without a thread (a
    memory limit too tight for one) every reply goes at once."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._parts: list[str] = []
        self._size = 0
        self._due = 0.0
        self._lock = threading.Condition()
        self._hold = True
        previous = threading.stack_size(SENDER_STACK)
        try:
            threading.Thread(target=self._sender, name="replies", daemon=True).start()
        except (RuntimeError, MemoryError):
            self._hold = False
        finally:
            threading.stack_size(previous)

    def add(self, reply: dict[str, Any]) -> None:
        part = json.dumps(reply)
        with self._lock:
            if not self._parts:
                self._due = time.monotonic() + REPLY_HOLD
                self._lock.notify()
            self._parts.append(part)
            self._size += len(part)
            if not self._hold or self._size >= MAX_MESSAGE // 4:
                self._send()

    def flush(self) -> None:
        with self._lock:
            self._send()

    def _send(self) -> None:
        if self._parts:
            parts, self._parts, self._size = self._parts, [], 0
            self._conn.send_bytes(('{"replies": [' + ",".join(parts) + "]}").encode())

    def _sender(self) -> None:
        with self._lock:
            while True:
                if not self._parts:
                    self._lock.wait()
                    continue
                left = self._due - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                try:
                    self._send()
                except OSError:
                    return


def _resolve(function: str) -> Any:
    target = _split_target(function)
    assert target is not None
    module_name, attr_path = target
    obj: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    return obj


def _traceback(exc: BaseException) -> str:
    """The tail of the traceback, starting at the user's function rather than the worker's loop."""
    frames = traceback.format_tb(exc.__traceback__.tb_next) if exc.__traceback__ else []
    lines = "".join([*frames, *traceback.format_exception_only(type(exc), exc)]).splitlines()
    return "\n".join(["Traceback (most recent call last):", *lines[-_TRACEBACK_LINES:]]) + "\n"


def _enter_scratch(root: str) -> str:
    """The worker's scratch dir, made on first use; a function that moved away is moved back."""
    scratch = _scratch_dir(root, os.getpid())
    if os.getcwd() != scratch:
        os.makedirs(scratch, exist_ok=True)
        os.chdir(scratch)
    return scratch


def _empty(scratch: str) -> None:
    """Leave nothing for the next task: one scandir when the function wrote no file."""
    with os.scandir(scratch) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


class _TaskEnv:
    """A call's variables in the worker's ``os.environ``. Calls in a row mostly share them (the job,
    the socket): only those that differ are set (setting and restoring all, per call, was 18 us, half
    a quick call's cost), those of the last call it lacks are taken back, and all are once the batch
    is done, so an idle worker holds no task's variables (its secret)."""

    def __init__(self) -> None:
        #: The variables set for calls, with the worker's own value of each before (None: unset).
        self._own: dict[str, str | None] = {}

    def enter(self, env: dict[str, str]) -> None:
        for key in [k for k in self._own if k not in env]:
            self._restore(key)
        for key, value in env.items():
            if key not in self._own:
                self._own[key] = os.environ.get(key)
                os.environ[key] = value
            elif os.environ.get(key) != value:  # another call's value, or the function changed it
                os.environ[key] = value

    def leave(self) -> None:
        for key in list(self._own):
            self._restore(key)

    def _restore(self, key: str) -> None:
        old = self._own.pop(key)
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _execute(request: dict[str, Any], task_env: _TaskEnv) -> dict[str, Any]:
    out, err = _CappedText(), _CappedText()
    reply: dict[str, Any] = {"ok": False, "value": "null", "error": ""}
    scratch = ""
    try:
        task_env.enter(request["env"])
        scratch = _enter_scratch(request["cwd"])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            value = _resolve(request["function"])(*request["args"], **request["kwargs"])
        try:
            reply.update(ok=True, value=json.dumps(value))
        except (TypeError, ValueError) as exc:
            reply["error"] = (
                f"return value of type {type(value).__qualname__} is not JSON-serialisable: {exc}"
            )
    except BaseException as exc:  # a SystemExit raised by the function must not end the worker
        reply["error"] = traceback.format_exception_only(type(exc), exc)[-1].strip()
        err.write(_traceback(exc))
    finally:
        if scratch:
            with contextlib.suppress(OSError):
                _empty(scratch)
    reply.update(stdout=out.getvalue(), stderr=err.getvalue(), truncated=out.truncated or err.truncated)
    return reply

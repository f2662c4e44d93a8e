"""Task calls, the executor's side: where a running task's ``rota.task`` calls arrive, and how they
go on to the leader.

The executor listens on a Unix socket (``<work-dir>/task.sock``, mode 0666: a task running as
another user, ``--run-as``, reaches it by path through the 0711 work dir). Each attempt gets a
random secret in its environment (``ROTA_TASK_SECRET``) that stands for that attempt here while it
runs: a call names its attempt only through it, so a task cannot act as another one on the same
executor, and the leader, which answers only the current attempt of a task placed on this
executor's stream, fences the rest. No task holds a credential of the cluster.

The protocol is one JSON object per line each way::

    {"secret": "...", "op": "checkpoint.save", "data": "<base64>"}   ->  {"ok": true}
    {"secret": "...", "op": "checkpoint.load"}                        ->  {"ok": true, "found": true, "data": "<base64>"}
    {"secret": "...", "op": "progress", "fraction": 0.5, "message": "..."}  ->  {"ok": true}
    {"secret": "...", "op": "endpoint", "name": "server.feed"}       ->  {"ok": true, "ready": true, "addr": "host:port"}
    {"secret": "...", "op": "barrier", "name": "start", "parties": 5}  ->  {"ok": true, "ready": true, "released_us": 1796...}
    {"secret": "...", "op": "barrier", "name": "ddl-3", "parties": 2, "round": 7}  (a cyclic barrier's round)
                                         (not yet released: {"ok": true, "ready": false, "arrived": 3, "parties": 5})
    {"secret": "...", "op": "barrier", "name": "ddl", "parties": 2, "checkpoint": "<base64>"}  (saved with the arrival)
    anything refused                                                  ->  {"ok": false, "error": "..."}

Everything is bounded (line length, connections, idle time, calls in flight per attempt) and a
bad request is answered with what is wrong, never a crash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rota.protos import rota_pb2
from rota.task import (
    BARRIER_NAME_MAX,
    CHECKPOINT_MAX,
    ENDPOINT_NAME_MAX,
    LINE_MAX,
    MESSAGE_MAX,
    OPS,
    ROUND_MAX,
    SECRET_ENV,
    SOCKET_ENV,
)

log = logging.getLogger("rota.executor")

SOCKET_NAME = "task.sock"
CLI_ENV = "ROTA_TASK_CLI"
#: Connections open at once, over every task here; one more is told so and closed.
MAX_CONNECTIONS = 64
#: A connection that sends no request for this long is closed.
IDLE_TIMEOUT = 60.0
#: How long a new connection may take to send its first request.
FIRST_LINE_TIMEOUT = 5.0
#: Calls of one attempt being answered at once (a task with threads); more are refused.
MAX_IN_FLIGHT = 4
#: A Unix socket path holds at most 107 bytes on Linux (fewer elsewhere): a longer work dir puts
#: the socket in a short temporary dir instead.
SOCKET_PATH_MAX = 100
#: The fields each op takes besides ``secret`` and ``op``.
_FIELDS = {
    "checkpoint.save": ("data",),
    "checkpoint.load": (),
    "progress": ("fraction", "message"),
    "endpoint": ("name",),
    "barrier": ("name", "parties", "round", "checkpoint"),
}
#: The most parties a barrier call may name here (the leader bounds it by the job's task count).
PARTIES_MAX = 2**31 - 1


class Refused(Exception):
    """A request that is not answered: its ``str`` goes back to the task."""


@dataclass(frozen=True)
class Request:
    ref: rota_pb2.TaskRef
    secret: str
    op: str
    data: bytes = b""
    fraction: float = 0.0
    message: str = ""
    name: str = ""
    parties: int = 0
    #: barrier: a cyclic barrier's round; None for a plain one.
    round: int | None = None
    #: barrier: the checkpoint saved with the arrival; None for the arrival alone.
    checkpoint: bytes | None = None


class Attempts:
    """Which secret stands for which running attempt, and what an attempt's environment gets."""

    def __init__(self) -> None:
        self._by_secret: dict[str, rota_pb2.TaskRef] = {}
        #: Set once the socket listens; until then (and in tests without one) tasks get no variables.
        self.socket_path = ""
        self.cli = cli_path()

    def add(self, ref: rota_pb2.TaskRef) -> tuple[str, dict[str, str]]:
        """A fresh secret for this attempt, and the variables its environment gets."""
        if not self.socket_path:
            return "", {}
        secret = secrets.token_urlsafe(32)
        self._by_secret[secret] = ref
        env = {SOCKET_ENV: self.socket_path, SECRET_ENV: secret}
        if self.cli:
            env[CLI_ENV] = self.cli
        return secret, env

    def remove(self, secret: str) -> None:
        self._by_secret.pop(secret, None)

    def get(self, secret: str) -> rota_pb2.TaskRef | None:
        return self._by_secret.get(secret)

    def __len__(self) -> int:
        return len(self._by_secret)


def cli_path() -> str:
    """The ``rota-task`` program installed beside this interpreter; empty when it is not there."""
    path = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "rota-task")
    return path if os.access(path, os.X_OK) else ""


def parse(line: bytes, attempts: Attempts) -> Request:
    """One request line, checked; Refused says what is wrong with it."""
    try:
        body = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused("the request is not valid JSON (or nested too deep)") from None
    if not isinstance(body, dict):
        raise Refused("the request must be a JSON object")
    secret = body.get("secret")
    if not isinstance(secret, str) or not secret:
        raise Refused("the request has no 'secret' (ROTA_TASK_SECRET)")
    ref = attempts.get(secret)
    if ref is None:
        raise Refused("unknown task secret: no attempt running on this executor has it")
    op = body.get("op")
    if op not in OPS:
        raise Refused(f"unknown op {op!r}: expected one of {', '.join(OPS)}")
    extra = sorted(set(body) - {"secret", "op", *_FIELDS[op]})
    if extra:
        raise Refused(f"{op} takes no field {extra[0]!r}")
    if op == "checkpoint.save":
        encoded = body.get("data")
        if not isinstance(encoded, str):
            raise Refused("checkpoint.save needs 'data', the checkpoint in base64")
        return Request(ref, secret, op, data=_checkpoint(encoded, "data"))
    if op == "progress":
        fraction = body.get("fraction")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise Refused("progress needs 'fraction', a number from 0 to 1")
        if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
            raise Refused(f"'fraction' must be from 0 to 1, got {fraction!r}")
        message = body.get("message", "")
        if not isinstance(message, str):
            raise Refused("'message' must be a string")
        try:
            message.encode()
        except UnicodeEncodeError:
            raise Refused("'message' must be valid Unicode text (no lone surrogates)") from None
        if len(message) > MESSAGE_MAX:
            raise Refused(f"'message' is {len(message)} characters, over the limit of {MESSAGE_MAX}")
        return Request(ref, secret, op, fraction=float(fraction), message=message)
    if op == "endpoint":
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise Refused("endpoint needs 'name': 'task.port', or 'task' when it has one port")
        if len(name) > ENDPOINT_NAME_MAX or not name.isprintable():
            raise Refused(f"'name' must be at most {ENDPOINT_NAME_MAX} printable characters")
        return Request(ref, secret, op, name=name)
    if op == "barrier":
        return _barrier(ref, secret, body)
    return Request(ref, secret, op)


def _barrier(ref: rota_pb2.TaskRef, secret: str, body: dict[str, Any]) -> Request:
    """A barrier call's fields, checked for type and size (the leader checks the rest)."""
    name, parties = body.get("name"), body.get("parties")
    if not isinstance(name, str) or not name:
        raise Refused("barrier needs 'name', a string")
    if len(name) > BARRIER_NAME_MAX:
        raise Refused(f"'name' is {len(name)} characters, over the limit of {BARRIER_NAME_MAX}")
    if isinstance(parties, bool) or not isinstance(parties, int) or not 1 <= parties <= PARTIES_MAX:
        raise Refused(f"barrier needs 'parties', a whole number of tasks from 1, got {parties!r}")
    round = body.get("round")
    if round is not None and (
        isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= ROUND_MAX
    ):
        raise Refused(f"'round' must be a whole number from 0 to {ROUND_MAX}, got {round!r}")
    encoded = body.get("checkpoint")
    if encoded is not None and not isinstance(encoded, str):
        raise Refused("'checkpoint' must be the checkpoint in base64")
    checkpoint = None if encoded is None else _checkpoint(encoded, "checkpoint")
    return Request(ref, secret, "barrier", name=name, parties=parties, round=round, checkpoint=checkpoint)


def _checkpoint(encoded: str, field: str) -> bytes:
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"'{field}' is not valid base64") from None
    if len(data) > CHECKPOINT_MAX:
        raise Refused(f"{len(data)} bytes is over the checkpoint limit of {CHECKPOINT_MAX} bytes")
    return data


def reply_for(op: str, reply: rota_pb2.TaskCallReply) -> dict[str, Any]:
    """The leader's answer, as the task gets it."""
    if not reply.ok:
        return {"ok": False, "error": reply.error or "refused by the leader"}
    if op == "endpoint":
        return {"ok": True, "ready": reply.ready, "addr": reply.addr}
    if op == "barrier":
        return _barrier_reply(reply)
    if op != "checkpoint.load":
        return {"ok": True}
    if not reply.found:
        return {"ok": True, "found": False}
    return {"ok": True, "found": True, "data": base64.b64encode(reply.data).decode()}


def _barrier_reply(reply: rota_pb2.TaskCallReply) -> dict[str, Any]:
    answer: dict[str, Any] = {"ok": True, "ready": reply.ready}
    arrived, _, parties = reply.addr.partition("/")
    if not reply.ready and arrived.isdigit() and parties.isdigit():
        answer["arrived"], answer["parties"] = int(arrived), int(parties)
    if reply.ready and reply.released_us > 0:
        answer["released_us"] = reply.released_us
    return answer


Forward = Callable[[rota_pb2.TaskCall], Awaitable[rota_pb2.TaskCallReply]]


class TaskCallServer:
    """The socket tasks call: checks each request, then ``forward``s it (to the leader)."""

    def __init__(self, work_dir: str, attempts: Attempts, forward: Forward) -> None:
        self.attempts = attempts
        self.forward = forward
        self.path = os.path.join(os.path.abspath(work_dir), SOCKET_NAME)
        self._short_dir = ""
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._in_flight: dict[str, int] = {}

    async def start(self) -> None:
        if len(self.path.encode()) > SOCKET_PATH_MAX:
            self._short_dir = tempfile.mkdtemp(prefix="rota-task-")
            os.chmod(self._short_dir, 0o711)
            self.path = os.path.join(self._short_dir, SOCKET_NAME)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by an executor that was killed
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=LINE_MAX)
        os.chmod(self.path, 0o666)
        self.attempts.socket_path = self.path
        log.debug("task calls on %s", self.path)

    async def close(self) -> None:
        self.attempts.socket_path = ""
        if self._server is not None:
            self._server.close()
            for t in list(self._connections):
                t.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self._short_dir:
            shutil.rmtree(self._short_dir, ignore_errors=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        try:
            if len(self._connections) >= MAX_CONNECTIONS:
                await _send(writer, {"ok": False, "error": "too many connections to the executor; try again"})
                return
            if me is not None:
                self._connections.add(me)
            first = True
            while True:
                try:
                    # A connection that says nothing at first is not a task making a call: it must
                    # not hold one of the few connections for a minute.
                    wait = FIRST_LINE_TIMEOUT if first else IDLE_TIMEOUT
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), wait)
                    first = False
                except asyncio.LimitOverrunError:
                    await _send(
                        writer, {"ok": False, "error": f"the request is longer than {LINE_MAX} bytes"}
                    )
                    return
                except asyncio.IncompleteReadError as e:
                    if e.partial.strip():
                        await _send(writer, {"ok": False, "error": "the request does not end with a newline"})
                    return
                except asyncio.TimeoutError:
                    return
                await _send(writer, await self.answer(line))
        except (ConnectionError, OSError):
            pass
        finally:
            if me is not None:
                self._connections.discard(me)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def answer(self, line: bytes) -> dict[str, Any]:
        """One request's answer; never raises."""
        try:
            request = parse(line, self.attempts)
        except Refused as e:
            return {"ok": False, "error": str(e)}
        busy = self._in_flight.get(request.secret, 0)
        if busy >= MAX_IN_FLIGHT:
            return {"ok": False, "error": f"this attempt has {busy} calls in flight already"}
        self._in_flight[request.secret] = busy + 1
        try:
            call = rota_pb2.TaskCall(
                task=request.ref,
                op=request.op,
                data=request.data,
                fraction=request.fraction,
                message=request.message,
                name=request.name,
                parties=request.parties,
                round=request.round,
                checkpoint=request.checkpoint,
            )
            reply = await self.forward(call)
        except Exception as e:  # a broken forward must not take the executor down
            log.exception("task call %s of %s/%d failed", request.op, request.ref.job_id, request.ref.index)
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        finally:
            left = self._in_flight[request.secret] - 1
            if left:
                self._in_flight[request.secret] = left
            else:
                del self._in_flight[request.secret]
        return reply_for(request.op, reply)


async def _send(writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
    writer.write(json.dumps(body).encode() + b"\n")
    await writer.drain()

"""The task SDK: what a running task asks of Rota — keep a checkpoint, report progress, find where
another task of its job listens, wait at a barrier.

Inside a task (any kind), ``rota.task.checkpoint.save(blob)`` keeps up to 64 KiB for the task's
next attempt, ``rota.task.checkpoint.load()`` returns the last blob saved (by this attempt or an
earlier one; None when none was), ``rota.task.progress(0.5, "halfway")`` shows in get-job,
``rota.task.endpoint("server.feed")`` returns ``host:port`` where the task ``server`` of the same
job listens on its port ``feed`` now, waiting until it does (an address can go stale when the task
moves: a client that loses its connection asks again rather than reconnecting to the old one,
which stays published until the leader learns that attempt ended), and
``rota.task.barrier("start", 5)`` waits until 5 tasks of the job have reached barrier "start"
(``round=N`` makes it cyclic: rounds 0, 1, 2, ... of one name, released in order), and
``rota.task.after()`` returns what the tasks it runs after (``after = [...]``) gave. Each call
goes to the task's own executor over a Unix socket (``ROTA_TASK_SOCKET``), proved by the attempt's
secret (``ROTA_TASK_SECRET``); the executor passes it on to the leader, which answers only the
task's current attempt. Plain standard library, synchronous: usable from any Python code.

The same as a program, for shell, Go and other tasks (``$ROTA_TASK_CLI`` or ``python -m rota.task``)::

    rota-task checkpoint save FILE|-      # exit 0
    rota-task checkpoint load [FILE]      # exit 1 when there is no checkpoint
    rota-task progress FRACTION [MESSAGE]
    rota-task endpoint NAME [--timeout SECONDS]   # prints host:port
    rota-task barrier NAME PARTIES [--round N] [--timeout S] [--checkpoint FILE|-]   # exit 0 once released

Exit 2 on bad usage, 3 when the call failed (refused, not inside a task, no leader, timed out).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "CHECKPOINT_MAX", "MESSAGE_MAX", "TaskCallError", "after", "barrier", "checkpoint", "endpoint", "main",
    "progress",
]  # fmt: skip

#: The largest checkpoint, in bytes.
CHECKPOINT_MAX = 64 * 1024
#: The longest progress message, in characters.
MESSAGE_MAX = 256
#: The longest request line the executor reads (a 64 KiB blob in base64 with room to spare), and
#: the longest reply line a client reads.
LINE_MAX = 96 * 1024
#: How long a call may take in all: the executor waits up to 30 s for a leader and 30 s for its
#: answer, and says why when either runs out.
CALL_TIMEOUT = 75.0
#: The longest barrier name; a name is made of letters, digits, ".", "_" and "-".
BARRIER_NAME_MAX = 64
#: The highest round of a cyclic barrier.
ROUND_MAX = 2**62
_BARRIER_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{BARRIER_NAME_MAX}}}")
#: The ops a task may call.
OPS = ("checkpoint.save", "checkpoint.load", "progress", "endpoint", "barrier")
#: The longest endpoint name (``task.port``) a task may ask for.
ENDPOINT_NAME_MAX = 300
#: How long ``endpoint`` waits by default for the endpoint to be up.
ENDPOINT_TIMEOUT = 60.0

SOCKET_ENV = "ROTA_TASK_SOCKET"
SECRET_ENV = "ROTA_TASK_SECRET"


class TaskCallError(Exception):
    """A call that did not happen: refused by the executor or the leader, too large, made
    outside a Rota task, or (a barrier) not done within its timeout."""


class _NoAnswer(TaskCallError):
    pass


def _request(op: str, wait: float = CALL_TIMEOUT, **fields: Any) -> dict[str, Any]:
    """One call, on a connection of its own, answered within ``wait`` seconds. The variables are
    read at each call: a ``call`` task's worker gets them only while it runs that task."""
    path, secret = os.environ.get(SOCKET_ENV), os.environ.get(SECRET_ENV)
    if not path or not secret:
        raise TaskCallError(f"not inside a Rota task: {SOCKET_ENV} and {SECRET_ENV} are not set")
    line = json.dumps({"secret": secret, "op": op, **fields}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(wait)
            sock.connect(path)
            sock.sendall(line)
            reply = _read_line(sock)
    except TimeoutError:
        raise _NoAnswer(f"{op}: no answer from the executor within {wait:g}s") from None
    except OSError as e:
        raise TaskCallError(f"{op}: cannot reach the executor at {path}: {e.strerror or e}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise TaskCallError(f"{op}: the executor's answer is not a JSON object")
    if answer.get("ok") is not True:
        raise TaskCallError(f"{op}: {answer.get('error') or 'refused'}")
    return answer


def _read_line(sock: socket.socket) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            if not buf:
                raise OSError("the executor closed the connection without an answer")
            break
        buf += chunk
        if len(buf) > LINE_MAX:
            raise OSError(f"the executor's answer is longer than {LINE_MAX} bytes")
    return bytes(buf.split(b"\n", 1)[0])


def _checkpoint_bytes(data: Any, op: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a checkpoint is bytes, not {type(data).__name__}")
    blob = bytes(data)
    if len(blob) > CHECKPOINT_MAX:
        raise TaskCallError(f"{op}: {len(blob)} bytes is over the checkpoint limit of {CHECKPOINT_MAX} bytes")
    return blob


class Checkpoint:
    """The task's checkpoint: one blob of at most CHECKPOINT_MAX bytes, kept across attempts."""

    def save(self, data: bytes) -> None:
        """Keep ``data`` for this task's next attempt, in place of the one saved before. Only the
        task's current attempt may save."""
        _request(
            "checkpoint.save", data=base64.b64encode(_checkpoint_bytes(data, "checkpoint.save")).decode()
        )

    def load(self) -> bytes | None:
        """The last checkpoint saved for this task (by this or an earlier attempt); None when none was."""
        answer = _request("checkpoint.load")
        if not answer.get("found"):
            return None
        try:
            return base64.b64decode(answer.get("data") or "", validate=True)
        except (binascii.Error, ValueError):
            raise TaskCallError("checkpoint.load: the executor's answer holds no valid base64") from None


checkpoint = Checkpoint()


def after() -> dict[str, Any]:
    """What each task this one runs after gave, by task name: its return value (``call``,
    ``python``) or the last line of its stdout (as JSON when it parses); None for one that did
    not succeed (``on-failure = "run"``). Read from ROTA_AFTER, no call made; empty outside a task
    with ``after``. A fan-in over more than 100 KiB of values holds those that fit, and
    ROTA_AFTER_OMITTED says how many were left out."""
    raw = os.environ.get("ROTA_AFTER")
    if not raw:
        return {}
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


def progress(fraction: float, message: str = "") -> None:
    """Say how far the task is, from 0.0 to 1.0, with a message of at most MESSAGE_MAX characters:
    get-job shows the last one reported."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"progress fraction must be a number, not {type(fraction).__name__}")
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress fraction must be between 0 and 1, got {fraction!r}")
    if not isinstance(message, str):
        raise TypeError(f"progress message must be a string, not {type(message).__name__}")
    if len(message) > MESSAGE_MAX:
        raise ValueError(f"progress message is {len(message)} characters, over the limit of {MESSAGE_MAX}")
    _request("progress", fraction=float(fraction), message=message)


def endpoint(name: str, timeout: float = ENDPOINT_TIMEOUT) -> str:
    """Where another task of this job listens now: ``host:port`` of its port, named
    ``task.port`` (``server.feed``, ``server-2.feed`` for a copy), or just ``task`` when that task
    declares one port. Waits until the port is up (published by the task's executor once it
    listens), for at most ``timeout`` seconds; then TaskCallError says it is not up. A name the
    job has no task or port for is refused at once.

    The address follows the task when it moves: after a connection error, call this again (the
    old address stays published until the leader learns that its attempt ended)."""
    if not isinstance(name, str):
        raise TypeError(f"an endpoint name is a string, not {type(name).__name__}")
    if not name or len(name) > ENDPOINT_NAME_MAX:
        raise ValueError(f"an endpoint name is 1 to {ENDPOINT_NAME_MAX} characters, like 'server.feed'")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"endpoint timeout must be a number of seconds >= 0, got {timeout!r}")
    deadline = time.monotonic() + timeout
    while True:
        asked = time.monotonic()
        left = deadline - asked
        try:
            # Bounded by what is left: the leader may hold the call for up to 20 s.
            answer = _request("endpoint", wait=max(0.1, min(CALL_TIMEOUT, left)), name=name)
        except _NoAnswer:
            answer = {}
            if time.monotonic() < deadline:
                raise
        addr = answer.get("addr")
        if answer.get("ready") and isinstance(addr, str) and addr:
            return addr
        if time.monotonic() >= deadline:
            raise TaskCallError(f"endpoint {name}: not up within {timeout:g}s")
        if time.monotonic() - asked < 0.5:  # answered "not ready" at once: do not spin
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def barrier(
    name: str,
    parties: int,
    timeout: float | None = None,
    round: int | None = None,
    checkpoint: bytes | None = None,
) -> float | None:
    """Wait until ``parties`` tasks of this job (this one included) have reached barrier ``name``;
    return when the leader released it (seconds since the epoch, by the leader's clock): the same
    for every party, so they can share a start time (None when no longer known: a round long past).

    Arrivals count by task, not attempt: a task that arrived, failed and runs again rejoins without
    counting twice, and passes at once once the barrier was released. Every task naming a barrier
    must give the same ``parties`` (1 to the job's task count); a job has at most 64 barriers.
    With ``timeout`` (seconds), TaskCallError when it is not released by then (the arrival stays
    counted).

    With ``round`` (0 and up) the barrier is cyclic: its rounds are released in order and only the
    current one is kept, so a barrier used once per step of an endless loop stays small. A call for
    a round already released (or skipped: releasing round N releases every round below) passes at
    once; a call for a later round waits until the current round is released, then counts for its
    own. ``parties`` must agree within a round; a name is either cyclic or not (its first call
    decides).

    With ``checkpoint`` (bytes, as ``checkpoint.save``) the task's checkpoint is saved before its
    arrival counts, in the same commit when its checkpoint budget allows: one round trip to the
    leader instead of a save and then an arrival, and when the barrier lets anyone go, the
    checkpoint is durable. While the call waits it may be sent again (same data); save no other
    checkpoint meanwhile."""
    if not isinstance(name, str) or not _BARRIER_NAME.fullmatch(name):
        raise ValueError(
            f"a barrier name is 1 to {BARRIER_NAME_MAX} characters of A-Z a-z 0-9 . _ -, got {name!r}"
        )
    if isinstance(parties, bool) or not isinstance(parties, int):
        raise TypeError(f"barrier parties must be a whole number, not {type(parties).__name__}")
    if parties < 1:
        raise ValueError(f"barrier parties must be at least 1, got {parties}")
    if timeout is not None and (not math.isfinite(timeout) or timeout < 0):
        raise ValueError(f"barrier timeout must be a number of seconds from 0, got {timeout!r}")
    if round is not None and (isinstance(round, bool) or not isinstance(round, int)):
        raise TypeError(f"barrier round must be a whole number, not {type(round).__name__}")
    if round is not None and not 0 <= round <= ROUND_MAX:
        raise ValueError(f"barrier round must be from 0 to {ROUND_MAX}, got {round}")
    fields: dict[str, Any] = {"name": name, "parties": parties}
    if round is not None:
        fields["round"] = round
    if checkpoint is not None:
        fields["checkpoint"] = base64.b64encode(_checkpoint_bytes(checkpoint, "barrier")).decode()
    shown = repr(name) if round is None else f"{name!r} round {round}"
    deadline = None if timeout is None else time.monotonic() + timeout
    arrived = ""
    first = True
    while True:
        wait = CALL_TIMEOUT
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        try:
            if wait <= 0 and not first:
                raise _NoAnswer("")
            first, wait = False, max(wait, 0.05)
            answer = _request("barrier", wait=wait, **fields)
        except _NoAnswer:
            if deadline is None:
                raise
            raise TaskCallError(
                f"barrier {shown}: not released within {timeout:g}s{arrived or f' ({parties} parties)'}"
            ) from None
        if answer.get("ready"):
            released = answer.get("released_us")
            return released / 1e6 if isinstance(released, int) and released > 0 else None
        if isinstance(answer.get("arrived"), int) and isinstance(answer.get("parties"), int):
            arrived = f" ({answer['arrived']} of {answer['parties']} tasks arrived)"


USAGE = """Usage: rota-task checkpoint save FILE|-
       rota-task checkpoint load [FILE]
       rota-task progress FRACTION [MESSAGE]
       rota-task endpoint NAME [--timeout SECONDS]
       rota-task barrier NAME PARTIES [--round N] [--timeout S] [--checkpoint FILE|-]

Inside a Rota task: keep a checkpoint (at most 64 KiB) for the task's next attempt, read the last
one back (exit 1 when there is none), report progress (0 to 1) shown in get-job, print
host:port where another task of the job listens (NAME is task.port, or task when it has one
port), waiting until it is up (default 60 s; after a connection error, ask again: the task may
have moved), or wait until PARTIES tasks of the job have reached barrier NAME (exit 0 once
released; a task run again rejoins without counting twice; --round N: round N of a cyclic
barrier, whose rounds are released in order, exit 0 at once for a round already released;
--checkpoint: save that checkpoint before the arrival counts, in the same commit).
Exit 2 on bad usage, 3 when the call failed (the endpoint is not up in time, or the barrier was
not released within --timeout)."""


class _Usage(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    """``rota-task``: the SDK for tasks that are not Python (shell, Go, ...)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    try:
        return _command(args)
    except _Usage as e:
        print(f"rota-task: {e}\n{USAGE}", file=sys.stderr)
        return 2
    except TaskCallError as e:
        print(f"rota-task: {e}", file=sys.stderr)
        return 3


def _command(args: list[str]) -> int:
    if args[:2] == ["checkpoint", "save"]:
        if len(args) != 3:
            raise _Usage("checkpoint save takes one FILE, or - for standard input")
        data = _read_input(args[2])
        checkpoint.save(data)
        return 0
    if args[:2] == ["checkpoint", "load"]:
        if len(args) > 3:
            raise _Usage("checkpoint load takes at most one FILE")
        blob = checkpoint.load()
        if blob is None:
            return 1
        _write_output(args[2] if len(args) == 3 else "-", blob)
        return 0
    if args[:1] == ["progress"]:
        if len(args) not in (2, 3):
            raise _Usage("progress takes a FRACTION and an optional MESSAGE")
        try:
            fraction = float(args[1])
        except ValueError:
            raise _Usage(f"progress FRACTION must be a number from 0 to 1, got {args[1]!r}") from None
        try:
            progress(fraction, args[2] if len(args) == 3 else "")
        except ValueError as e:
            raise _Usage(str(e)) from None
        return 0
    if args[:1] == ["endpoint"]:
        timeout, rest = _option(args[1:], "--timeout", float, "a number of seconds")
        if len(rest) != 1 or rest[0].startswith("-"):
            raise _Usage("endpoint takes a NAME (task.port) and an optional --timeout SECONDS")
        try:
            print(endpoint(rest[0], ENDPOINT_TIMEOUT if timeout is None else timeout))
        except ValueError as e:
            raise _Usage(str(e)) from None
        return 0
    if args[:1] == ["barrier"]:
        _barrier_command(args[1:])
        return 0
    raise _Usage(f"unknown command {' '.join(args[:2])!r}" if args else "no command given")


def _option(args: list[str], flag: str, convert: Callable[[str], Any], what: str) -> tuple[Any, list[str]]:
    """The value of ``flag`` (``--flag V`` or ``--flag=V``) converted, or None; and the other args."""
    for at, arg in enumerate(args):
        if arg == flag:
            if at + 1 >= len(args):
                raise _Usage(f"{flag} takes {what}")
            raw, rest = args[at + 1], args[:at] + args[at + 2 :]
        elif arg.startswith(flag + "="):
            raw, rest = arg.partition("=")[2], args[:at] + args[at + 1 :]
        else:
            continue
        try:
            return convert(raw), rest
        except ValueError:
            raise _Usage(f"{flag} must be {what}, got {raw!r}") from None
    return None, args


def _barrier_command(args: list[str]) -> None:
    round, args = _option(args, "--round", int, "a whole number from 0")
    timeout, args = _option(args, "--timeout", float, "a number of seconds")
    source, args = _option(args, "--checkpoint", str, "a FILE, or - for standard input")
    if len(args) != 2:
        raise _Usage("barrier takes a NAME and a number of PARTIES")
    try:
        parties = int(args[1])
    except ValueError:
        raise _Usage(f"barrier PARTIES must be a whole number, got {args[1]!r}") from None
    try:
        barrier(args[0], parties, timeout, round, None if source is None else _read_input(source))
    except ValueError as e:
        raise _Usage(str(e)) from None


def _read_input(name: str) -> bytes:
    """At most one byte past the limit is read, so the error names the limit without reading a huge file."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(CHECKPOINT_MAX + 1)
        else:
            with open(name, "rb") as f:
                data = f.read(CHECKPOINT_MAX + 1)
    except OSError as e:
        raise _Usage(f"cannot read {name}: {e.strerror or e}") from None
    if len(data) > CHECKPOINT_MAX:
        raise TaskCallError(
            f"checkpoint.save: {'standard input' if name == '-' else name} is over the checkpoint "
            f"limit of {CHECKPOINT_MAX} bytes"
        )
    return data


def _write_output(name: str, blob: bytes) -> None:
    if name == "-":
        sys.stdout.buffer.write(blob)
        sys.stdout.buffer.flush()
        return
    try:
        with open(name, "wb") as f:
            f.write(blob)
    except OSError as e:
        raise TaskCallError(f"checkpoint.load: cannot write {name}: {e.strerror or e}") from None


if __name__ == "__main__":
    sys.exit(main())

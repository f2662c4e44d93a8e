"""A task's named ports, the executor's side: pick a free port per name for each attempt, tell the
task (``ROTA_PORT_<NAME>``, ``ROTA_HOST``), and publish each as an endpoint once it listens.

Whether a port listens is read from the kernel's socket tables (``/proc/net/tcp`` and ``tcp6``,
LISTEN entries), never by connecting to it: a connection would be a client the task must serve,
and could start a protocol exchange. The publish is a task call the executor makes itself
(``endpoint.publish``); the leader accepts it only from the attempt's own executor while the
attempt is current, and withdraws the endpoint when the attempt ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

from rota.protos import rota_pb2

log = logging.getLogger("rota.executor")

#: How often the socket tables are read while a port is not listening yet.
POLL_EVERY = 0.05
#: ... and after this many reads (about 10 s), this often.
SLOW_AFTER = 200
POLL_SLOW = 0.5
#: Pause before a publish is sent again after a failure that may pass (no leader yet, no answer).
RETRY_FIRST = 0.5
RETRY_MAX = 5.0
#: Where Linux lists TCP sockets; the state column of a listening one is 0A.
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
LISTEN = "0A"
HOST_ENV = "ROTA_HOST"
PORT_ENV_PREFIX = "ROTA_PORT_"
#: Refusals from the executor's own link, not from the leader: the publish is sent again.
TRANSIENT = ("not connected to a leader", "the leader did not answer")
#: Tries to find a port no other attempt here was given.
PICK_TRIES = 20

Call = Callable[[rota_pb2.TaskCall], Awaitable[rota_pb2.TaskCallReply]]


def host_of(addr: str) -> str:
    """The host part of an advertised ``host:port`` (``[v6]:port`` too)."""
    host = addr.rsplit(":", 1)[0] if ":" in addr else addr
    return host.strip("[]") or "127.0.0.1"


def join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def env_name(port: str) -> str:
    return PORT_ENV_PREFIX + port.upper()


def _packed(hexaddr: str) -> bytes:
    """An address as the kernel's tables print it (32-bit words in host order, little-endian here)."""
    return b"".join(bytes.fromhex(hexaddr[i : i + 8])[::-1] for i in range(0, len(hexaddr), 8))


def addresses_of(host: str) -> frozenset[bytes] | None:
    """The packed addresses a listener may have for clients of ``host`` to reach it: the host's
    own (IPv4 also as IPv4-mapped IPv6) and the wildcards. None when the host does not resolve:
    then any address counts."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return None
    out = {bytes(4), bytes(16)}
    for family, *_, sockaddr in infos:
        packed = socket.inet_pton(family, str(sockaddr[0]).split("%", 1)[0])
        out.add(packed)
        if family == socket.AF_INET:
            out.add(bytes(10) + b"\xff\xff" + packed)
    return frozenset(out)


def listening(tables: Iterable[str] = TABLES, on: frozenset[bytes] | None = None) -> set[int]:
    """The TCP ports something listens on, from the kernel's tables: on one of the addresses ``on``
    (a listener bound only to another address is one clients of this host cannot reach), or on any
    address when ``on`` is None."""
    ports: set[int] = set()
    for path in tables:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == LISTEN:
                        with contextlib.suppress(ValueError, IndexError):
                            addr, port = fields[1].rsplit(":", 1)
                            if on is None or _packed(addr) in on:
                                ports.add(int(port, 16))
        except OSError:
            continue
    return ports


def free_port(host: str) -> int:
    """A port free now on every address of the host's family: the kernel's pick for port 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        return int(s.getsockname()[1])


class Ports:
    """The ports this executor handed out to its running attempts, and their publishers."""

    def __init__(self, advertised: str, call: Call, tables: Iterable[str] = TABLES) -> None:
        self.host = host_of(advertised)
        self.reachable = addresses_of(self.host)
        self.call = call
        self.tables = tuple(tables)
        #: Ports given to attempts still running here: never given twice at once.
        self._given: set[int] = set()

    def allocate(self, names: Iterable[str]) -> dict[str, int]:
        """A free port per name. Raises OSError when none can be had."""
        ports: dict[str, int] = {}
        try:
            for name in names:
                for _ in range(PICK_TRIES):
                    port = free_port(self.host)
                    if port not in self._given:
                        break
                else:
                    raise OSError(f"no free port for {name!r} after {PICK_TRIES} tries")
                self._given.add(port)
                ports[name] = port
        except OSError:
            self.release(ports)  # those picked before the failure are not the attempt's
            raise
        return ports

    def release(self, ports: dict[str, int]) -> None:
        self._given.difference_update(ports.values())

    def env(self, ports: dict[str, int]) -> dict[str, str]:
        out = {HOST_ENV: self.host}
        out.update({env_name(name): str(port) for name, port in ports.items()})
        return out

    async def publish_when_listening(self, ref: rota_pb2.TaskRef, ports: dict[str, int]) -> None:
        """Watch until each port listens, then publish it; runs until done or cancelled (when the
        attempt ends)."""
        waiting = dict(ports)
        polls = 0
        while waiting:
            up = listening(self.tables, self.reachable)
            for name, port in list(waiting.items()):
                if port in up:
                    del waiting[name]
                    await self._publish(ref, name, port)
            if waiting:
                polls += 1
                # A task that has not listened for a while may never: look ten times less often.
                await asyncio.sleep(POLL_EVERY if polls < SLOW_AFTER else POLL_SLOW)

    async def _publish(self, ref: rota_pb2.TaskRef, name: str, port: int) -> None:
        addr = join(self.host, port)
        pause = RETRY_FIRST
        while True:
            call = rota_pb2.TaskCall(task=ref, op="endpoint.publish", name=name, addr=addr)
            reply = await self.call(call)
            if reply.ok:
                log.info(
                    "task %s/%d attempt %d listens on %s (%s)", ref.job_id, ref.index, ref.attempt, addr, name
                )
                return
            if not reply.error.startswith(TRANSIENT):
                log.warning(
                    "endpoint %s of task %s/%d attempt %d refused: %s",
                    name,
                    ref.job_id,
                    ref.index,
                    ref.attempt,
                    reply.error,
                )
                return
            await asyncio.sleep(pause)
            pause = min(RETRY_MAX, pause * 2)

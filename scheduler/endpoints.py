"""Endpoints: where a task's named port listens now, as the leader knows it.

A task that declares ``ports`` gets a port per name from its executor; once the executor sees the
port listen it publishes it (the ``endpoint.publish`` call, fenced to the task's current attempt
on that executor). The endpoint's name is ``<task copy name>.<port>`` (``server.feed``,
``server-2.feed``); it is kept in etcd (one record per endpoint, see docs/keys.md) and withdrawn
when the attempt ends. Another task of the same job asks where it is (``endpoint``) and waits
while it is not published: its call is parked until a publish, or until WAIT_MAX, when it is
answered "not ready" and the SDK asks again.

Pure state, owned by the Core: no I/O, no clock of its own.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rota.common.jobspec import PORT_NAME_RE

if TYPE_CHECKING:
    from rota.scheduler.core import Job, Task, TaskRef

#: The longest the leader holds an ``endpoint`` call unanswered; the executor gives up at 30 s.
WAIT_MAX = 20.0
#: The longest endpoint name a task may ask for (a task copy name is at most about 230 characters).
MAX_NAME = 300
#: The longest address an executor may publish (host:port).
MAX_ADDR = 300


@dataclass(slots=True)
class Published:
    """One endpoint in etcd: where it listens, and the attempt that listens there."""

    addr: str
    index: int
    attempt: int

    def encode(self) -> bytes:
        return json.dumps({"addr": self.addr, "index": self.index, "attempt": self.attempt}).encode()

    @staticmethod
    def decode(value: bytes) -> Published | None:
        """A stored record; None for one that cannot be read (it is deleted, not trusted)."""
        try:
            rec = json.loads(value)
            return Published(str(rec["addr"]), int(rec["index"]), int(rec["attempt"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(slots=True, eq=False)
class Waiter:
    """A parked ``endpoint`` call: who asked (to answer, and to drop it when the caller's attempt
    ends), for what, until when."""

    executor: str
    call_id: int
    caller: tuple[str, int, int]
    job_id: str
    name: str
    due: float
    done: bool = False


def full_name(task: Task, port: str) -> str:
    return f"{task.name}.{port}"


def find_task(job: Job, name: str) -> Task | None:
    """The task of this copy name (``server``, ``server-2``, ``server-shard2``) without walking
    every task of a large job: one look per template."""
    start = 0
    for tmpl in job.spec.tasks:
        copies = tmpl.copies()
        if tmpl.shards or copies > 1:
            prefix = f"{tmpl.name}-shard" if tmpl.shards else f"{tmpl.name}-"
            rest = name[len(prefix) :] if name.startswith(prefix) else ""
            if rest.isascii() and rest.isdigit() and (rest == "0" or rest[0] != "0") and int(rest) < copies:
                return job.tasks[start + int(rest)]
        elif name == tmpl.name:
            return job.tasks[start]
        start += copies
    return None


def resolve(job: Job, name: str) -> tuple[Task, str] | str:
    """The task and port an ``endpoint`` call names (``task.port``, or ``task`` when that task
    declares one port), or why it names none."""
    if not name:
        return "an endpoint name is required: 'task.port', or 'task' when it has one port"
    if len(name) > MAX_NAME:
        return f"an endpoint name is at most {MAX_NAME} characters"
    task_name, dot, port = name.rpartition(".")
    if dot and PORT_NAME_RE.fullmatch(port):
        task = find_task(job, task_name)
        if task is not None:
            if port in task.spec.ports:
                return task, port
            return f"task {task_name!r} of job {job.id} has no port {port!r} ({_ports_of(task)})"
    task = find_task(job, name)
    if task is None:
        return f"job {job.id} has no task named {(task_name if dot else name)!r}"
    ports = task.spec.ports
    if len(ports) == 1:
        return task, ports[0]
    if not ports:
        return f"task {name!r} of job {job.id} declares no ports"
    return f"task {name!r} has {len(ports)} ports: name one, as {name}.{ports[0]}"


def _ports_of(task: Task) -> str:
    ports = task.spec.ports
    return f"its ports: {', '.join(ports)}" if ports else "it declares no ports"


def publish_refusal(task: Task, port: str, addr: str) -> str:
    """Why an executor's publish of this task's port is refused ("" when it is not)."""
    if port not in task.spec.ports:
        return f"task {task.id} declares no port {port[:40]!r}"
    host, sep, number = addr.rpartition(":")
    if (
        not sep
        or not host
        or len(addr) > MAX_ADDR
        or not addr.isprintable()
        or not (number.isascii() and number.isdigit() and 0 < int(number) < 65536)
    ):
        return f"malformed endpoint address {addr[:60]!r}: expected host:port"
    return ""


class Endpoints:
    """The endpoints published now, and the calls parked waiting for one."""

    def __init__(self) -> None:
        #: job id -> endpoint name -> where it is.
        self._published: dict[str, dict[str, Published]] = {}
        #: (job id, endpoint name) -> calls waiting for it.
        self._waiting: dict[tuple[str, str], list[Waiter]] = {}
        #: (job id, index, attempt) of a caller -> its parked calls.
        self._by_caller: dict[tuple[str, int, int], list[Waiter]] = {}
        self._due: list[tuple[float, int, Waiter]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(len(names) for names in self._published.values())

    def lookup(self, job_id: str, name: str) -> Published | None:
        names = self._published.get(job_id)
        return names.get(name) if names else None

    def publish(self, job_id: str, name: str, pub: Published) -> list[Waiter]:
        """Keep an endpoint; the calls that waited for it are returned, to be answered."""
        self._published.setdefault(job_id, {})[name] = pub
        waiters = list(self._waiting.get((job_id, name), ()))
        for w in waiters:
            self._take(w)
        return waiters

    def withdraw(self, job_id: str, index: int, attempt: int, names: Iterable[str]) -> list[str]:
        """The endpoints (of ``names``) still this attempt's, forgotten: return their names."""
        published = self._published.get(job_id)
        if not published:
            return []
        gone = []
        for name in names:
            pub = published.get(name)
            if pub is not None and pub.index == index and pub.attempt == attempt:
                del published[name]
                gone.append(name)
        if not published:
            del self._published[job_id]
        return gone

    def park(self, waiter: Waiter) -> None:
        self._waiting.setdefault((waiter.job_id, waiter.name), []).append(waiter)
        self._by_caller.setdefault(waiter.caller, []).append(waiter)
        heapq.heappush(self._due, (waiter.due, next(self._seq), waiter))

    def expired(self, now: float) -> list[Waiter]:
        """Parked calls whose wait is over (WAIT_MAX): taken out, to be answered "not ready"."""
        out = []
        while self._due and self._due[0][0] <= now:
            w = heapq.heappop(self._due)[2]
            if not w.done:
                self._take(w)
                out.append(w)
        return out

    def caller_ended(self, ref: TaskRef) -> list[Waiter]:
        """The calls parked by an attempt that ended: taken out, to be refused."""
        waiters = list(self._by_caller.get((ref.job_id, ref.index, ref.attempt), ()))
        for w in waiters:
            self._take(w)
        return waiters

    def _take(self, w: Waiter) -> None:
        """A parked call is answered: out of the indexes (a heap entry stays until its time)."""
        w.done = True
        _remove(self._waiting, (w.job_id, w.name), w)
        _remove(self._by_caller, w.caller, w)

    def parked(self) -> int:
        return sum(len(ws) for ws in self._waiting.values())

    def any_parked(self) -> bool:
        return bool(self._by_caller)

    def of_job(self, job_id: str) -> dict[int, dict[str, str]]:
        """Task index -> port -> address, for get-job."""
        out: dict[int, dict[str, str]] = {}
        for name, pub in self._published.get(job_id, {}).items():
            out.setdefault(pub.index, {})[name.rpartition(".")[2]] = pub.addr
        return out


def _remove(index: dict[Any, list[Waiter]], key: Any, w: Waiter) -> None:
    waiting = index.get(key)
    if waiting is not None and w in waiting:
        waiting.remove(w)
        if not waiting:
            del index[key]

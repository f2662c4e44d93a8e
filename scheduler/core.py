"""The leader's scheduling core: a plain synchronous state machine.

Events come in as method calls (job added, executor attached or lost, task report,
cancel, tick); decisions go out through ``drain()``: state writes to persist, task
batches to dispatch, cancels and acks to send, jobs that ended. The core does no I/O
and never awaits, so its logic is tested in microseconds; ``rota.scheduler.leader`` and its
modules are the thin asyncio adapters that commits the writes (fenced, batched) before it sends
anything that depends on them.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from sortedcontainers import SortedDict

from rota.common import retry as retries
from rota.common.jobspec import JobSpec, TaskTemplate
from rota.common.requirements import Requirements
from rota.common.states import (
    ACTIVE,
    ASSIGNED,
    CANCELLED,
    FAILED,
    HANDED_BACK,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TASK_STATES,
    TERMINAL,
)
from rota.metastore import keys
from rota.scheduler import endpoints as ep
from rota.scheduler import gang as gangs
from rota.scheduler.barriers import WAIT_MAX, Barriers, Parked
from rota.scheduler.dependencies import Dependencies
from rota.scheduler.placement import ExecutorSlot, bounded_prefetch, choose_executor
from rota.scheduler.restarts import Budget

RETRY_BASE = 0.5
RETRY_CAP = 10.0
#: A template one of whose attempts ended this soon after placement has short tasks: its tasks
#: may use an executor's credit (queue there beyond the slots). Until then they take free slots only,
#: since a long task queued behind others would wait while another executor idles.
SHORT_RUN = 0.5
#: How long past its timeout the leader waits for an attempt's end before taking it back: the
#: executor kills a task at its timeout and reports it; this covers the report's way, a queue on the
#: executor, and an executor that does neither.
DEADLINE_MARGIN = 30.0
#: How long an ended job is kept by default (the masters' --job-retention).
DEFAULT_RETENTION = 24 * 3600.0
#: Ended jobs deleted per tick at most: the rest wait for the next tick, not the leader's loop.
EXPIRE_BATCH = 500
#: Ended jobs held with their tasks in memory (the most recent): get-job and wait-job answer them
#: from memory. Older ended jobs are held as summaries (EndedJob), their tasks read from etcd.
KEEP_DETAIL = 2000
#: ... and at most this many tasks in all among them.
KEEP_DETAIL_TASKS = 200_000
#: Expired job ids remembered, so that get-job can say "expired" and a late retry of a submission
#: does not run the job again.
REMEMBER_EXPIRED = 100_000
#: Tasks of released jobs freed per tick at most: a 200,000-task job freed at once held the loop
#: 22-24 ms (reference counting alone); a full collection walking it instead took 50-142 ms.
FREE_STEP = 10_000
#: Attempts lost with their executor (or handed back by a draining one) do not count against
#: max-attempts; but a task that kills every executor it runs on must end: it fails once this many
#: of its attempts were lost (LOST_FACTOR x max-attempts when that is more).
LOST_FLOOR = 10
LOST_FACTOR = 3


def lost_limit(max_attempts: int) -> int:
    """How many lost attempts fail a task allowed ``max_attempts`` failed ones."""
    return max(LOST_FLOOR, LOST_FACTOR * max_attempts)


def retry_delay(attempt: int) -> float:
    """Backoff before attempt ``attempt + 1`` after a failed attempt ``attempt``.

    The exponent is capped before the power is taken: a float power overflows past 2**1023."""
    return min(RETRY_CAP, RETRY_BASE * 2 ** min(max(0, attempt - 1), 32))


class Task:
    __slots__ = (
        "job", "index", "template", "copy", "state", "attempt", "executor", "result", "ready_at", "since",
        "failures", "lost", "deadline", "progress", "progress_at", "ckpt_budget", "ckpt_time", "budget",
        "reasons",
    )  # fmt: skip

    def __init__(self, job: Job, index: int, template: int, copy: int) -> None:
        self.job = job
        self.index = index
        self.template = template
        self.copy = copy
        self.state = PENDING
        #: The attempt number, raised on every placement: the fencing token of reports. Not what
        #: decides failing for good, which is ``failures`` (and the bound on ``lost``).
        self.attempt = 0
        #: Attempts that failed by themselves (an error, an exit code, a timeout).
        self.failures = 0
        #: Attempts lost with their executor, or handed back by a draining one.
        self.lost = 0
        self.executor = ""
        self.result: dict[str, Any] | None = None
        self.ready_at = 0.0
        #: Clock time it last became pending or was placed, for the wait and run latency figures.
        self.since = 0.0
        #: Clock time past which the leader reclaims the current attempt (tasks with a timeout).
        self.deadline = 0.0
        #: What the task last said of itself (the task SDK): (fraction done, message).
        self.progress: tuple[float, str] | None = None
        #: Clock time its progress was last written to etcd (PROGRESS_WRITE_EVERY).
        self.progress_at = -math.inf
        #: Bytes of checkpoint it may write now, and when that was reckoned (CHECKPOINT_BURST).
        self.ckpt_budget = float(CHECKPOINT_BURST)
        self.ckpt_time = 0.0
        #: A service task's recent failures and losses (in memory only: a new leader starts afresh).
        self.budget: Budget | None = None
        #: Why its latest failed attempts were retried, or not (retries.KEEP_REASONS, newest last).
        self.reasons: list[str] | None = None

    @property
    def spec(self) -> TaskTemplate:
        return self.job.spec.tasks[self.template]

    @property
    def id(self) -> str:
        return f"{self.job.id}/{self.index}"

    @property
    def name(self) -> str:
        return self.spec.copy_name(self.copy)

    @property
    def max_attempts(self) -> int:
        return self.spec.max_attempts or self.job.spec.max_attempts

    @property
    def priority(self) -> int:
        return self.job.prio[self.template]

    @property
    def retry(self) -> retries.RetryPolicy:
        return self.spec.retry or self.job.spec.retry or retries.DEFAULT

    @property
    def timeout(self) -> float | None:
        """Its own timeout, else the job's; a service task runs until it ends, so only its own."""
        spec = self.spec
        return spec.timeout if spec.timeout is not None or spec.service else self.job.spec.timeout

    def __lt__(self, other: Task) -> bool:
        return False

    def ref(self) -> TaskRef:
        return TaskRef(self.job.id, self.index, self.attempt)

    def record(self) -> dict[str, Any]:
        """What etcd keeps of the task (scheduler.store encodes it)."""
        rec: dict[str, Any] = {"s": self.state, "a": self.attempt}
        if self.executor:
            rec["e"] = self.executor
        if self.attempt:  # always, once placed: a record without it predates the counts
            rec["f"] = self.failures
        if self.lost:
            rec["l"] = self.lost
        if self.result is not None:
            rec["r"] = self.result
        if self.progress is not None:
            rec["p"] = list(self.progress)
        if self.reasons:
            rec["y"] = self.reasons
        return rec


class Job:
    __slots__ = (
        "id", "spec", "seq", "created", "state", "tasks", "counts", "started", "cancelled", "short", "ended",
        "owner", "gangs", "deps", "needs", "prio", "detailed",
    )  # fmt: skip

    def __init__(self, job_id: str, spec: JobSpec, seq: int, created: float, owner: str = "") -> None:
        self.id = job_id
        self.spec = spec
        self.seq = seq
        self.created = created
        #: The id of the token that submitted it ("" without tokens): a submit token cancels only its own.
        self.owner = owner
        self.state: str | None = None  # set once the job has ended
        #: When it ended (Unix time): its retention counts from here.
        self.ended: float | None = None
        self.started = False
        self.cancelled = False
        #: Ended, committed, and its tasks counted among those ended jobs keep (Core._detailed).
        self.detailed = False
        self.tasks: list[Task] = []
        self.counts: Counter[str] = Counter()
        for t_idx, tmpl in enumerate(spec.tasks):
            for copy in range(tmpl.copies()):
                self.tasks.append(Task(self, len(self.tasks), t_idx, copy))
        self.counts[PENDING] = len(self.tasks)
        #: Per template: whether its tasks are known to be short (see SHORT_RUN).
        self.short = [False] * len(spec.tasks)
        #: Per template, the gang its tasks belong to; None for a job without gangs (most).
        self.gangs = gangs.build(spec, self.tasks)
        #: Which templates wait for which (``after``); None for a job without (most).
        self.deps = Dependencies.of(spec)
        #: Per template, its tasks' priority: their own (``priority`` on the task), else the job's.
        self.prio = [spec.priority if t.priority is None else t.priority for t in spec.tasks]
        #: Per template, the resources each of its tasks holds on its executor; None when none asks.
        self.needs = (
            [t.needs.resources for t in spec.tasks] if any(t.needs.resources for t in spec.tasks) else None
        )

    def release(self) -> None:
        """Held as a summary or expired: its tasks go, freed by reference counting alone (a task
        and its job refer to each other), even while the cyclic collector is kept off them."""
        self.tasks = []
        self.gangs = None
        self.deps = None

    @property
    def priority(self) -> int:
        return self.spec.priority

    def __lt__(self, other: Job) -> bool:
        """Heaps order jobs by the fields before them; a full tie must not raise."""
        return False

    def current_state(self) -> str:
        return self.state or (RUNNING if self.started else PENDING)

    def all_ended(self) -> bool:
        """Every task is terminal. Spelled out: as a generator this was 9% of the leader's time."""
        counts = self.counts
        return counts[SUCCEEDED] + counts[FAILED] + counts[CANCELLED] + counts[SKIPPED] == len(self.tasks)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def retention(self) -> float | None:
        return self.spec.retention

    @property
    def type(self) -> str | None:
        return self.spec.type

    def record(self) -> dict[str, Any]:
        """What etcd keeps of the job (its order is the record's create revision, not stored).

        An ended job's record carries its summary, so a new leader holds it as an EndedJob
        without reading its spec or its task records."""
        rec: dict[str, Any] = {"id": self.id, "created": self.created, "state": self.state}
        if self.owner:
            rec["owner"] = self.owner
        if self.ended is not None:
            rec["ended"] = self.ended
        if self.state is not None:
            rec.update(self.summary().record())
        return rec

    def summary(self) -> EndedJob:
        assert self.state is not None and self.ended is not None
        return EndedJob(
            self.id, self.seq, self.created, self.state, self.ended, self.spec.name, self.spec.priority,
            Counter({s: n for s, n in self.counts.items() if n}), self.spec.retention, self.owner,
            self.spec.type,
        )  # fmt: skip


class EndedJob:
    """An ended job held as its summary: what list-jobs shows and what retention needs. Its tasks
    stay in etcd and are read from there when asked for, so the leader's memory and a new leader's
    rebuild cost a few hundred bytes per ended job, whatever its size."""

    __slots__ = (
        "id", "seq", "created", "state", "ended", "name", "priority", "counts", "retention", "owner", "type",
    )  # fmt: skip

    def __init__(
        self, job_id: str, seq: int, created: float, state: str, ended: float, name: str, priority: int,
        counts: Counter[str], retention: float | None, owner: str = "", job_type: str | None = None,
    ) -> None:  # fmt: skip
        self.id = job_id
        self.seq = seq
        self.created = created
        self.state: str | None = state
        self.ended: float | None = ended
        self.name = name
        self.priority = priority
        self.counts = counts
        self.retention = retention
        self.owner = owner
        #: The job type it was written for (``JobSpec.type``), None for a plain job.
        self.type = job_type

    def current_state(self) -> str:
        assert self.state is not None
        return self.state

    def task_count(self) -> int:
        return sum(self.counts.values())

    def record(self) -> dict[str, Any]:
        """The summary fields of the job's record."""
        rec: dict[str, Any] = {"name": self.name, "priority": self.priority, "counts": dict(self.counts)}
        if self.retention is not None:
            rec["retention"] = self.retention
        if self.type is not None:
            rec["type"] = self.type
        return rec

    @staticmethod
    def from_record(job_id: str, seq: int, rec: dict[str, Any]) -> EndedJob | None:
        """The summary in a stored record; None for a record without one (running, or written
        before summaries were stored)."""
        if rec.get("state") is None or "counts" not in rec or "name" not in rec or rec.get("ended") is None:
            return None
        counts = Counter({str(s): int(n) for s, n in rec["counts"].items()})
        retention = rec.get("retention")
        return EndedJob(
            job_id, seq, float(rec.get("created", 0.0)), str(rec["state"]), float(rec["ended"]), str(rec["name"]),
            int(rec.get("priority", 0)), counts, None if retention is None else float(retention),
            str(rec.get("owner", "")), None if rec.get("type") is None else str(rec["type"]),
        )  # fmt: skip


AnyJob = Job | EndedJob


def failures_of(record: dict[str, Any]) -> int:
    """The attempts of a stored task that failed by themselves."""
    if "f" in record:
        return int(record["f"])
    # Written before the counts were kept, when every attempt counted against max-attempts:
    # the ended ones count as failed, as they did then.
    state, attempt = record.get("s", PENDING), int(record.get("a", 0))
    unfinished = state in ACTIVE or state in (SUCCEEDED, CANCELLED)
    return max(0, attempt - (1 if unfinished else 0) - int(record.get("l", 0)))


def _given_up(result: dict[str, Any] | None, why: str) -> dict[str, Any]:
    """The result of a service task's last attempt, its error saying the budget is spent."""
    result = dict(result or {})
    error = result.get("error")
    if not error:
        code = result.get("exit_code")
        error = f"exited with code {code}" if code is not None else "failed"
    result["error"] = f"{error}; {why}"
    return result


def restore_task(job: Job, index: int, record: dict[str, Any]) -> None:
    """Apply a task record read from etcd to a job being rebuilt (before ``Core.add_job``)."""
    state, attempt, executor = record.get("s", PENDING), int(record.get("a", 0)), record.get("e", "")
    if state not in TASK_STATES:
        raise ValueError(f"unknown task state {state!r}")
    task = job.tasks[index]
    counts = job.counts
    counts[task.state] -= 1
    task.state = state
    counts[task.state] += 1
    task.attempt = attempt
    task.executor = executor
    task.result = record.get("r")
    progress = record.get("p")
    if isinstance(progress, list) and len(progress) == 2:
        task.progress = (float(progress[0]), str(progress[1]))
    task.lost = int(record.get("l", 0))
    task.failures = failures_of(record)
    reasons = record.get("y")
    if isinstance(reasons, list):
        task.reasons = [str(r) for r in reasons[-retries.KEEP_REASONS :]]
    if task.attempt:
        job.started = True


class Run:
    """The never-placed tasks ``[next, end)`` of one template of a job, queued as one heap entry: a job
    of 200,000 tasks is queued in microseconds instead of 200,000 heap pushes on the leader's loop.

    A task placed before (attempt > 0) that is pending again is queued on its own, with its backoff
    (``Core._enqueue``): the run passes over it."""

    __slots__ = ("job", "next", "end", "since")

    def __init__(self, job: Job, start: int, end: int, since: float) -> None:
        self.job = job
        self.next = start
        self.end = end
        self.since = since

    def __lt__(self, other: object) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class TaskRef:
    job_id: str
    index: int
    attempt: int


# -- decisions -----------------------------------------------------------------------


@dataclass(slots=True)
class PutTask:
    """Persist this task's state (the record as of when the decision was made)."""

    task: Task
    record: dict[str, Any]


@dataclass(slots=True)
class PutJob:
    job: Job


@dataclass(slots=True)
class Dispatch:
    executor: str
    tasks: list[tuple[Task, int]]  # (task, attempt it was assigned with)


@dataclass(slots=True)
class CancelTasks:
    executor: str
    refs: list[TaskRef]


@dataclass(slots=True)
class Ack:
    executor: str
    refs: list[TaskRef]


@dataclass(slots=True)
class JobEnded:
    job: Job


@dataclass(slots=True)
class DeleteJob:
    """An ended job's retention has passed: delete it from etcd (it is already out of the core)."""

    job: Job | EndedJob


@dataclass(slots=True)
class PutCheckpoint:
    """Persist a task's checkpoint (its current attempt saved it)."""

    task: Task
    data: bytes


@dataclass(slots=True)
class PutRecord:
    """Persist (or delete, when ``value`` is None) one of a job's own records beside its tasks: an
    endpoint, a barrier. Dropped with the job when the job is deleted in the same commit."""

    job: Job
    key: bytes
    value: bytes | None


@dataclass(slots=True)
class CallReply:
    """The answer to a task's own call, sent to its executor once what it decided is committed."""

    executor: str
    call_id: int
    error: str = ""
    #: Waiting calls (endpoint, barrier): False when the leader's longest wait passed first.
    ready: bool = True
    #: endpoint: where it listens (host:port); barrier, not ready: "arrived/parties".
    addr: str = ""
    #: barrier, ready: when it was released (microseconds since the epoch, the leader's clock).
    released_us: int = 0


Decision = (
    PutTask
    | PutJob
    | Dispatch
    | CancelTasks
    | Ack
    | JobEnded
    | DeleteJob
    | PutCheckpoint
    | PutRecord
    | CallReply
)

#: The largest checkpoint a task may save, and the longest progress message it may give.
MAX_CHECKPOINT = 64 * 1024
MAX_PROGRESS_MESSAGE = 256
#: A task's progress is written to etcd at most this often (seconds); get-job shows the latest at
#: once. A task that reports in a tight loop costs one write a second, not one per call.
PROGRESS_WRITE_EVERY = 1.0
#: Checkpoint bytes a task may write at once, and per second after that: a task saving in a tight
#: loop would otherwise fill etcd's history. A save past its budget waits (its answer too) until the
#: budget has grown back; a newer save while one waits replaces it.
CHECKPOINT_BURST = 256 * 1024
CHECKPOINT_RATE = 64 * 1024
#: A barrier arrival: executor, call id, the task, the barrier's name, parties, round.
_Arrival = tuple[str, int, TaskRef, str, int, int | None]


def _checkpoint_refusal(data: bytes) -> str:
    if len(data) > MAX_CHECKPOINT:
        return f"a checkpoint is {MAX_CHECKPOINT // 1024} KiB at most, this one is {len(data)} bytes"
    return ""


@dataclass
class Report:
    """An executor's word on one attempt of one task."""

    ref: TaskRef
    state: str  # RUNNING, SUCCEEDED, FAILED or HANDED_BACK
    result: dict[str, Any] | None = None


@dataclass
class Stats:
    stale_reports: int = 0
    requeued: int = 0
    #: Of ``requeued``: attempts lost with their executor (the rest failed and are retried).
    requeued_lost: int = 0
    dispatched: int = 0
    finished: int = 0


@dataclass(frozen=True)
class ExecutorLoad:
    name: str
    slots: int
    used: int
    connected: bool


@dataclass
class Summary:
    """The leader's scheduling state in figures, at one moment."""

    jobs: Counter[str]
    tasks: Counter[str]
    #: Pending tasks of unfinished jobs, by job priority.
    queue: Counter[int]
    executors: list[ExecutorLoad]
    stats: Stats


#: Gets seconds per attempt: "wait" is pending to placed on an executor, "run" is placed to ended as
#: the leader sees it (transfer and any prefetch queueing included). Two hooks, not one with a name:
#: this runs twice per task.
Observer = Callable[[float], None]


def no_observer(seconds: float) -> None:
    pass


class Core:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        observe_wait: Observer = no_observer,
        observe_run: Observer = no_observer,
        wall: Callable[[], float] = time.time,
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        self.clock = clock
        #: Unix time, for retention: an end time is stored, and read back by the next leader.
        self.wall = wall
        self.retention = retention
        self.observe_wait = observe_wait
        self.observe_run = observe_run
        self.jobs: dict[str, AnyJob] = {}
        #: Every job held, by (seq, id): submission order, the id settling a tie (records written in
        #: one transaction share a create revision). list-jobs pages from any point in O(log n).
        self.by_seq: SortedDict = SortedDict()
        #: Jobs not yet ended: what the scheduling walks and the figures look at. Ended jobs only
        #: wait for their retention, counted in ``ended_jobs``/``ended_tasks`` instead of walked.
        self.active: dict[str, Job] = {}
        self.ended_jobs: Counter[str] = Counter()
        self.ended_tasks: Counter[str] = Counter()
        self.executors: dict[str, ExecutorSlot] = {}
        self.stats = Stats()
        #: Per kind, a heap of (-priority, job seq, index, Task or Run): the next task to place first.
        #: Keyed by (kind, what the tasks need of their executor: labels and resources), so that a
        #: task that fits nowhere now holds up only tasks with the same needs.
        self._pending: dict[tuple[str, Requirements], list[tuple[int, int, int, Task | Run]]] = {}
        self._delayed: list[tuple[float, int, int, Task]] = []
        #: (deadline, attempt, index, task) of placed attempts of tasks with a timeout.
        self._deadlines: list[tuple[float, int, int, Task]] = []
        #: Ended jobs by the Unix time their retention ends: a sweep looks at what is due, not at history.
        self._expiry: list[tuple[float, int, str]] = []
        #: Ended jobs still held with their tasks, oldest end first.
        self._detailed: deque[Job] = deque()
        self._detailed_tasks = 0
        #: Jobs let go of whose tasks are freed FREE_STEP a tick (a list emptied from its end).
        self._freeing: deque[Job] = deque()
        self.keep_detail = KEEP_DETAIL
        #: Expired job id -> (when it ended, its retention), oldest first, at most REMEMBER_EXPIRED.
        self.expired: OrderedDict[str, tuple[float, float, int]] = OrderedDict()
        self._out: list[Decision] = []
        #: Tasks whose latest progress is held back (PROGRESS_WRITE_EVERY), and when it is due.
        self._progress_due: dict[Task, float] = {}
        #: Checkpoints held back by CHECKPOINT_RATE: task -> (attempt, data, callers, barrier
        #: arrivals that carried the checkpoint and follow it, when due).
        self._ckpt_held: dict[Task, tuple[int, bytes, list[tuple[str, int]], list[_Arrival], float]] = {}
        self._dispatch: dict[str, list[tuple[Task, int]]] = {}
        #: Where tasks' named ports listen now, and the calls waiting for one (scheduler.endpoints).
        self.endpoints = ep.Endpoints()
        self.barriers = Barriers()

    # -- outputs -------------------------------------------------------------------------

    def drain(self) -> list[Decision]:
        """Every decision since the last drain, dispatches last (after the writes they need)."""
        out = self._out
        for ex_id, tasks in self._dispatch.items():
            out.append(Dispatch(ex_id, tasks))
        self._out, self._dispatch = [], {}
        return out

    def _put(self, task: Task) -> None:
        self._out.append(PutTask(task, task.record()))

    # -- state changes -------------------------------------------------------------------

    def _set_state(self, task: Task, state: str) -> None:
        counts = task.job.counts
        counts[task.state] -= 1
        counts[state] += 1
        task.state = state

    def _enqueue(self, task: Task) -> None:
        if task.ready_at > self.clock():
            heapq.heappush(self._delayed, (task.ready_at, task.job.seq, task.index, task))
            return
        spec = task.spec
        heap = self._pending.setdefault((spec.kind, spec.needs), [])
        heapq.heappush(heap, (-task.priority, task.job.seq, task.index, task))

    def _release(self, task: Task) -> None:
        ex = self.executors.get(task.executor)
        if ex is not None:
            ex.drop(task)

    def _finish(self, task: Task, state: str, result: dict[str, Any] | None) -> None:
        self._attempt_ended(task)
        self._release(task)
        self._set_state(task, state)
        task.result = result
        self.stats.finished += 1
        self._put(task)
        job = task.job
        if state == FAILED and job.gangs is not None and job.gangs[task.template] is not None:
            self._fail_gang(job.gangs[task.template], task)
        if job.deps is not None:
            ready = job.deps.task_ended(task.template, state)
            if ready and not job.cancelled and job.state is None:
                self._release_templates(job, ready)
        if job.state is None and job.all_ended():
            self._end_job(job)

    def _queue_run(self, job: Job, t: int, start: int, now: float) -> None:
        """Queue template ``t``'s never-placed tasks (from index ``start``) as one Run."""
        spec = job.spec.tasks[t]
        heap = self._pending.setdefault((spec.kind, spec.needs), [])
        heapq.heappush(heap, (-job.prio[t], job.seq, start, Run(job, start, start + spec.copies(), now)))

    def _release_templates(self, job: Job, ready: list[int]) -> None:
        """Templates whose ``after`` tasks have all ended: queued to run, or, when one of those did
        not succeed and the template says ``on-failure = "skip"``, ended SKIPPED, which may make
        further templates ready (a worklist, not recursion: a chain may be thousands long)."""
        deps = job.deps
        assert deps is not None
        now = self.clock()
        work = list(ready)
        while work:
            t = work.pop()
            spec = job.spec.tasks[t]
            start, end = deps.starts[t], deps.starts[t] + spec.copies()
            unmet = deps.unmet[t]
            if unmet is None or spec.on_failure == "run":
                self._queue_run(job, t, start, now)
                continue
            why = {
                "error": f"skipped: task {job.spec.tasks[unmet].name!r}, which it runs after, did not succeed"
            }
            for task in job.tasks[start:end]:
                if task.state == PENDING:
                    self._set_state(task, SKIPPED)
                    task.result = why
                    self._put(task)
                    work.extend(deps.task_ended(t, SKIPPED))

    def _fail_gang(self, gang: gangs.Gang, failed: Task) -> None:
        """A gang member failed for good: the gang cannot do its work without it (a pipeline would
        wait for it forever), so the members not yet ended are cancelled."""
        by_executor: dict[str, list[TaskRef]] = {}
        result = {"error": f"cancelled: {failed.name}, a member of its gang {gang.name!r}, failed"}
        for task in gang.members:
            if task.state in TERMINAL:
                continue
            if task.state in ACTIVE:
                by_executor.setdefault(task.executor, []).append(task.ref())
            self._finish(task, CANCELLED, result)
        for ex_id, refs in by_executor.items():
            self._out.append(CancelTasks(ex_id, refs))

    def _end_job(self, job: Job) -> None:
        self._answer_gone(self.barriers.forget(job.id), job, "its job ended")
        if job.cancelled:
            job.state = CANCELLED
        else:
            counts = job.counts
            job.state = FAILED if counts[FAILED] or counts[CANCELLED] or counts[SKIPPED] else SUCCEEDED
        job.ended = self.wall()
        self._keep_until_expiry(job)
        self._out.append(PutJob(job))
        self._out.append(JobEnded(job))

    def retention_of(self, job: AnyJob) -> float:
        return job.retention if job.retention is not None else self.retention

    def _keep_until_expiry(self, job: AnyJob) -> None:
        """Out of the active jobs, into the expiry heap and the ended counts; the newest ended jobs
        keep their tasks in memory, older ones become summaries (``demote``)."""
        assert job.ended is not None and job.state is not None
        self.active.pop(job.id, None)
        self.ended_jobs[job.state] += 1
        self.ended_tasks.update(job.counts)
        heapq.heappush(self._expiry, (job.ended + self.retention_of(job), job.seq, job.id))

    def end_committed(self, job: Job) -> None:
        """A job's end is in etcd (or was found there): from now on it may be held as a summary,
        whose tasks are read back from etcd, once it is no longer among the most recent."""
        if job.detailed or self.jobs.get(job.id) is not job:  # expired before its end committed
            return
        job.detailed = True
        self._detailed.append(job)
        self._detailed_tasks += len(job.tasks)

    def demote(self) -> int:
        """Hold all but the ``keep_detail`` most recently ended jobs as summaries, and those too once
        they hold more than KEEP_DETAIL_TASKS tasks between them."""
        keep = self.keep_detail
        n = 0
        detailed = self._detailed
        while detailed and (
            len(detailed) > keep
            or self._detailed_tasks > KEEP_DETAIL_TASKS
            or not detailed[0].detailed  # expired or held as a summary since: let it go
        ):
            n += self.summarize(detailed.popleft())
        return n

    def summarize(self, job: Job) -> bool:
        """Hold an ended job as its summary from now on, its tasks let go (read back from etcd when
        asked for). False when it is not held with its tasks (not ended, already a summary, or
        expired). Its entry in ``_detailed`` goes when it reaches the front."""
        if not job.detailed:
            return False
        summary = job.summary()
        self.jobs[job.id] = summary
        self.by_seq[(job.seq, job.id)] = summary
        self._let_go(job)
        return True

    def _let_go(self, job: Job) -> None:
        """Its tasks no longer count among those ended jobs keep, and go: a big job's a step a tick."""
        job.detailed = False
        self._detailed_tasks -= len(job.tasks)
        if len(job.tasks) <= FREE_STEP:
            job.release()
            return
        job.gangs = job.deps = None
        self._freeing.append(job)

    def _free_some(self) -> None:
        left = FREE_STEP
        while self._freeing and left:
            tasks = self._freeing[0].tasks
            n = min(left, len(tasks))
            del tasks[len(tasks) - n :]
            left -= n
            if not tasks:
                self._freeing.popleft()

    def expire(self, limit: int = EXPIRE_BATCH) -> int:
        """Drop ended jobs whose retention has passed (at most ``limit``); their deletes go out as
        decisions. A rebuilt leader finds the rest in etcd and expires them in turn."""
        now = self.wall()
        n = 0
        while self._expiry and self._expiry[0][0] <= now and n < limit:
            _, seq, job_id = heapq.heappop(self._expiry)
            job = self.jobs.get(job_id)
            if job is not None and job.seq == seq and job.state is not None:
                del self.jobs[job.id]
                del self.by_seq[(job.seq, job.id)]
                assert job.state is not None
                self.ended_jobs[job.state] -= 1
                self.ended_tasks.subtract(job.counts)
                # Remembered from now, not from the delete's commit: a submission of this id in
                # between must not create the job again while its old keys are still in etcd.
                self.expired[job.id] = (job.ended or 0.0, self.retention_of(job), job.seq)
                if len(self.expired) > REMEMBER_EXPIRED:
                    self.expired.popitem(last=False)
                self._out.append(DeleteJob(job))
                if isinstance(job, Job) and job.detailed:
                    # Its tasks go now, not once every job ended before it has left _detailed
                    # (jobs of shorter retentions expire first); its entry there is left to demote.
                    # One whose end is not yet committed keeps them for its waiters.
                    self._let_go(job)
                n += 1
        return n

    def _attempt_ended(self, task: Task) -> None:
        """An active attempt ended: its run time goes to the metrics, and a short one marks its
        template short (its tasks may then use executors' credit)."""
        if task.state in ACTIVE and task.since:
            ran = self.clock() - task.since
            self.observe_run(ran)
            if ran < SHORT_RUN:
                task.job.short[task.template] = True
        if task.spec.ports or self.endpoints.any_parked():
            self._endpoints_ended(task)
        if task.job.id in self.barriers.jobs:
            self._answer_gone(self.barriers.attempt_ended(task.job.id, task.index, task.attempt), task.job)

    def _failed(self, task: Task, result: dict[str, Any] | None) -> None:
        """An attempt failed by itself: run again after a backoff, or fail for good once
        ``max_attempts`` attempts have failed."""
        task.failures += 1
        if task.spec.service:
            why = self._budget(task).failed(self.clock())
            if why:
                self._finish(task, FAILED, _given_up(result, why))
            else:
                self._requeue(task, result, backoff=True)
        else:
            policy = task.retry
            refused = policy.refusal((result or {}).get("exit_code"))
            if refused or task.failures >= task.max_attempts:
                why = refused.removesuffix(": not retried") or f"max-attempts ({task.max_attempts}) reached"
                self._note(task, retries.cut(f"{retries.outcome(task.attempt, result)}; {why}: not retried"))
                self._finish(task, FAILED, result)
            else:
                delay = policy.delay(task.failures)
                self._note(task, retries.reason(task.attempt, result, delay, policy))
                self._requeue(task, result, backoff=True, delay=delay)

    @staticmethod
    def _budget(task: Task) -> Budget:
        """A service task's restart budget, made when it is first needed."""
        if task.budget is None:
            spec = task.spec
            task.budget = Budget(spec.restarts, lost_limit(task.max_attempts), spec.restart_window)
        return task.budget

    def _lost(self, task: Task, result: dict[str, Any]) -> None:
        """An attempt ended with its executor (lost, gone, or handed back while draining): not the
        task's doing, so it runs again at once and max-attempts is not used up; only a task lost
        more often than ``lost_limit`` allows fails, as one that may be killing its executors."""
        task.lost += 1
        limit = lost_limit(task.max_attempts)
        if task.spec.service:
            # A year-old service must not die of old losses: only those within its window count.
            why = self._budget(task).lost(self.clock())
            if why:
                self._finish(task, FAILED, _given_up(result, why))
            else:
                self._requeue(task, result, backoff=False)
        elif task.lost >= limit:
            error = result.get("error") or "lost"
            result = {
                **result,
                "error": f"{error}; lost with its executor {task.lost} times (at most {limit}): "
                "given up, as a task that may be killing its executors",
            }
            self._finish(task, FAILED, result)
        else:
            self._note(task, retries.cut(f"{retries.outcome(task.attempt, result)}; run again at once"))
            self._requeue(task, result, backoff=False)

    @staticmethod
    def _note(task: Task, reason: str) -> None:
        reasons = task.reasons or []
        reasons.append(reason)
        task.reasons = reasons[-retries.KEEP_REASONS :]

    def _requeue(
        self, task: Task, result: dict[str, Any] | None, backoff: bool, delay: float | None = None
    ) -> None:
        self._attempt_ended(task)
        self._release(task)
        self._set_state(task, PENDING)
        task.result = result
        now = self.clock()
        task.since = now
        failures = task.failures if task.budget is None else task.budget.recent_failures(now)
        if delay is None:
            delay = retry_delay(failures)
        task.ready_at = now + delay if backoff else 0.0
        self.stats.requeued += 1
        if not backoff:
            self.stats.requeued_lost += 1
        self._put(task)
        self._enqueue(task)

    # -- events --------------------------------------------------------------------------

    def add_job(self, job: AnyJob) -> None:
        """A job whose record is committed to etcd (new, or rebuilt by a new leader).

        A rebuilt job may carry the traces of a commit cut short by a leader change: a
        cancelled task (only a cancel makes one) finishes the cancel, and a job whose tasks
        have all ended gets its end written now.
        """
        self.jobs[job.id] = job
        self.by_seq[(job.seq, job.id)] = job
        if job.state is not None:  # rebuilt, ended: kept until its retention passes
            if job.ended is None:  # ended before end times were stored: count from now
                job.ended = self.wall()
            self._keep_until_expiry(job)
            if isinstance(job, Job):
                self.end_committed(job)
            return  # nothing to place
        else:
            assert isinstance(job, Job)
            self.active[job.id] = job
            if job.counts[CANCELLED] and not job.cancelled:
                self.cancel_job(job.id)
                return
            if job.all_ended():
                self._end_job(job)
                return
            now = self.clock()
            if job.gangs is not None:
                self._explain_gangs(job.gangs)
            if job.started:  # rebuilt: tasks placed before and pending again are queued one by one
                for task in job.tasks:
                    if task.state == PENDING and task.attempt:
                        task.since = now
                        self._enqueue(task)
            deps = job.deps
            if deps is None:
                start = 0
                for t, template in enumerate(job.spec.tasks):
                    self._queue_run(job, t, start, now)
                    start += template.copies()
            else:
                if job.counts[PENDING] != len(job.tasks):  # rebuilt: count what has ended
                    deps.restore((t.template, t.state) for t in job.tasks if t.state in TERMINAL)
                self._release_templates(job, [t for t in range(len(job.spec.tasks)) if deps.ready(t)])
                if job.all_ended():  # the rest were skipped
                    self._end_job(job)
                    return
        self._schedule()

    def attach_executor(self, ex: ExecutorSlot, reported: Iterable[TaskRef] = ()) -> None:
        """An executor attached (new, or re-attached after a leader change with its running tasks).

        Tasks the leader has on this executor are kept if the executor reports the same
        attempt; an attempt it never reported started is sent again; one it ran and no longer
        has is requeued. Reported attempts the leader does not know are cancelled on the executor.
        """
        known = self.executors.get(ex.id)
        if known is not None:
            ex.take_over(known)
        self.executors[ex.id] = ex
        ex.connected = True
        reported_set = set(reported)
        for task in self._tasks_on(ex.id):
            if task.ref() in reported_set:
                ex.hold(task)
                if task.state == ASSIGNED:
                    self._set_state(task, RUNNING)
                self._arm(task)
                reported_set.discard(task.ref())
            elif task.state == ASSIGNED and known is not None:
                # Never reported started: the dispatch went down with the old stream (or with the
                # old leader). Sending it again under the same attempt costs no write and no retry.
                self._dispatch.setdefault(ex.id, []).append((task, task.attempt))
            else:
                ex.drop(task)
                self._lost(task, {"error": f"executor {ex.name} no longer runs it"})
        if reported_set:
            self._out.append(CancelTasks(ex.id, sorted(reported_set, key=lambda r: (r.job_id, r.index))))
        self._schedule()

    def _tasks_on(self, ex_id: str) -> list[Task]:
        ex = self.executors.get(ex_id)
        return sorted(ex.running, key=lambda t: (t.job.seq, t.index)) if ex else []

    def adopt_running(self) -> None:
        """After a rebuild: attach active tasks to the executors they were assigned to."""
        for job in list(self.active.values()):
            if job.state is None and (job.counts[ASSIGNED] or job.counts[RUNNING]):
                for t in job.tasks:
                    if t.state in ACTIVE:
                        ex = self.executors.get(t.executor)
                        if ex is None:
                            self._lost(t, {"error": "its executor is gone"})
                        else:
                            ex.hold(t)
                            self._arm(t)
        self._schedule()

    def executor_lost(self, ex_id: str, why: str = "lost") -> None:
        """The executor's lease expired or was revoked (or it left): requeue everything it ran."""
        ex = self.executors.pop(ex_id, None)
        if ex is None:
            return
        ex.connected = False
        for task in sorted(ex.running, key=lambda t: (t.job.seq, t.index)):
            self._lost(task, {"error": f"executor {ex.name} {why}"})
        ex.clear()
        self._schedule()

    def executor_detached(self, ex_id: str) -> None:
        """The stream broke; until its lease is gone the executor gets no new work."""
        ex = self.executors.get(ex_id)
        if ex is not None:
            ex.connected = False

    def set_credit(self, executor_id: str, credit: int) -> None:
        """The executor asks for ``credit`` tasks beyond its slots (its flow control)."""
        ex = self.executors.get(executor_id)
        if ex is None:
            return
        credit = bounded_prefetch(credit)
        grew = credit > ex.prefetch
        ex.prefetch = credit
        if grew:
            self._schedule()

    def set_leaving(self, executor_id: str, leaving: bool) -> None:
        """The executor says whether it is shutting down: it drains then (no new work; it hands
        back what it will not run), whatever an operator says."""
        ex = self.executors.get(executor_id)
        if ex is None or ex.leaving == leaving:
            return
        ex.leaving = leaving
        if not ex.draining:
            self._schedule()

    def request_drain(self, executor_id: str, drain: bool, timeout: float | None = None) -> bool:
        """An operator drains (or undrains) an executor: no new work from now on; the executor,
        told over its stream, hands back its queued tasks and lets its running ones finish within
        ``timeout``. False for an unknown executor."""
        ex = self.executors.get(executor_id)
        if ex is None:
            return False
        ex.drain_requested = drain
        ex.drain_timeout = timeout if drain else None
        if not ex.draining:
            self._schedule()
        return True

    def report(self, executor_id: str, reports: Iterable[Report]) -> None:
        """Task reports from one executor. Stale ones (another attempt, or already ended) are ignored.

        The attempt number is what makes a report current, not who sends it: an executor that
        fenced itself and registered anew still holds the results its attempts finished before,
        and while the task has not been placed again those results are the task's.
        """
        acks: list[TaskRef] = []
        for rep in reports:
            acks.append(rep.ref)
            job = self.active.get(rep.ref.job_id)
            task = job.tasks[rep.ref.index] if job and 0 <= rep.ref.index < len(job.tasks) else None
            if task is None or task.attempt != rep.ref.attempt or task.state not in ACTIVE:
                self.stats.stale_reports += 1
                continue
            if rep.state == RUNNING:
                if task.state == ASSIGNED:
                    self._set_state(task, RUNNING)
                    self._arm(task)
            elif rep.state == SUCCEEDED:
                self._finish(task, SUCCEEDED, rep.result)
            elif rep.state == HANDED_BACK:
                ex = self.executors.get(task.executor)
                name = ex.name if ex is not None else task.executor
                self._lost(task, {"error": f"executor {name} handed it back (draining)"})
            else:
                self._failed(task, rep.result)
        if acks:
            self._out.append(Ack(executor_id, acks))
        self._schedule()

    def call_refusal(self, executor_id: str, ref: TaskRef) -> str:
        """Why a task's own call is refused ("" when it may be made): only the current attempt of a
        task that runs on the executor passing the call on may make one."""
        job = self.active.get(ref.job_id)
        if job is None or not 0 <= ref.index < len(job.tasks):
            return f"task {ref.job_id}/{ref.index} is not running"
        task = job.tasks[ref.index]
        if task.attempt != ref.attempt or task.state not in ACTIVE:
            return f"attempt {ref.attempt} of task {task.id} is not its current one"
        if task.executor != executor_id:
            return f"task {task.id} does not run on this executor"
        return ""

    def save_checkpoint(self, executor_id: str, call_id: int, ref: TaskRef, data: bytes) -> None:
        refused = self.call_refusal(executor_id, ref) or _checkpoint_refusal(data)
        if refused:
            self._out.append(CallReply(executor_id, call_id, refused))
            return
        self._put_checkpoint(
            self.active[ref.job_id].tasks[ref.index], ref.attempt, data, (executor_id, call_id)
        )

    def _put_checkpoint(
        self,
        task: Task,
        attempt: int,
        data: bytes,
        caller: tuple[str, int] | None,
        then: _Arrival | None = None,
    ) -> None:
        """Write the checkpoint now if its budget allows, else hold it (the newest data wins) until
        it does; its caller is answered, and a barrier arrival that carried it made, once written."""
        held = self._ckpt_held.get(task)
        callers = [caller] if caller else []
        arrivals = [then] if then else []
        if held is not None and held[0] != attempt:
            # An earlier attempt's save still held: that attempt ended, its calls with it.
            self._refuse_held(held, f"attempt {held[0]} of task {task.id} ended first")
            held = (attempt, b"", [], [], held[4])
        if held is not None:
            self._ckpt_held[task] = (attempt, data, [*held[2], *callers], [*held[3], *arrivals], held[4])
            return
        now = self.clock()
        budget = self._ckpt_budget(task, now)
        if budget >= len(data):
            task.ckpt_budget = budget - len(data)
            self._out.append(PutCheckpoint(task, data))
            self._out.extend(CallReply(executor_id, call_id) for executor_id, call_id in callers)
            for a in arrivals:
                self._arrive(*a)
        else:
            due = now + (len(data) - budget) / CHECKPOINT_RATE
            self._ckpt_held[task] = (attempt, data, callers, arrivals, due)

    @staticmethod
    def _ckpt_budget(task: Task, now: float) -> float:
        budget = min(CHECKPOINT_BURST, task.ckpt_budget + (now - task.ckpt_time) * CHECKPOINT_RATE)
        task.ckpt_budget, task.ckpt_time = budget, now
        return budget

    def _write_checkpoints(self, now: float) -> None:
        """Write the checkpoints held back once their budget has grown back; a held save whose
        attempt ended meanwhile is refused (it is no longer the task's to write)."""
        for task, (attempt, data, callers, arrivals, due) in list(self._ckpt_held.items()):
            if task.attempt != attempt or task.state not in ACTIVE:
                del self._ckpt_held[task]
                self._refuse_held(
                    (attempt, data, callers, arrivals, due),
                    f"attempt {attempt} of task {task.id} ended first",
                )
            elif due <= now:
                del self._ckpt_held[task]
                task.ckpt_budget = max(0.0, self._ckpt_budget(task, now) - len(data))
                self._out.append(PutCheckpoint(task, data))
                self._out.extend(CallReply(executor_id, call_id) for executor_id, call_id in callers)
                for a in arrivals:
                    self._arrive(*a)

    def _refuse_held(
        self, held: tuple[int, bytes, list[tuple[str, int]], list[_Arrival], float], why: str
    ) -> None:
        for executor_id, call_id in [*held[2], *((a[0], a[1]) for a in held[3])]:
            self._out.append(CallReply(executor_id, call_id, why))

    def set_progress(
        self, executor_id: str, call_id: int, ref: TaskRef, fraction: float, message: str
    ) -> None:
        refused = self.call_refusal(executor_id, ref)
        if not refused and not 0.0 <= fraction <= 1.0:  # also false for NaN
            refused = f"progress must be a fraction from 0 to 1, got {fraction}"
        if not refused and len(message) > MAX_PROGRESS_MESSAGE:
            refused = f"a progress message is {MAX_PROGRESS_MESSAGE} characters at most"
        if not refused:
            task = self.active[ref.job_id].tasks[ref.index]
            task.progress = (fraction, message)
            now = self.clock()
            if now - task.progress_at >= PROGRESS_WRITE_EVERY:
                task.progress_at = now
                self._progress_due.pop(task, None)
                self._put(task)
            else:
                self._progress_due.setdefault(task, task.progress_at + PROGRESS_WRITE_EVERY)
        self._out.append(CallReply(executor_id, call_id, refused))

    def _write_progress(self, now: float) -> None:
        """Write the progress held back by PROGRESS_WRITE_EVERY once its time has come; forget the
        tasks that ended (their last record has it)."""
        for task, due in list(self._progress_due.items()):
            if task.state not in ACTIVE:
                del self._progress_due[task]
            elif due <= now:
                del self._progress_due[task]
                task.progress_at = now
                self._put(task)

    def publish_endpoint(self, executor_id: str, call_id: int, ref: TaskRef, port: str, addr: str) -> None:
        """The executor saw the attempt's port listen: keep the endpoint (in etcd too), answer the
        calls that waited for it. The answers go out once the record is committed."""
        refused = self.call_refusal(executor_id, ref)
        if not refused:
            task = self.active[ref.job_id].tasks[ref.index]
            refused = ep.publish_refusal(task, port, addr)
        if refused:
            self._out.append(CallReply(executor_id, call_id, refused))
            return
        job = task.job
        name = ep.full_name(task, port)
        pub = ep.Published(addr, task.index, task.attempt)
        if self.endpoints.lookup(job.id, name) != pub:  # a publish sent again is written once
            waiters = self.endpoints.publish(job.id, name, pub)
            self._out.append(PutRecord(job, keys.endpoint(job.id, name), pub.encode()))
            self._out.extend(CallReply(w.executor, w.call_id, addr=addr) for w in waiters)
        self._out.append(CallReply(executor_id, call_id))

    def find_endpoint(self, executor_id: str, call_id: int, ref: TaskRef, name: str) -> None:
        """Where another task of the caller's job listens: answered now, or once it is published
        (parked at most ep.WAIT_MAX, then answered not ready: the task asks again)."""
        refused = self.call_refusal(executor_id, ref)
        if not refused:
            job = self.active[ref.job_id]
            found = ep.resolve(job, name)
            if isinstance(found, str):
                refused = found
            elif found[0].state in TERMINAL:
                refused = f"task {found[0].name!r} has ended ({found[0].state}): its endpoint is gone"
        if refused:
            self._out.append(CallReply(executor_id, call_id, refused))
            return
        task, port = found
        full = ep.full_name(task, port)
        pub = self.endpoints.lookup(job.id, full)
        if pub is not None:
            self._out.append(CallReply(executor_id, call_id, addr=pub.addr))
        else:
            caller = (ref.job_id, ref.index, ref.attempt)
            due = self.clock() + ep.WAIT_MAX
            self.endpoints.park(ep.Waiter(executor_id, call_id, caller, job.id, full, due))

    def restore_endpoints(self, found: Iterable[tuple[str, str, bytes]]) -> None:
        """After a rebuild (before ``adopt_running``): keep the stored endpoints (job id, name,
        record) whose attempt is still the task's active one; delete the others."""
        for job_id, name, value in found:
            job = self.jobs.get(job_id)
            if not isinstance(job, Job):
                continue  # ended and held as a summary: its records go with it
            pub = ep.Published.decode(value)
            task = job.tasks[pub.index] if pub is not None and 0 <= pub.index < len(job.tasks) else None
            live = (
                pub is not None
                and task is not None
                and job.id in self.active
                and task.state in ACTIVE
                and task.attempt == pub.attempt
                and any(name == ep.full_name(task, p) for p in task.spec.ports)
            )
            if live and pub is not None:
                self.endpoints.publish(job.id, name, pub)
            else:
                self._out.append(PutRecord(job, keys.endpoint(job.id, name), None))

    def _endpoints_ended(self, task: Task) -> None:
        """An attempt ended: its endpoints are withdrawn, its parked endpoint calls refused."""
        job = task.job
        names = (ep.full_name(task, p) for p in task.spec.ports)
        for name in self.endpoints.withdraw(job.id, task.index, task.attempt, names):
            self._out.append(PutRecord(job, keys.endpoint(job.id, name), None))
        for w in self.endpoints.caller_ended(task.ref()):
            error = f"attempt {task.attempt} of task {task.id} ended while it waited for {w.name}"
            self._out.append(CallReply(w.executor, w.call_id, error))

    def barrier(
        self,
        executor_id: str,
        call_id: int,
        ref: TaskRef,
        name: str,
        parties: int,
        round: int | None = None,
        checkpoint: bytes | None = None,
    ) -> None:
        """A task reaches a barrier (scheduler.barriers), one round of it when ``round`` is given: its
        call waits until the barrier (round) is released, answered after the release is committed, or
        WAIT_MAX, answered not ready.

        With ``checkpoint``, the task's checkpoint is saved first, in the same commit as the arrival
        when its budget allows: whoever the release lets go, the checkpoint is durable (one round
        trip where a save and then an arrival take two)."""
        refused = self.call_refusal(executor_id, ref)
        if not refused and checkpoint is not None:
            tasks = len(self.active[ref.job_id].tasks)
            refused = _checkpoint_refusal(checkpoint) or self.barriers.refusal(
                ref.job_id, tasks, name, parties, round
            )
        if refused:
            self._out.append(CallReply(executor_id, call_id, refused))
            return
        arrival: _Arrival = (executor_id, call_id, ref, name, parties, round)
        if checkpoint is None:
            self._arrive(*arrival)
        else:
            task = self.active[ref.job_id].tasks[ref.index]
            self._put_checkpoint(task, ref.attempt, checkpoint, None, arrival)

    def _arrive(
        self, executor_id: str, call_id: int, ref: TaskRef, name: str, parties: int, round: int | None
    ) -> None:
        job = self.active[ref.job_id]
        call = Parked(ref.index, ref.attempt, executor_id, call_id, self.clock() + WAIT_MAX)
        arrival = self.barriers.arrive(
            job.id, len(job.tasks), call, name, parties, round, now_us=int(self.wall() * 1e6)
        )
        if arrival.error:
            self._out.append(CallReply(executor_id, call_id, arrival.error))
            return
        if arrival.write is not None:
            self._out.append(PutRecord(job, *arrival.write))
        for p in arrival.ready:
            task = job.tasks[p.index]
            if task.attempt == p.attempt and task.state in ACTIVE:
                self._out.append(CallReply(p.executor, p.call_id, released_us=p.released_us))
        for p, error in arrival.refused:
            self._out.append(CallReply(p.executor, p.call_id, error))

    def restore_barrier(self, job_id: str, name: str, record: dict[str, Any]) -> None:
        """A barrier read back from etcd by a new leader, for a job still running (else ignored)."""
        job = self.active.get(job_id)
        if job is not None:
            self.barriers.restore(job_id, name, record, len(job.tasks))

    def _answer_gone(self, calls: list[Parked], job: Job, why: str = "") -> None:
        for p in calls:
            error = why or f"attempt {p.attempt} of task {job.id}/{p.index} ended"
            self._out.append(CallReply(p.executor, p.call_id, f"{error} while it waited at a barrier"))

    def cancel_job(self, job_id: str) -> AnyJob | None:
        job = self.active.get(job_id)
        if job is None:
            return self.jobs.get(job_id)  # ended, or unknown: left as it is
        job.cancelled = True
        by_executor: dict[str, list[TaskRef]] = {}
        for task in job.tasks:
            if task.state in TERMINAL:
                continue
            if task.state in ACTIVE:
                by_executor.setdefault(task.executor, []).append(task.ref())
            self._finish(task, CANCELLED, task.result)
        for ex_id, refs in by_executor.items():
            self._out.append(CancelTasks(ex_id, refs))
        self._schedule()
        return job

    def withdraw_job(self, job_id: str) -> None:
        """A submission etcd refused (out of space): the job leaves as if it had never come, its
        placements undone. Its decisions, drained already, are the caller's to drop."""
        job = self.active.pop(job_id, None)
        if job is None:
            return
        del self.jobs[job_id]
        del self.by_seq[(job.seq, job.id)]
        for task in job.tasks:
            if task.state in ACTIVE:
                self._release(task)
                self.stats.dispatched -= 1
            self._set_state(task, CANCELLED)  # its queue entries now pass over it
        # Placements made while its creation was being sent are not drained yet: drop them too.
        self._out = [d for d in self._out if not (isinstance(d, PutTask) and d.task.job is job)]
        for ex_id, tasks in list(self._dispatch.items()):
            kept = [(t, a) for t, a in tasks if t.job is not job]
            if kept:
                self._dispatch[ex_id] = kept
            else:
                del self._dispatch[ex_id]
        self._schedule()

    def tick(self) -> float | None:
        """Move retries whose backoff has passed back to the queue, drop jobs past their retention;
        return the next wake-up time."""
        self.expire()
        self.demote()
        if self._freeing:
            self._free_some()
        now = self.clock()
        moved = False
        while self._delayed and self._delayed[0][0] <= now:
            task = heapq.heappop(self._delayed)[3]
            if task.state == PENDING:
                self._enqueue(task)
                moved = True
        self._reclaim(now)
        if self._progress_due:
            self._write_progress(now)
        if self._ckpt_held:
            self._write_checkpoints(now)
        for w in self.endpoints.expired(now):
            self._out.append(CallReply(w.executor, w.call_id, ready=False))
        if self.barriers.waiting:
            for p, where in self.barriers.expire(now):
                self._out.append(CallReply(p.executor, p.call_id, ready=False, addr=where))
        if moved:
            self._schedule()
        return self._delayed[0][0] if self._delayed else None

    def _arm(self, task: Task) -> None:
        """Put the leader's own deadline on the task's current attempt, which runs from now on: its
        timeout plus DEADLINE_MARGIN. Tasks without a timeout get none; so do attempts still queued
        on an executor (their wait is not the task's fault)."""
        timeout = task.timeout
        if not timeout:
            return
        task.deadline = self.clock() + timeout + DEADLINE_MARGIN
        heap = self._deadlines
        heapq.heappush(heap, (task.deadline, task.attempt, task.index, task))
        if len(heap) > 1024 and len(heap) > 2 * sum(len(ex.running) for ex in self.executors.values()):
            # Entries of attempts that ended long before their deadline: keep only the live ones.
            self._deadlines = [e for e in heap if e[3].state in ACTIVE and e[3].deadline == e[0]]
            heapq.heapify(self._deadlines)

    def _reclaim(self, now: float) -> None:
        """Attempts past the leader's deadline: their executor neither ended nor stopped them after
        their timeout. Stop them there, free the slot, and run them again (a failure, as a timeout is)."""
        reclaimed = False
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, attempt, _, task = heapq.heappop(self._deadlines)
            if task.state not in ACTIVE or task.attempt != attempt or task.deadline != deadline:
                continue
            reclaimed = True
            ex = self.executors.get(task.executor)
            name = ex.name if ex else task.executor
            self._out.append(CancelTasks(task.executor, [task.ref()]))
            error = (
                f"attempt {attempt} gave no result within {task.timeout:g}s (its timeout) plus "
                f"{DEADLINE_MARGIN:g}s on executor {name}: the leader took it back"
            )
            self._failed(task, {"error": error})
        if reclaimed:
            self._schedule()

    # -- placement -----------------------------------------------------------------------

    @staticmethod
    def _peek(heap: list[tuple[int, int, int, Task | Run]]) -> Task | None:
        """The heap's next pending task, dropping entries that are no longer pending."""
        while heap:
            entry = heap[0]
            item = entry[3]
            if isinstance(item, Run):
                if item.job.state is not None:
                    # Ended (cancelled while queued): nothing of it is pending, and its tasks may be
                    # gone already (held as a summary, expired).
                    heapq.heappop(heap)
                    continue
                tasks = item.job.tasks
                while item.next < item.end and (
                    tasks[item.next].state != PENDING or tasks[item.next].attempt
                ):
                    item.next += 1
                if item.next >= item.end:
                    heapq.heappop(heap)
                elif entry[2] != item.next:
                    heapq.heapreplace(heap, (entry[0], entry[1], item.next, item))
                else:
                    return tasks[item.next]
            elif item.state != PENDING:
                heapq.heappop(heap)
            else:
                return item
        return None

    @staticmethod
    def _pop(heap: list[tuple[int, int, int, Task | Run]]) -> None:
        """Take the task ``_peek`` just returned off the heap."""
        entry = heap[0]
        item = entry[3]
        if isinstance(item, Run):
            task = item.job.tasks[item.next]
            task.since = task.since or item.since
            item.next += 1
            if item.next < item.end:
                heapq.heapreplace(heap, (entry[0], entry[1], item.next, item))
            else:
                heapq.heappop(heap)
        else:
            heapq.heappop(heap)

    def _schedule(self) -> None:
        """Assign pending tasks, highest priority first, while executors have room (free slots,
        and credit for tasks known to be short); then let urgent tasks overtake less urgent ones
        queued on executors."""
        free = [ex for ex in self.executors.values() if ex.free > 0]
        #: Kinds whose best task has no room anywhere this round (its template is not known short).
        stuck: set[tuple[str, Requirements]] = set()
        #: Per needs, the free executors that fitted them when first looked at this round: a
        #: placement re-checks only the one it picks (a round places many tasks of the same needs).
        fitting: dict[tuple[str, Requirements], list[ExecutorSlot]] = {}
        #: Queue entries of gangs that do not fit this round, and those gangs: put back at the end.
        aside: list[tuple[list[tuple[int, int, int, Task | Run]], tuple[int, int, int, Task | Run]]] = []
        blocked: set[gangs.Gang] = set()
        while free:
            best: tuple[int, int, int] | None = None
            best_heap: list[tuple[int, int, int, Task | Run]] | None = None
            best_task: Task | None = None
            for key, heap in self._pending.items():
                kind = key[0]
                if key in stuck or not any(kind in ex.kinds for ex in free):
                    continue
                task = self._peek(heap)
                if task is not None and (best is None or heap[0][:3] < best):
                    best, best_heap, best_task = heap[0][:3], heap, task
            if best_heap is None or best_task is None:
                break
            task = best_task
            if task.job.gangs is not None and (gang := self._waiting_gang(task)) is not None:
                if gang not in blocked and self._place_gang(gang, best_heap[0][3]):
                    free = [ex for ex in free if ex.free > 0]
                else:
                    blocked.add(gang)
                    aside.append((best_heap, heapq.heappop(best_heap)))
                continue
            short = task.job.short[task.template]
            spec = task.spec
            if spec.needs:
                ex = self._fitting(fitting, (spec.kind, spec.needs), free)
            else:
                ex = choose_executor(spec.kind, free if short else [e for e in free if e.free_slots > 0])
            if ex is None:
                stuck.add((spec.kind, spec.needs))
                continue
            self._pop(best_heap)
            self._assign(task, ex)
            if ex.free == 0:
                free.remove(ex)
        for heap, entry in aside:
            heapq.heappush(heap, entry)
        self._overtake()

    @staticmethod
    def _fitting(
        fitting: dict[tuple[str, Requirements], list[ExecutorSlot]],
        key: tuple[str, Requirements],
        free: list[ExecutorSlot],
    ) -> ExecutorSlot | None:
        """The least loaded executor that can run a task of ``key``'s kind and needs now."""
        kind, needs = key
        cands = fitting.get(key)
        if cands is None:
            cands = fitting[key] = [e for e in free if kind in e.kinds and e.can_run(needs)]
        while cands:
            ex = min(cands, key=ExecutorSlot.load)
            if ex.can_run(needs):
                return ex
            cands.remove(ex)
        return None

    def _explain_gangs(self, job_gangs: list[gangs.Gang | None]) -> None:
        """A job comes in: the reason of each gang that cannot fit now, even one that ``_schedule``
        never reaches (no free executor offers its kind, or the cluster is full)."""
        gangs.settle(job_gangs)
        executors = list(self.executors.values())
        for gang in dict.fromkeys(job_gangs):
            if gang is not None and not gang.placed:
                pending = [t for t in gang.members if t.state == PENDING]
                gang.reason = gangs.shortfall(gang, pending, executors)

    @staticmethod
    def _waiting_gang(task: Task) -> gangs.Gang | None:
        """The gang ``task`` belongs to, while that gang waits to be placed."""
        job_gangs = task.job.gangs
        gang = job_gangs[task.template] if job_gangs is not None else None
        return gang if gang is not None and not gang.placed else None

    def _place_gang(self, gang: gangs.Gang, entry: Task | Run) -> bool:
        """Place every pending member of ``gang`` now, on free slots; or none, saying why."""
        if not gang.placed:
            why = gangs.short_of_room(gang, list(self.executors.values()))
            if why:
                gang.reason = why
                return False
        pending = [t for t in gang.members if t.state == PENDING and not t.attempt]
        placements, why = gangs.plan(gang, pending, self.executors.values())
        gang.reason = why
        if why:
            return False
        gang.placed = True
        since = entry.since if isinstance(entry, Run) else self.clock()
        for task, ex in placements:
            task.since = task.since or since
            self._assign(task, ex)
        return True

    def _overtake(self) -> None:
        """A pending task more urgent than work queued (not yet running) on a busy executor goes
        there anyway: the executor's gate starts it before that work. Without this, credit filled
        with low-priority tasks would make a later urgent task wait for all of them."""
        queued = [ex for ex in self.executors.values() if len(ex.running) > ex.slots]
        if not queued:
            return
        for (kind, needs), heap in self._pending.items():
            if needs:
                continue  # placed only where they fit, on free slots (_schedule)
            while (task := self._peek(heap)) is not None:
                if task.job.gangs is not None and self._waiting_gang(task) is not None:
                    break  # a gang goes on free slots only, all at once (_schedule)
                priority = task.priority
                targets = [ex for ex in queued if kind in ex.kinds and ex.can_be_overtaken_by(priority)]
                if not targets:
                    break
                self._pop(heap)
                self._assign(task, min(targets, key=lambda ex: (min(ex.priorities), ex.load())))

    def _assign(self, task: Task, ex: ExecutorSlot) -> None:
        now = self.clock()
        if task.since:
            self.observe_wait(now - task.since)
        task.since = now
        task.attempt += 1
        task.executor = ex.id
        task.job.started = True
        self._set_state(task, ASSIGNED)
        ex.hold(task)
        self.stats.dispatched += 1
        self._put(task)
        self._dispatch.setdefault(ex.id, []).append((task, task.attempt))

    # -- views ---------------------------------------------------------------------------

    def summary(self) -> Summary:
        """Counts for operators (metrics), walked on demand rather than kept on the hot path."""
        jobs: Counter[str] = +self.ended_jobs
        tasks: Counter[str] = +self.ended_tasks
        queue: Counter[int] = Counter()
        for j in self.active.values():
            jobs[j.current_state()] += 1
            tasks.update(j.counts)
            if j.state is None and j.counts[PENDING]:
                queue[j.priority] += j.counts[PENDING]
        executors = [
            ExecutorLoad(e.name, e.slots, len(e.running), e.connected) for e in self.executors.values()
        ]
        return Summary(jobs, tasks, queue, executors, replace(self.stats))

    def pending_count(self) -> int:
        return sum(j.counts[PENDING] for j in self.active.values())

    def newest(self, before: tuple[int, str] | None = None) -> Iterator[Job]:
        """Jobs held, newest first, from the one just before ``before`` (a (seq, id) key; None: the newest)."""
        for key in self.by_seq.irange(maximum=before, inclusive=(True, False), reverse=True):
            yield self.by_seq[key]

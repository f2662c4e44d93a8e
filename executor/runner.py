"""The task runner: run what the leader dispatches, a slot at a time, and keep each result until acknowledged.

Every accepted attempt waits at a priority gate for one of ``slots`` and runs its kind (in a
scratch dir of its own when the kind needs one, its output in the log store), or rides along in the
batch of a task of its kind ahead of it; it ends in a report. Reports stay in ``unacked``
until the leader acknowledges them (it does so only once they are committed to etcd), so the
link can send them again after a reconnect and a leader change loses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from rota.common import logs, results
from rota.common.limits import Limits, OverMaximum, effective
from rota.common.states import HANDED_BACK, State
from rota.executor import run_as
from rota.executor.config import AgentConfig
from rota.executor.flow import Credit
from rota.executor.gate import PriorityGate
from rota.executor.kinds.base import Kind, Ride, TaskResult, TaskSpec, settle
from rota.executor.ports import Ports
from rota.executor.task_calls import Attempts
from rota.executor.tasklogs import LogStore
from rota.protos import rota_pb2

log = logging.getLogger("rota.executor")

#: A task still running after this long is reported RUNNING (quick tasks skip that message).
RUNNING_REPORT_DELAY = 0.05
#: A batch of a batchable kind (``call``) takes along the tasks queued behind its first while
#: they fit this long at the executor's mean task time: a more urgent task waits about this at most.
BATCH_WINDOW = 0.005

Key = tuple[str, int]


class Reporter(Protocol):
    """Where reports go, and the executor id log lines carry: the link to the leader."""

    executor_id: str

    def send(self, report: rota_pb2.TaskReport) -> None: ...


@dataclass
class Running:
    ref: rota_pb2.TaskRef
    task: asyncio.Task[None]
    started: float
    #: Past the slot gate (running, or taken into a batch): not merely queued here.
    began: bool = False


class Runner:
    #: Set by the Agent once the link exists: the link also needs the runner.
    reporter: Reporter

    def __init__(self, conf: AgentConfig, kinds: dict[str, Kind]) -> None:
        self.conf = conf
        self.kinds = kinds
        #: Every accepted attempt, queued at the gate or running.
        self.running: dict[Key, Running] = {}
        self.gate = PriorityGate(conf.slots)
        self.credit = Credit(conf.slots, conf.prefetch)
        self.unacked: dict[tuple[str, int, int], rota_pb2.TaskReport] = {}
        self.completed = 0
        self.logs = LogStore(os.path.join(conf.work_dir, "logs"))
        #: Where tasks' scratch dirs go: the work dir, or with --run-as a dir of that user's in it.
        self.task_root = run_as.task_root(conf.work_dir)
        self.shared_root = run_as.shared_root(conf.work_dir)
        #: The secret each running attempt proves itself with when it calls (rota.task).
        self.attempts = Attempts()
        #: Tasks' named ports; the Agent points its publishes at the link to the leader.
        self.ports = Ports(conf.addr, _no_leader)
        self._batches: set[asyncio.Task[None]] = set()
        #: Called as each attempt ends with (kind, outcome, seconds from its start to its end); for metrics.
        self.on_task_ended: Callable[[str, str, float], None] | None = None
        #: While draining, nothing new starts: a dispatch that arrives is handed back at once.
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        plain = effective(Limits(), conf.task_defaults, conf.task_maxima)
        #: The bounds of a task that asks for none, and its timeout: computed once, for the call hot path.
        self.plain_limits, self._plain_timeout = replace(plain, timeout=None), plain.timeout

    def start(self, a: rota_pb2.TaskAssignment) -> None:
        key = (a.task.job_id, a.task.index)
        current = self.running.get(key)
        if current is not None:
            if current.ref.attempt >= a.task.attempt:
                return
            current.task.cancel()
        ref = rota_pb2.TaskRef()
        ref.CopyFrom(a.task)
        if self.draining:  # placed before the leader heard we drain
            if (ref.job_id, ref.index, ref.attempt) not in self.unacked:
                self._handed_back(ref)
            return
        task = asyncio.create_task(self._run(a, ref), name=f"task-{a.task.job_id}/{a.task.index}")
        self.running[key] = Running(ref, task, time.monotonic())
        self._idle.clear()

    def queued(self) -> list[Key]:
        """Attempts accepted and still waiting for a slot."""
        return [key for key, r in self.running.items() if not r.began]

    async def hand_back(self, keys: list[Key]) -> int:
        """Stop these attempts and give them back to the leader, which runs them again elsewhere
        without counting a failure. Reported once they have stopped, so no attempt runs twice."""
        stopped = [r for r in (self.running.pop(k, None) for k in keys) if r is not None]
        if not self.running:
            self._idle.set()
        for r in stopped:
            r.task.cancel()
        try:
            await asyncio.gather(*(r.task for r in stopped), return_exceptions=True)
        finally:  # even if the drain is called off meanwhile: the leader must hear of each
            for r in stopped:
                if (r.ref.job_id, r.ref.index, r.ref.attempt) not in self.unacked:  # unless it ended anyway
                    self._handed_back(r.ref)
        return len(stopped)

    def _handed_back(self, ref: rota_pb2.TaskRef) -> None:
        log.info("task %s/%d attempt %d handed back", ref.job_id, ref.index, ref.attempt, **self._ids(ref))
        report = rota_pb2.TaskReport(task=ref, state=HANDED_BACK, error="handed back: the executor drains")
        self.unacked[(ref.job_id, ref.index, ref.attempt)] = report
        self.reporter.send(report)

    async def wait_idle(self) -> None:
        """Until no attempt is running or queued here."""
        await self._idle.wait()

    def cancel(self, ref: rota_pb2.TaskRef) -> None:
        current = self.running.get((ref.job_id, ref.index))
        if current is not None and current.ref.attempt == ref.attempt:
            current.task.cancel()

    def held(self) -> list[rota_pb2.TaskRef]:
        """Attempts the leader must keep assigned here: a result not yet acknowledged counts too,
        or a new leader would run the attempt again before that result lands."""
        return [r.ref for r in self.running.values()] + [r.task for r in self.unacked.values()]

    async def _run(self, a: rota_pb2.TaskAssignment, ref: rota_pb2.TaskRef) -> None:
        key = (ref.job_id, ref.index)
        kind = self.kinds.get(a.kind)
        work_dir = ""
        announce: asyncio.TimerHandle | None = None
        holds_slot = began = False
        log_key = (ref.job_id, ref.index, ref.attempt)
        result: TaskResult | None = None
        started = 0.0
        ride: Ride | None = None
        ports: dict[str, int] = {}
        watcher: asyncio.Task[None] | None = None
        refused = ""
        secret, calls_env = self.attempts.add(ref) if kind is not None and kind.task_calls else ("", {})
        try:
            limits, timeout = self._bounds(a)
        except OverMaximum as e:
            limits, timeout, kind = None, None, None
            refused = f"limits: {e}"
        try:
            if (
                kind is not None
                and kind.batch_size > 1
                and kind.log_files is not True
                and limits is self.plain_limits
                and not a.ports
            ):
                ride = Ride(self._spec(a, ref, "", limits=limits, timeout=timeout, extra_env=calls_env))
            holds_slot = await self.gate.acquire(a.priority, ride) is None
            began = True
            current = self.running.get(key)
            if current is not None and current.ref.attempt == ref.attempt:
                current.began = True
            log_prefix = self.logs.begin(log_key, files=kind.log_files if kind is not None else False)
            started = time.monotonic()
            if limits is None:
                result = TaskResult(ok=False, error=refused)
            elif kind is None:
                result = TaskResult(ok=False, error=f"executor {self.conf.name} does not run kind {a.kind!r}")
            else:
                announce = asyncio.get_running_loop().call_later(
                    RUNNING_REPORT_DELAY,
                    self.reporter.send,
                    rota_pb2.TaskReport(task=ref, state=State.RUNNING),
                )
                if ride is not None:
                    if holds_slot:  # the slot goes to the batch, which releases it when done
                        self._start_batch(
                            kind, [ride, *self.gate.take(self._batch_limit(kind), _same_kind(a.kind))]
                        )
                        holds_slot = False
                    result = await asyncio.shield(ride.result)
                else:
                    if kind.needs_work_dir:
                        work_dir = tempfile.mkdtemp(prefix=f"{ref.index}-a{ref.attempt}-", dir=self.task_root)
                        run_as.own(work_dir)
                    env = calls_env
                    if a.ports:
                        ports = self.ports.allocate(a.ports)
                        env = {**calls_env, **self.ports.env(ports)}
                        watcher = asyncio.create_task(
                            self.ports.publish_when_listening(ref, ports),
                            name=f"ports-{ref.job_id}/{ref.index}",
                        )
                    result = await kind.run(self._spec(a, ref, log_prefix, work_dir, limits, timeout, env))
        except asyncio.CancelledError:
            if ride is not None:
                ride.cancel()
            log.info("task %s/%d attempt %d cancelled", ref.job_id, ref.index, ref.attempt, **self._ids(ref))
            raise
        except Exception as e:  # a broken kind must not take the executor down
            log.exception("kind %s failed on %s/%d", a.kind, ref.job_id, ref.index, **self._ids(ref))
            result = TaskResult(ok=False, error=f"{type(e).__name__}: {e}")
        finally:
            self.attempts.remove(secret)
            if watcher is not None:
                watcher.cancel()
            self.ports.release(ports)
            if announce is not None:
                announce.cancel()
            if holds_slot:
                self.gate.release()
            if began:
                held = time.monotonic() - started
                self.credit.ended(
                    result.seconds if result is not None and result.seconds is not None else held
                )
                if self.on_task_ended is not None:
                    outcome = "cancelled" if result is None else "succeeded" if result.ok else "failed"
                    self.on_task_ended(a.kind, outcome, held)
                # Before the attempt leaves ``running``: a log reader takes that as the end of its output.
                self.logs.end(log_key, result, a.retention)
            if self.running.get(key) is not None and self.running[key].ref.attempt == ref.attempt:
                del self.running[key]
            if not self.running:
                self._idle.set()
            if work_dir:
                shutil.rmtree(work_dir, ignore_errors=True)
        self.completed += 1
        assert result is not None
        if not result.ok:
            log.info(
                "task %s/%d attempt %d failed: %s",
                ref.job_id,
                ref.index,
                ref.attempt,
                result.error or f"exit code {result.exit_code}",
                **self._ids(ref),
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("task %s/%d attempt %d succeeded", ref.job_id, ref.index, ref.attempt, **self._ids(ref))
        report = _report(ref, result)
        self.unacked[(ref.job_id, ref.index, ref.attempt)] = report
        self.reporter.send(report)

    def _bounds(self, a: rota_pb2.TaskAssignment) -> tuple[Limits, float | None]:
        """The attempt's limits and timeout: its own, else the executor's defaults (OverMaximum when
        it asks for more than the executor allows). A service task runs until it ends: the
        executor's default timeout does not apply to it, only its own and the maximum."""
        if not a.timeout and not a.HasField("limits") and not a.service:
            return self.plain_limits, self._plain_timeout
        own = a.limits
        asked = Limits(
            cpu=own.cpu or None,
            memory=own.memory or None,
            processes=own.processes or None,
            file_size=own.file_size or None,
            timeout=a.timeout or None,
        )
        defaults = replace(self.conf.task_defaults, timeout=None) if a.service else self.conf.task_defaults
        bounds = effective(asked, defaults, self.conf.task_maxima)
        limits = replace(bounds, timeout=None)
        return (self.plain_limits if limits == self.plain_limits else limits), bounds.timeout

    def _spec(
        self,
        a: rota_pb2.TaskAssignment,
        ref: rota_pb2.TaskRef,
        log_prefix: str,
        work_dir: str = "",
        limits: Limits | None = None,
        timeout: float | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> TaskSpec:
        """``extra_env``: the attempt's own variables for its calls (ROTA_TASK_SOCKET, ...)."""
        return TaskSpec(
            job_id=ref.job_id,
            task_id=a.env.get("ROTA_TASK_ID", f"{ref.job_id}/{ref.index}"),
            attempt=ref.attempt,
            kind=a.kind,
            params=json.loads(a.params_json or b"{}"),
            env={**a.env, **extra_env} if extra_env else dict(a.env),
            timeout=timeout,
            work_dir=work_dir or self.shared_root,
            log_prefix=log_prefix,
            limits=limits if limits is not None else self.plain_limits,
        )

    def _batch_limit(self, kind: Kind) -> int:
        """How many queued tasks a batch takes along: as many as fit BATCH_WINDOW at the mean task
        time, none while that is unknown."""
        mean = self.credit.mean
        if mean is None:
            return 0
        fit = kind.batch_size if mean <= 0 else int(BATCH_WINDOW / mean)
        return max(0, min(kind.batch_size, fit) - 1)

    def _start_batch(self, kind: Kind, rides: list[Ride]) -> None:
        async def run() -> None:
            try:
                await kind.run_batch(rides)
            except Exception as e:  # a broken kind must not take the executor down
                log.exception("kind %s failed on a batch of %d", kind.name, len(rides))
                for ride in rides:
                    settle(ride, TaskResult(ok=False, error=f"{type(e).__name__}: {e}"))
            finally:
                self.gate.release()
                for ride in rides:
                    settle(ride, TaskResult(ok=False, error="cancelled"))

        task = asyncio.create_task(run(), name=f"batch-{kind.name}")
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _ids(self, ref: rota_pb2.TaskRef) -> dict[str, Any]:
        return logs.ids(
            job=ref.job_id,
            task=f"{ref.job_id}/{ref.index}",
            attempt=ref.attempt,
            executor=self.reporter.executor_id,
        )

    async def kill_all(self) -> None:
        tasks = [r.task for r in self.running.values()] + list(self._batches)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.running.clear()
        self._idle.set()

    def running_attempt(self, job_id: str, index: int) -> int:
        """The attempt of the task this executor holds, queued or running; 0 when none."""
        r = self.running.get((job_id, index))
        return r.ref.attempt if r is not None else 0


async def _no_leader(call: rota_pb2.TaskCall) -> rota_pb2.TaskCallReply:
    return rota_pb2.TaskCallReply(ok=False, error="no link to a leader")


def _same_kind(kind: str) -> Callable[[Any], bool]:
    return lambda ride: isinstance(ride, Ride) and ride.spec.kind == kind


def _report(ref: rota_pb2.TaskRef, result: TaskResult) -> rota_pb2.TaskReport:
    value = b""
    ok, error = result.ok, result.error
    if result.value is not None:
        with contextlib.suppress(TypeError, ValueError):
            value = json.dumps(result.value).encode()
    if len(value) > results.VALUE_CAP:
        ok, error, value = False, results.value_too_big(len(value)), b""
    error, _ = results.cap(error or "", results.ERROR_CAP)
    return rota_pb2.TaskReport(
        task=ref,
        state=State.SUCCEEDED if ok else State.FAILED,
        has_exit_code=result.exit_code is not None,
        exit_code=result.exit_code or 0,
        stdout=result.stdout,
        stderr=result.stderr,
        value_json=value,
        error=error,
        truncated=result.truncated,
    )

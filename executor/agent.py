"""The executor's link to the leader: attach, heartbeat, run what is dispatched, report back.

One Attach stream to the leader carries everything. The leader keeps the executor's
etcd lease alive on each heartbeat and acknowledges it; when no acknowledgement has
come for a whole TTL the lease may have expired and the leader may have given the
tasks to someone else, so the executor kills its running tasks and registers again
as a new executor (promise 5). Results are kept until the leader acknowledges them
(it does so only once they are committed to etcd) and are sent again after a
reconnect, so a leader change loses none.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from rota.common import logs, rpc
from rota.executor.gate import PriorityGate
from rota.executor.kinds.base import Kind, TaskResult, TaskSpec
from rota.executor.tasklogs import LogStore
from rota.protos import rota_pb2, rota_pb2_grpc

log = logging.getLogger("rota.executor")

#: A task still running after this long is reported RUNNING (quick tasks skip that message).
RUNNING_REPORT_DELAY = 0.05
RECONNECT_DELAY = 0.2

Key = tuple[str, int]


@dataclass
class AgentConfig:
    name: str
    join: list[str]
    addr: str
    slots: int
    labels: dict[str, str]
    keepalive_ttl: float
    keepalive_interval: float
    work_dir: str
    prefetch: int = 0


@dataclass
class Running:
    ref: rota_pb2.TaskRef
    task: asyncio.Task[None]
    started: float


class Agent:
    def __init__(self, conf: AgentConfig, kinds: dict[str, Kind]) -> None:
        self.conf = conf
        self.kinds = kinds
        self.executor_id = ""
        self.lease_id = 0
        self.ttl = conf.keepalive_ttl
        self.renewed_at = 0.0
        # Every accepted attempt, queued at the gate or running.
        self.running: dict[Key, Running] = {}
        self.gate = PriorityGate(conf.slots)
        self.unacked: dict[tuple[str, int, int], rota_pb2.TaskReport] = {}
        self.completed = 0
        self.logs = LogStore(os.path.join(conf.work_dir, "logs"))
        self._outbox: asyncio.Queue[rota_pb2.ExecutorMessage | rota_pb2.TaskReport] | None = None
        self._sent_beats: collections.deque[float] = collections.deque()
        self._stopping = False
        self._fenced = False
        self._session_task: asyncio.Task[str | None] | None = None
        self.fenced_count = 0
        #: Called as each attempt ends with (kind, outcome, seconds it held a slot); for metrics.
        self.on_task_ended: Callable[[str, str, float], None] | None = None

    @property
    def attached(self) -> bool:
        return self._outbox is not None and bool(self.executor_id)

    # -- connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """Stay attached to the current leader until stopped."""
        watchdog = asyncio.create_task(self._watch_lease())
        try:
            await self._attach_loop()
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    async def _attach_loop(self) -> None:
        targets = list(self.conf.join)
        i = 0
        while not self._stopping:
            addr = targets[i % len(targets)]
            self._session_task = asyncio.create_task(self._session(addr))
            try:
                redirect = await self._session_task
            except asyncio.CancelledError:
                if self._stopping or not self._fenced:
                    raise
                redirect = None
            except (grpc.aio.AioRpcError, ConnectionError, asyncio.TimeoutError) as e:
                log.debug("attach to %s failed: %s", addr, e)
                redirect = None
            except Exception as e:  # a stream torn down mid-write, and the like: attach again
                log.warning("stream to %s ended: %s: %s", addr, type(e).__name__, e)
                redirect = None
            self._fenced = False
            if self._stopping:
                break
            if redirect:
                log.info("%s is not the leader; going to %s", addr, redirect)
                if redirect not in targets:
                    targets.append(redirect)
                i = targets.index(redirect)
                continue
            i += 1
            await asyncio.sleep(RECONNECT_DELAY if i % len(targets) == 0 else 0.02)

    async def _session(self, addr: str) -> str | None:
        """One Attach stream; returns the leader's address when ``addr`` is a follower."""
        async with rpc.channel(addr) as channel:
            if not await rpc.ready(channel, 1.0):
                raise ConnectionError(f"{addr} does not answer")
            call = rota_pb2_grpc.MasterStub(channel).Attach()
            try:
                await call.write(rota_pb2.ExecutorMessage(hello=self._hello()))
                first = await call.read()
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    trailers = dict(e.trailing_metadata() or ())
                    return str(trailers.get("rota-leader", "")) or None
                raise
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                raise ConnectionError(f"{addr} sent no welcome")
            self._welcome(first.welcome)
            log.info(
                "attached to leader at %s as %s (lease ttl %ss)",
                addr,
                self.executor_id,
                first.welcome.ttl,
                **logs.ids(executor=self.executor_id),
            )
            self._outbox = asyncio.Queue()
            for report in self.unacked.values():
                self._outbox.put_nowait(report)
            workers = [asyncio.create_task(self._write(call)), asyncio.create_task(self._heartbeat())]
            try:
                reader = asyncio.create_task(self._read(call))
                done, _ = await asyncio.wait([reader, *workers], return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()
            finally:
                for t in [*workers, reader]:
                    t.cancel()
                await asyncio.gather(*workers, reader, return_exceptions=True)
                call.cancel()
                self._outbox = None
        return None

    def _hello(self) -> rota_pb2.Hello:
        # Attempts whose result is not yet acknowledged count as running: the new leader
        # must keep them assigned here, or it would run them again before the result lands.
        running = [r.ref for r in self.running.values()] + [r.task for r in self.unacked.values()]
        if not self.executor_id:
            running = []
        return rota_pb2.Hello(
            name=self.conf.name,
            addr=self.conf.addr,
            slots=self.conf.slots,
            labels=self.conf.labels,
            kinds=sorted(self.kinds),
            keepalive_ttl=self.conf.keepalive_ttl,
            prefetch=self.conf.prefetch,
            executor_id=self.executor_id,
            lease_id=self.lease_id,
            running=running,
        )

    def _welcome(self, w: rota_pb2.Welcome) -> None:
        if w.executor_id != self.executor_id:
            if self.executor_id:
                log.warning("registered anew as %s (was %s)", w.executor_id, self.executor_id)
            # Reports of the old identity's attempts are stale to the leader now.
            self.unacked.clear()
        self.executor_id, self.lease_id, self.ttl = w.executor_id, w.lease_id, float(w.ttl)
        self.renewed_at = time.monotonic()
        self._sent_beats.clear()

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        assert self._outbox is not None
        while True:
            item = await self._outbox.get()
            if isinstance(item, rota_pb2.TaskReport):
                # Fold every report already waiting into one message.
                reports = [item]
                others: list[rota_pb2.ExecutorMessage | rota_pb2.TaskReport] = []
                while not self._outbox.empty():
                    nxt = self._outbox.get_nowait()
                    (reports if isinstance(nxt, rota_pb2.TaskReport) else others).append(nxt)
                for other in others:
                    await call.write(other)
                item = self._reports_msg(reports)
            await call.write(item)

    async def _heartbeat(self) -> None:
        while True:
            self._sent_beats.append(time.monotonic())
            if self._outbox is not None:
                self._outbox.put_nowait(
                    rota_pb2.ExecutorMessage(heartbeat=rota_pb2.Heartbeat(running=len(self.running)))
                )
            await asyncio.sleep(self.conf.keepalive_interval)

    async def _watch_lease(self) -> None:
        """Promise 5: without a renewal for a TTL, kill everything and register anew.

        Runs across sessions: an executor cut off from every master is fenced too.
        """
        while True:
            await asyncio.sleep(min(0.1, self.conf.keepalive_interval / 2))
            if self.executor_id and time.monotonic() - self.renewed_at > self.ttl:
                log.warning(
                    "lease not renewed for %.1fs (ttl %gs): fenced out; killing %d running tasks",
                    time.monotonic() - self.renewed_at,
                    self.ttl,
                    len(self.running),
                    **logs.ids(executor=self.executor_id),
                )
                await self._fence()

    async def _fence(self) -> None:
        self.fenced_count += 1
        await self._kill_all()
        self.executor_id, self.lease_id = "", 0
        self.unacked.clear()
        if self._session_task is not None and not self._session_task.done():
            self._fenced = True
            self._session_task.cancel()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            body = msg.WhichOneof("body")
            if body == "dispatch":
                for a in msg.dispatch.tasks:
                    self._start(a)
            elif body == "cancel":
                for ref in msg.cancel.tasks:
                    self._cancel(ref)
            elif body == "acks":
                for ref in msg.acks.tasks:
                    self.unacked.pop((ref.job_id, ref.index, ref.attempt), None)
            elif body == "heartbeat_ack" and self._sent_beats:
                self.renewed_at = self._sent_beats.popleft()

    # -- tasks ---------------------------------------------------------------------------

    def _start(self, a: rota_pb2.TaskAssignment) -> None:
        key = (a.task.job_id, a.task.index)
        current = self.running.get(key)
        if current is not None:
            if current.ref.attempt >= a.task.attempt:
                return
            current.task.cancel()
        ref = rota_pb2.TaskRef()
        ref.CopyFrom(a.task)
        task = asyncio.create_task(self._run_task(a, ref), name=f"task-{a.task.job_id}/{a.task.index}")
        self.running[key] = Running(ref, task, time.monotonic())

    def _cancel(self, ref: rota_pb2.TaskRef) -> None:
        current = self.running.get((ref.job_id, ref.index))
        if current is not None and current.ref.attempt == ref.attempt:
            current.task.cancel()

    async def _run_task(self, a: rota_pb2.TaskAssignment, ref: rota_pb2.TaskRef) -> None:
        key = (ref.job_id, ref.index)
        kind = self.kinds.get(a.kind)
        work_dir = ""
        announce: asyncio.TimerHandle | None = None
        acquired = False
        log_key = (ref.job_id, ref.index, ref.attempt)
        result: TaskResult | None = None
        started = 0.0
        try:
            await self.gate.acquire(a.priority)
            acquired = True
            # Kinds spared a work dir (noop, sleep) print nothing: they are spared log files too.
            log_prefix = self.logs.begin(log_key, files=kind is not None and kind.needs_work_dir)
            started = time.monotonic()
            if kind is None:
                result = TaskResult(ok=False, error=f"executor {self.conf.name} does not run kind {a.kind!r}")
            else:
                if kind.needs_work_dir:
                    work_dir = tempfile.mkdtemp(prefix=f"{ref.index}-a{ref.attempt}-", dir=self.conf.work_dir)
                spec = TaskSpec(
                    job_id=ref.job_id,
                    task_id=a.env.get("ROTA_TASK_ID", f"{ref.job_id}/{ref.index}"),
                    attempt=ref.attempt,
                    kind=a.kind,
                    params=json.loads(a.params_json or b"{}"),
                    env=dict(a.env),
                    timeout=a.timeout or None,
                    work_dir=work_dir or self.conf.work_dir,
                    log_prefix=log_prefix,
                )
                announce = asyncio.get_running_loop().call_later(
                    RUNNING_REPORT_DELAY, self._send, rota_pb2.TaskReport(task=ref, state="RUNNING")
                )
                result = await kind.run(spec)
        except asyncio.CancelledError:
            log.info("task %s/%d attempt %d cancelled", ref.job_id, ref.index, ref.attempt, **self._ids(ref))
            raise
        except Exception as e:  # a broken kind must not take the executor down
            log.exception("kind %s failed on %s/%d", a.kind, ref.job_id, ref.index, **self._ids(ref))
            result = TaskResult(ok=False, error=f"{type(e).__name__}: {e}")
        finally:
            if announce is not None:
                announce.cancel()
            if acquired:
                self.gate.release()
                if self.on_task_ended is not None:
                    outcome = "cancelled" if result is None else "succeeded" if result.ok else "failed"
                    self.on_task_ended(a.kind, outcome, time.monotonic() - started)
                # Before the attempt leaves ``running``: a log reader takes that as the end of its output.
                self.logs.end(log_key, result)
            if self.running.get(key) is not None and self.running[key].ref.attempt == ref.attempt:
                del self.running[key]
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
        self._send(report)

    def _ids(self, ref: rota_pb2.TaskRef) -> dict[str, Any]:
        return logs.ids(
            job=ref.job_id, task=f"{ref.job_id}/{ref.index}", attempt=ref.attempt, executor=self.executor_id
        )

    def _send(self, report: rota_pb2.TaskReport) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(report)

    @staticmethod
    def _reports_msg(reports: Sequence[rota_pb2.TaskReport]) -> rota_pb2.ExecutorMessage:
        return rota_pb2.ExecutorMessage(reports=rota_pb2.TaskReports(reports=reports))

    async def _kill_all(self) -> None:
        tasks = [r.task for r in self.running.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.running.clear()

    def running_attempt(self, job_id: str, index: int) -> int:
        """The attempt of the task this executor holds, queued or running; 0 when none."""
        r = self.running.get((job_id, index))
        return r.ref.attempt if r is not None else 0

    async def stop(self) -> None:
        self._stopping = True
        await self._kill_all()

    def status(self) -> dict[str, object]:
        return {
            "id": self.executor_id,
            "name": self.conf.name,
            "addr": self.conf.addr,
            "slots": self.conf.slots,
            "kinds": sorted(self.kinds),
            "running": [
                {"job_id": r.ref.job_id, "index": r.ref.index, "attempt": r.ref.attempt}
                for r in self.running.values()
            ],
            "completed": self.completed,
        }


def _report(ref: rota_pb2.TaskRef, result: TaskResult) -> rota_pb2.TaskReport:
    value = b""
    if result.value is not None:
        with contextlib.suppress(TypeError, ValueError):
            value = json.dumps(result.value).encode()
    return rota_pb2.TaskReport(
        task=ref,
        state="SUCCEEDED" if result.ok else "FAILED",
        has_exit_code=result.exit_code is not None,
        exit_code=result.exit_code or 0,
        stdout=result.stdout,
        stderr=result.stderr,
        value_json=value,
        error=result.error,
        truncated=result.truncated,
    )

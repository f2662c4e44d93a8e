"""The executor's link to the leader: one Attach stream carries everything.

The executor says hello (with the attempts it holds), the leader welcomes it with an id and a
lease, and from then on heartbeats and reports go up while dispatches, cancels and
acknowledgements come down. A follower answers with the leader's address; any failure means
trying the next master, and unacknowledged results are sent again on the new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence

import grpc

from rota.common import logs, rpc
from rota.executor.config import AgentConfig
from rota.executor.fencing import Lease
from rota.executor.runner import Runner
from rota.protos import rota_pb2, rota_pb2_grpc

log = logging.getLogger("rota.executor")

#: The pause after a round of every master failed, doubled each further round up to
#: RECONNECT_CAP, and drawn at random below that ("full jitter"): executors that lost their leader
#: together do not knock on the masters together, and a cluster that is down for long is asked
#: a few times a minute, not five times a second. An attach resets it.
RECONNECT_DELAY = 0.2
RECONNECT_CAP = 10.0


def reconnect_pause(rounds: int, draw: float) -> float:
    """The pause after ``rounds`` failed rounds in a row (1 or more); ``draw`` is uniform in [0, 1)."""
    ceiling = min(RECONNECT_CAP, RECONNECT_DELAY * 2 ** min(rounds - 1, 16))
    return RECONNECT_DELAY / 2 + draw * (ceiling - RECONNECT_DELAY / 2)


#: Heartbeats unanswered this long (at most half the lease TTL, at least two intervals) mean the
#: leader stalled.
STALLED_AFTER = 2.0
#: How long a master may take to welcome an executor, and how long one that did not is skipped
#: when a follower still names it as the leader.
WELCOME_TIMEOUT = 1.0
SILENT_FOR = 1.5
#: While more tasks are here to end, reports wait up to REPORT_GATHER after the last report message,
#: or until REPORT_BATCH of them are waiting, so that one message, one leader turn and one etcd
#: commit carry many. At 5 ms a call task cost twice as much CPU end to end as at 30 ms (most of it
#: per message and per commit, in etcd, the leader and the executor alike): see docs/benchmarks.md.
REPORT_GATHER = 0.03
REPORT_BATCH = 128
#: How a master turns away a hello it will never take: said loudly, then tried again with back-off.
REFUSALS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)
#: One master's time to say how long a lease has left, when asked before fencing.
LEASE_ASK_TIMEOUT = 0.5
#: A task's call (rota.task) waits this long for a stream to the leader, then this long for the
#: leader's answer (sent again on the next stream if this one ends first).
CALL_ATTACH_WAIT = 30.0
CALL_REPLY_TIMEOUT = 30.0
#: Calls that wait for something (a barrier's release): when no leader answers in time, they are
#: answered not ready instead of refused, and the task asks again (a leader change is not an error).
WAITING_OPS = frozenset({"barrier", "endpoint"})


class Link:
    """The stream to the current leader, and the identity and lease it gave this executor."""

    def __init__(self, conf: AgentConfig, runner: Runner, lease: Lease) -> None:
        self.conf = conf
        self.runner = runner
        self.lease = lease
        self.executor_id = ""
        self.lease_id = 0
        self._outbox: asyncio.Queue[rota_pb2.ExecutorMessage | rota_pb2.TaskReport] | None = None
        self._stopping = False
        self._fenced = False
        self._session_task: asyncio.Task[str | None] | None = None
        #: The join list and every leader address learned since.
        self._targets = list(conf.join)
        self._asks = rpc.ChannelPool(conf.tls)
        #: Masters that left a hello unanswered, and when: a follower may still name one as leader.
        self._silent: dict[str, float] = {}
        #: Set by a welcome: the reconnect backoff starts again from its shortest pause.
        self._attached_once = False
        #: Called with (drain, timeout or None) when the leader passes on an operator's drain or undrain.
        self.on_drain: Callable[[bool, float | None], None] | None = None
        #: What the leader hears of our draining: under an operator's drain, shutting down.
        self.drained = False
        self.leaving = False
        #: Set while a stream is up (welcomed): task calls wait for it.
        self._up = asyncio.Event()
        #: Task calls sent and not yet answered, by call id: sent again on a new stream.
        self._calls: dict[int, tuple[rota_pb2.TaskCall, asyncio.Future[rota_pb2.TaskCallReply]]] = {}
        self._call_ids = itertools.count(1)
        #: Reports queued since the last report message, and the signal to stop gathering them.
        self._reports_queued = 0
        self._flush = asyncio.Event()

    @property
    def attached(self) -> bool:
        return self._outbox is not None and bool(self.executor_id)

    def send(self, report: rota_pb2.TaskReport) -> None:
        """Queue a report on the live stream; with none, ``unacked`` keeps results for the next."""
        if self._outbox is not None:
            self._outbox.put_nowait(report)
            self._reports_queued += 1
            if self._reports_queued >= REPORT_BATCH or not self.runner.running:
                self._flush.set()  # a full batch, or the last task's report: no more waiting

    def _put(self, msg: rota_pb2.ExecutorMessage) -> None:
        """Queue anything but a report: it goes at once, with the reports gathered so far."""
        assert self._outbox is not None
        self._outbox.put_nowait(msg)
        self._flush.set()

    def stop(self) -> None:
        self._stopping = True

    async def task_call(self, call: rota_pb2.TaskCall) -> rota_pb2.TaskCallReply:
        """Pass a task's call on to the leader and return its answer; a refusal (ok false) when
        there is no leader to ask or it does not answer in time. Never blocks the loop: each call
        waits on a future of its own, answered by ``_read``."""
        if self._outbox is None:
            try:
                await asyncio.wait_for(self._up.wait(), CALL_ATTACH_WAIT)
            except asyncio.TimeoutError:
                if call.op in WAITING_OPS:
                    return rota_pb2.TaskCallReply(ok=True, ready=False)
                return rota_pb2.TaskCallReply(
                    ok=False, error=f"not connected to a leader (waited {CALL_ATTACH_WAIT:g}s)"
                )
        msg = rota_pb2.TaskCall()
        msg.CopyFrom(call)
        msg.call_id = next(self._call_ids)
        answer: asyncio.Future[rota_pb2.TaskCallReply] = asyncio.get_running_loop().create_future()
        self._calls[msg.call_id] = (msg, answer)
        try:
            if self._outbox is not None:
                self._put(rota_pb2.ExecutorMessage(task_call=msg))
            return await asyncio.wait_for(answer, CALL_REPLY_TIMEOUT)
        except asyncio.TimeoutError:
            if call.op in WAITING_OPS:
                return rota_pb2.TaskCallReply(call_id=msg.call_id, ok=True, ready=False)
            return rota_pb2.TaskCallReply(
                call_id=msg.call_id,
                ok=False,
                error=f"the leader did not answer within {CALL_REPLY_TIMEOUT:g}s",
            )
        finally:
            self._calls.pop(msg.call_id, None)

    def beat_now(self) -> None:
        """Heartbeat at once: the leader learns without waiting that we are leaving."""
        if self._outbox is not None:
            self._beat()

    async def leave(self, timeout: float) -> bool:
        """Say we are leaving and wait (at most ``timeout``) for the leader to end the stream,
        having revoked our lease; no new stream is opened after it. False when not attached."""
        self._stopping = True
        session = self._session_task
        if not self.attached or session is None or session.done():
            return False
        self._put(rota_pb2.ExecutorMessage(leaving=rota_pb2.Leaving()))
        done, _ = await asyncio.wait([session], timeout=timeout)
        if done:
            log.info("left the cluster: the leader revoked our lease", **logs.ids(executor=self.executor_id))
        return bool(done)

    async def close(self) -> None:
        await self._asks.close()

    def fenced(self) -> None:
        """Drop the fenced-out identity and its session: the next hello registers anew."""
        self.executor_id, self.lease_id = "", 0
        if self._session_task is not None and not self._session_task.done():
            self._fenced = True
            self._session_task.cancel()

    async def lease_left(self) -> tuple[float, float] | None:
        """Ask every master how long our lease has left: ``(asked_at, seconds)`` from the most
        hopeful answer, None when none answers or the lease is gone."""
        lease_id, asked_at = self.lease_id, time.monotonic()
        if not lease_id:
            return None
        request = rota_pb2.LeaseStatusRequest(lease_id=lease_id)

        async def ask(addr: str) -> int:
            stub = rota_pb2_grpc.MasterStub(self._asks.get(addr))
            return int((await stub.LeaseStatus(request, timeout=LEASE_ASK_TIMEOUT)).ttl)

        answers = await asyncio.gather(*(ask(a) for a in self._targets), return_exceptions=True)
        best = max((a for a in answers if isinstance(a, int)), default=0)
        if lease_id != self.lease_id or best <= 0:
            return None
        log.info("no acknowledgement from the leader, but a master says the lease has %ds left", best)
        return asked_at, float(best)

    async def run(self) -> None:
        """Stay attached to the current leader until stopped."""
        targets = self._targets
        i = 0
        #: Sessions in a row that ended without a welcome (a follower's redirect is not one).
        failures = 0
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
                if isinstance(e, grpc.aio.AioRpcError) and e.code() in REFUSALS:
                    log.warning("%s refused this executor: %s", addr, e.details())
                elif failures + 1 == len(targets):
                    # A whole round failed: say so once, or a refused certificate would go unnoticed.
                    log.warning("no master took this executor's stream; still trying (last: %s)", e)
                else:
                    log.debug("attach to %s failed: %s", addr, e)
                redirect = None
            except Exception as e:  # a stream torn down mid-write, and the like: attach again
                log.warning("stream to %s ended: %s: %s", addr, type(e).__name__, e)
                redirect = None
            self._fenced = False
            if self._attached_once:
                self._attached_once, failures = False, 0
            if self._stopping:
                break
            if redirect and time.monotonic() - self._silent.get(redirect, -SILENT_FOR) < SILENT_FOR:
                # Named by a follower that has not yet seen the election: ask the next master.
                i += 1
                await asyncio.sleep(0.05)
                continue
            if redirect:
                log.info("%s is not the leader; going to %s", addr, redirect)
                if redirect not in targets:
                    targets.append(redirect)
                i = targets.index(redirect)
                continue
            i += 1
            failures += 1
            # Each master is tried once quickly; after as many failures in a row as there are
            # masters (whatever redirects came between), every try waits a growing pause.
            if failures < len(targets):
                await asyncio.sleep(0.02)
            else:
                await asyncio.sleep(reconnect_pause(failures // len(targets), random.random()))

    async def _session(self, addr: str) -> str | None:
        """One Attach stream; returns the leader's address when ``addr`` is a follower."""
        async with rpc.channel(addr, self.conf.tls) as channel:
            if not await rpc.ready(channel, 1.0):
                self._silent[addr] = time.monotonic()
                raise ConnectionError(f"{addr} does not answer: {await rpc.failure(channel, self.conf.tls)}")
            metadata = (("authorization", f"Bearer {self.conf.token}"),) if self.conf.token else ()
            call = rota_pb2_grpc.MasterStub(channel).Attach(metadata=metadata)
            try:
                hello_at = time.monotonic()
                await call.write(rota_pb2.ExecutorMessage(hello=self._hello()))
                # A frozen master still completes TCP and HTTP/2 handshakes in its kernel: only
                # an answer to the hello tells it is alive.
                first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT)
            except asyncio.TimeoutError:
                call.cancel()
                self._silent[addr] = time.monotonic()
                raise ConnectionError(
                    f"{addr} did not answer the hello within {WELCOME_TIMEOUT:g}s"
                ) from None
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    trailers = dict(e.trailing_metadata() or ())
                    return str(trailers.get("rota-leader", "")) or None
                raise
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                raise ConnectionError(f"{addr} sent no welcome")
            self._welcome(first.welcome, hello_at)
            self._attached_once = True
            log.info(
                "attached to leader at %s as %s (lease ttl %ss)",
                addr,
                self.executor_id,
                first.welcome.ttl,
                **logs.ids(executor=self.executor_id),
            )
            self._outbox = asyncio.Queue()
            self._reports_queued = 0
            for report in self.runner.unacked.values():
                self.send(report)
            for pending, answer in self._calls.values():
                if not answer.done():
                    self._put(rota_pb2.ExecutorMessage(task_call=pending))
            self._up.set()
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
                self._up.clear()
                self._outbox = None
        return None

    def _hello(self) -> rota_pb2.Hello:
        return rota_pb2.Hello(
            name=self.conf.name,
            addr=self.conf.addr,
            slots=self.conf.slots,
            labels=self.conf.labels,
            resources=self.conf.resources,
            kinds=sorted(self.runner.kinds),
            keepalive_ttl=self.conf.keepalive_ttl,
            prefetch=self.runner.credit.value,
            executor_id=self.executor_id,
            lease_id=self.lease_id,
            running=self.runner.held() if self.executor_id else [],
            leaving=self.leaving,
            drained=self.drained,
        )

    def _welcome(self, w: rota_pb2.Welcome, hello_at: float) -> None:
        """The leader renewed (or granted) the lease after our hello: it lasts ``ttl`` from then.

        Results not yet acknowledged stay, even under a new identity: an attempt that finished
        while its lease was valid is still the task's current attempt unless the leader has since
        placed it again, and the leader takes such a report once, whoever sends it.
        """
        if w.executor_id != self.executor_id and self.executor_id:
            log.warning("registered anew as %s (was %s)", w.executor_id, self.executor_id)
        self.executor_id, self.lease_id = w.executor_id, w.lease_id
        self.lease.granted(float(w.ttl), hello_at)

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        assert self._outbox is not None
        last_reports = 0.0
        while True:
            item = await self._outbox.get()
            if isinstance(item, rota_pb2.TaskReport):
                # The last task's report, or one after a quiet spell, goes at once (REPORT_GATHER).
                hold = last_reports + REPORT_GATHER - time.monotonic()
                if hold > 0 and self.runner.running and not self._flush.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._flush.wait(), hold)
                last_reports = time.monotonic()
                self._flush.clear()
                self._reports_queued = 0
                # Fold every report already waiting into one message.
                reports = [item]
                others: list[rota_pb2.ExecutorMessage | rota_pb2.TaskReport] = []
                while not self._outbox.empty():
                    nxt = self._outbox.get_nowait()
                    (reports if isinstance(nxt, rota_pb2.TaskReport) else others).append(nxt)
                for other in others:
                    await call.write(other)
                item = _reports_msg(reports, self.runner.credit.value)
            elif self._outbox.empty():
                self._flush.clear()  # else what is still queued may be what set it
            await call.write(item)

    async def _heartbeat(self) -> None:
        """Beat every interval; a leader that leaves beats unanswered has stalled or lost its
        office, so the stream is dropped and the leader looked for again (a follower names it)."""
        interval = self.conf.keepalive_interval
        stalled_after = max(2 * interval, min(STALLED_AFTER, self.conf.keepalive_ttl / 2))
        while True:
            now = time.monotonic()
            if self.lease.unanswered_for(now) > stalled_after:
                log.warning("the leader stopped answering heartbeats: looking for the leader")
                raise ConnectionError(f"the leader left heartbeats unanswered for {stalled_after:g}s")
            if self._outbox is not None:
                self._beat()
            else:
                self.lease.beat_sent(now)
            await asyncio.sleep(self.conf.keepalive_interval)

    def _beat(self) -> None:
        self.lease.beat_sent(time.monotonic())
        self._put(
            rota_pb2.ExecutorMessage(
                heartbeat=rota_pb2.Heartbeat(
                    running=len(self.runner.running),
                    credit=self.runner.credit.value,
                    leaving=self.leaving,
                )
            )
        )

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        runner = self.runner
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            body = msg.WhichOneof("body")
            if body == "dispatch":
                for a in msg.dispatch.tasks:
                    runner.start(a)
            elif body == "cancel":
                for ref in msg.cancel.tasks:
                    runner.cancel(ref)
            elif body == "acks":
                for ref in msg.acks.tasks:
                    runner.unacked.pop((ref.job_id, ref.index, ref.attempt), None)
            elif body == "heartbeat_ack":
                self.lease.beat_acked()
            elif body == "task_call_reply":
                pending = self._calls.get(msg.task_call_reply.call_id)
                if pending is not None and not pending[1].done():
                    pending[1].set_result(msg.task_call_reply)
            elif body == "drain" and self.on_drain is not None:
                d = msg.drain
                self.on_drain(d.drain, d.timeout if d.HasField("timeout") else None)


def _reports_msg(reports: Sequence[rota_pb2.TaskReport], credit: int) -> rota_pb2.ExecutorMessage:
    return rota_pb2.ExecutorMessage(reports=rota_pb2.TaskReports(reports=reports, credit=credit))

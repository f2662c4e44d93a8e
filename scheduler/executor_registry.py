"""The leader's executors: attach (a lease granted and registered), heartbeats (the lease renewed),
the links that carry work out, and the watch that finds executors whose lease ended.

Executor leases outlive the leader that granted them: a new leader renews every lease it finds
while executors re-attach, and a stream that breaks while its executor still answers keeps the
executor's tasks until it re-attaches or its lease runs out. Only an executor that is really gone
(its port refuses, or its lease ended) has its tasks placed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rota.common import logs, rpc
from rota.common.states import ACTIVE
from rota.common.tls import TlsFiles
from rota.metastore import keys
from rota.metastore.client import EtcdClient, EtcdError, NoSpace, WatchCompacted
from rota.metastore.election import Fenced
from rota.protos import rota_pb2
from rota.scheduler import translate
from rota.scheduler.core import Ack, CallReply, CancelTasks, Core, Dispatch, Task, TaskRef
from rota.scheduler.pipeline import NotReady
from rota.scheduler.placement import ExecutorSlot
from rota.scheduler.store import Store

log = logging.getLogger("rota.leader")

#: How long a new leader keeps the leases of executors it found alive, waiting for them to attach.
ADOPT_GRACE = 10.0
HOLD_EVERY = 1.0
#: An executor whose stream broke is probed this often (and given this long to answer) until it
#: re-attaches or its lease has had a TTL to run out.
DETACHED_PROBE_EVERY = 0.5
PROBE_TIMEOUT = 0.5


@dataclass(eq=False)
class ExecutorLink:
    """The leader's end of one executor's Attach stream."""

    executor_id: str
    lease_id: int
    ttl: int
    outbox: asyncio.Queue[rota_pb2.LeaderMessage | None] = field(default_factory=asyncio.Queue)
    closed: bool = False

    def send(self, msg: rota_pb2.LeaderMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


#: A dispatch message carries tasks whose parameters and ROTA_AFTER reach this many bytes, then
#: another one starts: a batch of hundreds of tasks with large inputs stays far below MAX_MESSAGE.
DISPATCH_BYTES = 8 * 1024 * 1024


class ExecutorRegistry:
    def __init__(
        self,
        client: EtcdClient,
        store: Store,
        core: Core,
        kick: Callable[[], None],
        give_up: Callable[[], None],
        tls: TlsFiles | None = None,
    ) -> None:
        self.tls = tls
        self.client = client
        self.store = store
        self.core = core
        #: Probe channels being closed (kept referenced until they are).
        self._closing: set[asyncio.Future[None]] = set()
        self.kick = kick
        self.give_up = give_up
        #: Checkpoint reads under way (kept so that none is collected before it answers).
        self._loads: set[asyncio.Task[None]] = set()
        self.links: dict[str, ExecutorLink] = {}
        self.stopping = False
        self._params_cache: dict[tuple[str, int], bytes] = {}
        self._after_cache: dict[tuple[str, int], dict[str, str]] = {}

    def close_all(self) -> None:
        """End every stream: the executors re-attach to the next leader."""
        self.stopping = True
        for link in list(self.links.values()):
            link.close()

    async def attach(self, hello: rota_pb2.Hello) -> ExecutorLink:
        """Register an executor (or re-adopt one after a leader change) and open its link."""
        ttl = max(1, round(hello.keepalive_ttl or 5))
        reported = translate.task_refs(hello.running)
        ex_id, lease = hello.executor_id, hello.lease_id
        known = self.core.executors.get(ex_id) if ex_id else None
        # Renewed here, so the welcome's TTL holds from the executor's hello on.
        left = await self.client.keepalive(lease) if known is not None and known.lease_id == lease else 0
        if left <= 0:
            lease = await self.client.grant(ttl)
            ex_id = f"{hello.name}-{lease & 0xFFFFFF:06x}"
            slot = translate.executor_slot(ex_id, lease, hello)
            # Registering anew (it was fenced out, or its lease ran out) under an operator's drain:
            # the drain goes on under the new id.
            slot.drain_requested = hello.drained
            try:
                await self.store.put_executor(slot)
            except Fenced:
                self.give_up()
                await self.client.revoke(lease)
                raise NotReady("leadership lost") from None
            except NoSpace:
                await self.client.revoke(lease)
                raise
            log.info(
                "executor %s attached: %s, %d slots, kinds %s",
                ex_id,
                hello.addr,
                hello.slots,
                ",".join(hello.kinds),
                **logs.ids(executor=ex_id),
            )
        else:
            ttl = left
            slot = translate.executor_slot(ex_id, lease, hello)
            log.info(
                "executor %s re-attached with %d running tasks",
                ex_id,
                len(reported),
                **logs.ids(executor=ex_id),
            )
        old = self.links.pop(ex_id, None)
        if old:
            old.close()
        link = ExecutorLink(ex_id, lease, ttl)
        self.links[ex_id] = link
        self.core.attach_executor(slot, reported)
        if slot.drain_requested != hello.drained:
            # An operator's drain (or undrain) that did not reach it: sent before a leader change,
            # or while it was away. An executor shutting down ignores an undrain.
            link.send(translate.drain(slot))
        self.kick()
        return link

    async def heartbeat(self, link: ExecutorLink) -> int:
        """Renew the executor's lease; 0 means it expired and the executor must start over."""
        try:
            ttl = await self.client.keepalive(link.lease_id)
        except EtcdError:
            return -1
        ex = self.core.executors.get(link.executor_id)
        if ttl > 0 and ex is not None:
            ex.heartbeat_at = time.time()
        return ttl

    def reports(self, link: ExecutorLink, msg: rota_pb2.TaskReports) -> None:
        if self.links.get(link.executor_id) is link:
            if msg.HasField("credit"):
                self.core.set_credit(link.executor_id, msg.credit)
            self.core.report(link.executor_id, [translate.report(r) for r in msg.reports])
            self.kick()

    def task_call(self, link: ExecutorLink, call: rota_pb2.TaskCall) -> None:
        """A running task's own call, passed on by its executor (the task SDK)."""
        if self.links.get(link.executor_id) is not link:
            return
        ref = TaskRef(call.task.job_id, call.task.index, call.task.attempt)
        if call.op == "checkpoint.save":
            self.core.save_checkpoint(link.executor_id, call.call_id, ref, call.data)
            self.kick()
        elif call.op == "progress":
            self.core.set_progress(link.executor_id, call.call_id, ref, call.fraction, call.message)
            self.kick()
        elif call.op == "endpoint.publish":
            self.core.publish_endpoint(link.executor_id, call.call_id, ref, call.name, call.addr)
            self.kick()
        elif call.op == "endpoint":
            self.core.find_endpoint(link.executor_id, call.call_id, ref, call.name)
            self.kick()
        elif call.op == "barrier":
            round = call.round if call.HasField("round") else None
            checkpoint = call.checkpoint if call.HasField("checkpoint") else None
            self.core.barrier(link.executor_id, call.call_id, ref, call.name, call.parties, round, checkpoint)
            self.kick()
        elif call.op == "checkpoint.load":
            refused = self.core.call_refusal(link.executor_id, ref)
            if refused:
                link.send(_call_reply(call.call_id, refused))
            else:
                task = asyncio.create_task(self._load_checkpoint(link, call.call_id, ref))
                self._loads.add(task)
                task.add_done_callback(self._loads.discard)
        else:
            link.send(_call_reply(call.call_id, f"unknown task call {call.op[:40]!r}"))

    async def _load_checkpoint(self, link: ExecutorLink, call_id: int, ref: TaskRef) -> None:
        try:
            kv = await self.client.get(keys.checkpoint(ref.job_id, ref.index))
        except EtcdError as e:
            link.send(_call_reply(call_id, f"cannot read the checkpoint yet: {e}"))
            return
        reply = _call_reply(call_id, "")
        if kv is not None:
            reply.task_call_reply.found = True
            reply.task_call_reply.data = kv.value
        link.send(reply)

    def leaving(self, link: ExecutorLink, leaving: bool) -> None:
        if self.links.get(link.executor_id) is link:
            self.core.set_leaving(link.executor_id, leaving)
            self.kick()

    def find(self, name: str) -> list[ExecutorSlot]:
        """The executor of this id, or else every executor of this name."""
        executors = self.core.executors
        if name in executors:
            return [executors[name]]
        return sorted((ex for ex in executors.values() if ex.name == name), key=lambda ex: ex.id)

    async def request_drain(self, name: str, drain: bool, timeout: float | None) -> list[ExecutorSlot]:
        """Drain (or undrain) the executors ``name`` names: no new work from now on, the record
        in etcd rewritten so a new leader keeps the drain, and the executor told."""
        found = self.find(name)
        for ex in found:
            self.core.request_drain(ex.id, drain, timeout)
            try:
                await self.store.put_executor(ex)
            except Fenced:
                self.give_up()
                raise NotReady("leadership lost") from None
            current = self.core.executors.get(ex.id)
            link = self.links.get(ex.id)
            if current is not None and link is not None:
                link.send(translate.drain(current))
            log.info(
                "executor %s %s%s",
                ex.id,
                "drained" if drain else "undrained",
                f" (timeout {timeout:g}s)" if drain and timeout is not None else "",
                **logs.ids(executor=ex.id),
            )
        self.kick()
        return [self.core.executors.get(ex.id, ex) for ex in found]

    async def leave(self, link: ExecutorLink) -> None:
        """The executor shuts down, its work handed back or acknowledged: revoke its lease now, so
        whatever is left runs elsewhere at once, rather than probing it as if its stream broke."""
        ex_id = link.executor_id
        if self.stopping or self.links.get(ex_id) is not link:
            return
        del self.links[ex_id]
        await self._gone(ex_id, link.lease_id, "left", lost_as="left")
        link.close()

    def credit(self, link: ExecutorLink, credit: int) -> None:
        if self.links.get(link.executor_id) is link:
            self.core.set_credit(link.executor_id, credit)
            self.kick()

    async def detach(self, link: ExecutorLink) -> None:
        """The stream broke while we lead. An executor whose port refuses is gone: its lease is
        revoked and its tasks placed again at once. One that still answers (the stream broke on a
        stall of ours, or of the network) keeps its tasks while it comes back."""
        ex_id = link.executor_id
        if self.stopping or self.links.get(ex_id) is not link:
            return
        del self.links[ex_id]
        link.close()
        self.core.executor_detached(ex_id)
        ex = self.core.executors.get(ex_id)
        deadline = time.monotonic() + link.ttl
        log.info("executor %s: its stream broke; asking its port", ex_id, **logs.ids(executor=ex_id))
        said = False
        while ex is not None and await self._answers(ex.addr):
            if ex_id in self.links or self.core.executors.get(ex_id) is not ex or self.stopping:
                return  # back, lost by its lease, or no longer ours to judge
            if not said:
                said = True
                log.info(
                    "executor %s still answers at %s: keeping its tasks while it comes back",
                    ex_id,
                    ex.addr,
                    **logs.ids(executor=ex_id),
                )
            if time.monotonic() > deadline:
                log.info(
                    "executor %s answers at %s but did not come back: its lease runs out by itself",
                    ex_id,
                    ex.addr,
                    **logs.ids(executor=ex_id),
                )
                return
            await asyncio.sleep(DETACHED_PROBE_EVERY)
        if ex_id not in self.links and not self.stopping:
            await self._gone(ex_id, link.lease_id, "disconnected")

    async def _gone(self, ex_id: str, lease_id: int, why: str, lost_as: str = "lost") -> None:
        """An executor that does not answer (or that left) is gone: revoke its lease and place its
        tasks again.

        Only while etcd still has us as leader: a deposed leader that has not noticed yet must
        not revoke a lease that the new leader adopted (a revoke cannot be fenced itself, so the
        check comes just before it)."""
        if not await self.store.still_leading():
            log.info("executor %s %s: not revoking its lease, no longer the leader", ex_id, why)
            return
        if ex_id in self.links:
            return  # it came back while we asked
        log.info("executor %s %s: revoking its lease", ex_id, why, **logs.ids(executor=ex_id))
        with contextlib.suppress(EtcdError):
            await self.client.revoke(lease_id)
        self.core.executor_lost(ex_id, lost_as)
        self.kick()

    async def _answers(self, addr: str) -> bool:
        """Whether an executor's own gRPC port still takes connections. A probe that has not
        concluded in twice its timeout (seen once in a while just after a SIGKILL: the leader then
        waited for the lease) counts as no answer; the channel is closed aside, so its closing
        cannot change the answer."""
        if not addr:
            return False
        ch = rpc.channel(addr, self.tls, fresh=True)
        try:
            return await asyncio.wait_for(rpc.ready(ch, PROBE_TIMEOUT), 2 * PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            log.info("the probe of %s did not conclude in %.1fs: no answer", addr, 2 * PROBE_TIMEOUT)
            return False
        finally:
            closing = asyncio.ensure_future(ch.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def hold_leases(self, found: list[ExecutorSlot]) -> None:
        """Keep alive the leases of executors found in etcd at takeover until they re-attach or
        ``ADOPT_GRACE`` passes; after that an executor that did not come back loses its lease
        as it would have under the old leader. One whose port does not answer is gone already:
        its lease is revoked and its tasks placed again at once."""
        waiting = {ex.id: ex.lease_id for ex in found}
        until = time.monotonic() + ADOPT_GRACE
        probes: asyncio.Future[list[bool]] | None = asyncio.gather(*(self._answers(ex.addr) for ex in found))
        while waiting and time.monotonic() < until:
            for ex_id in [e for e in waiting if e in self.links or e not in self.core.executors]:
                del waiting[ex_id]
            results = await asyncio.gather(
                *(self.client.keepalive(lease) for lease in waiting.values()), return_exceptions=True
            )
            for ex_id, left in zip(list(waiting), results, strict=True):
                if isinstance(left, int) and left <= 0:
                    del waiting[ex_id]
            if probes is not None:
                for ex, alive in zip(found, await probes, strict=True):
                    if not alive and ex.id in waiting and ex.id not in self.links:
                        del waiting[ex.id]
                        await self._gone(ex.id, ex.lease_id, "found at takeover does not answer")
                probes = None
            await asyncio.sleep(HOLD_EVERY)

    async def watch(self, start: int) -> None:
        """Executors whose lease expired (or was revoked) lose their tasks."""
        while True:
            try:
                async for events in self.client.watch(keys.EXECUTORS, start, prefix=True):
                    for e in events:
                        start = e.kv.mod_revision + 1
                        if e.type == "delete":
                            self._lost(keys.executor_id(e.kv.key))
                    self.kick()
            except WatchCompacted as e:
                # Deletions between our revision and the compaction are gone from the history:
                # list the executors now, and those we know that are missing have lost their lease.
                log.warning("executor watch compacted at %d: listing executors again", e.compact_revision)
                start = await self._relist()

    async def _relist(self) -> int:
        known = list(self.core.executors)  # before the read: one attaching meanwhile is not judged
        while True:
            try:
                kvs, revision = await self.client.get_prefix(keys.EXECUTORS, keys_only=True)
                break
            except EtcdError as e:
                log.warning("cannot list executors yet: %s", e)
                await asyncio.sleep(0.5)
        live = {keys.executor_id(kv.key) for kv in kvs}
        for ex_id in known:
            if ex_id not in live and ex_id in self.core.executors:
                self._lost(ex_id)
        self.kick()
        return revision + 1

    def _lost(self, ex_id: str) -> None:
        if ex_id in self.core.executors:  # not one we revoked ourselves
            log.info("executor %s lost its lease: requeueing its tasks", ex_id, **logs.ids(executor=ex_id))
        link = self.links.pop(ex_id, None)
        if link:
            link.close()
        self.core.executor_lost(ex_id)

    def send(self, d: Dispatch | CancelTasks | Ack | CallReply) -> None:
        """Carry a committed Dispatch, CancelTasks or Ack to its executor, if it is still attached."""
        link = self.links.get(d.executor)
        if link is None:
            return
        if isinstance(d, Dispatch):
            batch: list[rota_pb2.TaskAssignment] = []
            size = 0
            for t, a in d.tasks:
                if t.attempt != a or t.state not in ACTIVE:
                    continue
                params, after = self._params_json(t), self._after_env(t)
                weight = len(params) + (len(after["ROTA_AFTER"]) if after else 0)
                if batch and size + weight > DISPATCH_BYTES:
                    link.send(rota_pb2.LeaderMessage(dispatch=rota_pb2.Dispatch(tasks=batch)))
                    batch, size = [], 0
                batch.append(translate.assignment(t, a, params, self.core.retention_of(t.job), after))
                size += weight
            if batch:
                link.send(rota_pb2.LeaderMessage(dispatch=rota_pb2.Dispatch(tasks=batch)))
        elif isinstance(d, CancelTasks):
            link.send(rota_pb2.LeaderMessage(cancel=rota_pb2.CancelTasks(tasks=translate.refs(d.refs))))
        elif isinstance(d, Ack):
            link.send(rota_pb2.LeaderMessage(acks=rota_pb2.Acks(tasks=translate.refs(d.refs))))
        elif isinstance(d, CallReply):
            reply = _call_reply(d.call_id, d.error)
            reply.task_call_reply.ready = d.ready and not d.error
            reply.task_call_reply.addr = d.addr
            reply.task_call_reply.released_us = d.released_us
            link.send(reply)

    def _params_json(self, task: Task) -> bytes:
        """A template's parameters, encoded once for all its copies rather than per dispatch."""
        key = (task.job.id, task.template)
        blob = self._params_cache.get(key)
        if blob is None:
            blob = self._params_cache[key] = json.dumps(task.spec.params).encode()
        return blob

    def _after_env(self, task: Task) -> dict[str, str] | None:
        """What the tasks it runs after gave (ROTA_AFTER), made once per template: those have all
        ended before any copy is placed, and their results no longer change."""
        if task.job.deps is None:
            return None
        key = (task.job.id, task.template)
        env = self._after_cache.get(key)
        if env is None:
            env = self._after_cache[key] = translate.after_env(task)
        return env

    def forget_job(self, job_id: str, templates: int) -> None:
        for i in range(templates):
            self._params_cache.pop((job_id, i), None)
            self._after_cache.pop((job_id, i), None)


def _call_reply(call_id: int, error: str) -> rota_pb2.LeaderMessage:
    return rota_pb2.LeaderMessage(
        task_call_reply=rota_pb2.TaskCallReply(call_id=call_id, ok=not error, error=error)
    )

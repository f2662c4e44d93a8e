"""An executor's agent: its task runner, its link to the leader, and the fence over both.

``runner.py`` runs what is dispatched and keeps results until acknowledged, ``link.py`` holds
the Attach stream to the leader, ``fencing.py`` kills everything once the lease may be gone.
The agent drains: on an operator's word through the leader, or on the way out (``shutdown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from rota.executor.config import AgentConfig
from rota.executor.fencing import Fence, Lease
from rota.executor.kinds.base import Kind
from rota.executor.link import Link
from rota.executor.runner import Runner
from rota.executor.task_calls import TaskCallServer

log = logging.getLogger("rota.executor")

#: How often an idle executor looks for task logs past their retention (finishing tasks look too).
LOG_EXPIRY_EVERY = 60.0
#: On the way out, how long results may wait for the leader's acknowledgement (it commits them
#: first), and how long the leader may take to revoke the lease once told we leave.
ACK_WAIT = 10.0
LEAVE_WAIT = 2.0


class Agent:
    def __init__(self, conf: AgentConfig, kinds: dict[str, Kind]) -> None:
        self.conf = conf
        self.runner = Runner(conf, kinds)
        self.lease = Lease(conf.keepalive_ttl)
        self.link = Link(conf, self.runner, self.lease)
        self.runner.reporter = self.link
        self.runner.ports.call = self.link.task_call
        self.link.on_drain = self._drain_requested
        self.fence = Fence(self.lease, self.link, self.runner, conf.keepalive_interval)
        self.task_calls = TaskCallServer(conf.work_dir, self.runner.attempts, self.link.task_call)
        self.shutting_down = False
        #: The drain an operator asked for, while it runs.
        self._remote: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Stay attached to the current leader until stopped. Tasks' calls are taken from the
        start (until ``stop``): those of an attempt that outlives a stream wait for the next."""
        try:
            await self.task_calls.start()
        except OSError as e:  # tasks still run; their rota.task calls say they are not in a task
            log.error("cannot listen for task calls on %s: %s", self.task_calls.path, e)
        watchdog = asyncio.create_task(self.fence.watch())
        upkeep = asyncio.create_task(self._expire_logs())
        try:
            await self.link.run()
        finally:
            watchdog.cancel()
            upkeep.cancel()
            await asyncio.gather(watchdog, upkeep, return_exceptions=True)

    async def _expire_logs(self) -> None:
        while True:
            await asyncio.sleep(LOG_EXPIRY_EVERY)
            self.runner.logs.expire()

    async def drain(self, timeout: float, hurry: asyncio.Event | None = None) -> None:
        """Take no new work, hand back what waits for a slot, let running tasks finish for up to
        ``timeout`` seconds (until ``hurry`` is set), then hand back the rest."""
        runner = self.runner
        runner.draining = True
        queued = await runner.hand_back(runner.queued())
        log.info(
            "draining: %d queued tasks handed back, %d running may take %gs to finish",
            queued,
            len(runner.running),
            timeout,
        )
        waits = [asyncio.ensure_future(runner.wait_idle())]
        if hurry is not None:
            waits.append(asyncio.ensure_future(hurry.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if runner.running:
            log.info("drain: handing back %d unfinished tasks", len(runner.running))
            await runner.hand_back(list(runner.running))

    def _drain_requested(self, drain: bool, timeout: float | None) -> None:
        """The leader passes on an operator's drain (or undrain); a shutdown goes on regardless."""
        self.link.drained = drain
        if self.shutting_down:
            return
        if self._remote is not None:
            self._remote.cancel()
            self._remote = None
        if drain:
            self._remote = asyncio.create_task(
                self.drain(self.conf.drain_timeout if timeout is None else timeout), name="drain"
            )
        elif self.runner.draining:
            log.info("undrained: taking work again")
            self.runner.draining = False

    async def shutdown(self, timeout: float, hurry: asyncio.Event) -> None:
        """Leave without losing work: drain for up to ``timeout``, wait for the leader to
        acknowledge the last results, then deregister. ``hurry`` (a second signal) cuts every wait:
        whatever still runs is handed back at once."""
        self.shutting_down = self.link.leaving = True
        self.runner.draining = True
        self.link.beat_now()
        if self._remote is not None:
            self._remote.cancel()
            await asyncio.gather(self._remote, return_exceptions=True)
        await self.drain(0.0 if hurry.is_set() else timeout, hurry)
        deadline = time.monotonic() + ACK_WAIT
        while self.runner.unacked and not hurry.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(hurry.wait(), 0.05)
        if self.runner.unacked:
            log.warning("leaving with %d reports the leader has not acknowledged", len(self.runner.unacked))
        await self.link.leave(0.2 if hurry.is_set() else LEAVE_WAIT)

    async def stop(self) -> None:
        self.link.stop()
        if self._remote is not None:
            self._remote.cancel()
        await self.runner.kill_all()
        await self.task_calls.close()
        await self.link.close()

    @property
    def serving(self) -> bool:
        """What the gRPC health service says: holding a lease from a leader and taking work (not
        draining, not shutting down). A lost stream alone keeps it: tasks still run until fenced."""
        return bool(self.link.executor_id) and not self.runner.draining and not self.shutting_down

    def status(self) -> dict[str, object]:
        return {
            "id": self.link.executor_id,
            "name": self.conf.name,
            "addr": self.conf.addr,
            "slots": self.conf.slots,
            "kinds": sorted(self.runner.kinds),
            "running": [
                {"job_id": r.ref.job_id, "index": r.ref.index, "attempt": r.ref.attempt}
                for r in self.runner.running.values()
            ],
            "completed": self.runner.completed,
            "draining": self.runner.draining,
        }

"""An executor's agent: its task runner, its link to the leader, and the fence over both.

``runner.py`` runs what is dispatched and keeps results until acknowledged, ``link.py`` holds
the Attach stream to the leader, ``fencing.py`` kills everything once the lease may be gone.
"""

from __future__ import annotations

import asyncio

from rota.executor.config import AgentConfig
from rota.executor.fencing import Fence, Lease
from rota.executor.kinds.base import Kind
from rota.executor.link import Link
from rota.executor.runner import Runner

#: How often an idle executor looks for task logs past their retention (finishing tasks look too).
LOG_EXPIRY_EVERY = 60.0


class Agent:
    def __init__(self, conf: AgentConfig, kinds: dict[str, Kind]) -> None:
        self.conf = conf
        self.runner = Runner(conf, kinds)
        self.lease = Lease(conf.keepalive_ttl)
        self.link = Link(conf, self.runner, self.lease)
        self.runner.reporter = self.link
        self.fence = Fence(self.lease, self.link, self.runner, conf.keepalive_interval)

    async def run(self) -> None:
        """Stay attached to the current leader until stopped."""
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

    async def stop(self) -> None:
        self.link.stop()
        await self.runner.kill_all()
        await self.link.close()

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
        }

"""The leader's commit pipeline: decisions of the core are committed to etcd before anyone hears of them.

One drain-commit-route at a time, so writes reach etcd in the order the core made them, and every
dispatch, cancel, acknowledgement or job end is routed only after the writes it depends on are
committed (fenced and batched by the store).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from rota.metastore.client import EtcdError
from rota.metastore.election import Fenced
from rota.scheduler.core import Core, Decision, DeleteJob, PutJob, PutTask
from rota.scheduler.store import Store

log = logging.getLogger("rota.leader")

#: Back-off of a commit that etcd could not take yet (no quorum, a slow member), doubling to the cap.
RETRY_FIRST = 0.05
RETRY_CAP = 1.0


class NotReady(Exception):
    """This master is not (or no longer) a ready leader."""


def writes(decisions: list[Decision]) -> list[PutTask | PutJob | DeleteJob]:
    return [d for d in decisions if isinstance(d, (PutTask, PutJob, DeleteJob))]


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)


class CommitPipeline:
    def __init__(
        self,
        core: Core,
        store: Store,
        route: Callable[[list[Decision]], None],
        give_up: Callable[[], None],
    ) -> None:
        self.core = core
        self.store = store
        self.route = route
        self.give_up = give_up
        #: Held by whoever drains the core, so writes reach etcd in the order they were decided.
        self.lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._synced: list[asyncio.Future[None]] = []

    def kick(self) -> None:
        self._wake.set()

    async def sync(self) -> None:
        """Return once every decision the core has made so far is committed to etcd."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._synced.append(fut)
        self.kick()
        await fut

    def fail_waiters(self, error: Exception) -> None:
        for f in self._synced:
            if not f.done():
                f.set_exception(error)
        self._synced = []

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            async with self.lock:
                self._wake.clear()
                synced, self._synced = self._synced, []
                decisions = self.core.drain()
                if decisions and not await self._commit(writes(decisions)):
                    return
                self.route(decisions)
                _resolve(synced)

    async def _commit(self, puts: list[Any]) -> bool:
        """Commit until etcd takes it; False once a fenced write says we no longer lead."""
        delay = RETRY_FIRST
        while puts:
            try:
                await self.store.commit(puts)
                return True
            except Fenced:
                log.warning("a fenced write was rejected: stepping down")
                self.give_up()
                return False
            except EtcdError as e:
                log.warning("cannot commit %d writes yet: %s", len(puts), e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)
        return True

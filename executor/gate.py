"""Slots as a priority gate: at most ``slots`` tasks run, and queued ones start highest priority first.

With ``--prefetch`` the leader hands an executor more tasks than it has slots, so the next
one is already here when a slot frees up; the gate decides which of them runs next.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class PriorityGate:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self.busy < self.slots and not self._waiting:
            self.busy += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we were cancelled: pass the slot on
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self.busy -= 1

    @property
    def queued(self) -> int:
        return sum(1 for _, _, f in self._waiting if not f.done())

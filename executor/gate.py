"""Slots as a priority gate: at most ``slots`` tasks run, and queued ones start highest priority first.

The leader hands an executor more tasks than it has slots (its flow-control credit), so the next one
is already here when a slot frees up; the gate decides which of them runs next. A task that gets a
slot may take the tasks queued right behind it along (``take``), while they are of its batchable
kind: they run in its slot, one after another, without a round trip each.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

#: What ``acquire`` returns to a task that another task took along into its batch.
TAKEN = object()


class PriorityGate:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.busy = 0
        self._waiting: list[tuple[int, int, asyncio.Future[Any], Any]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: int, rider: Any = None) -> Any:
        """Wait for a slot: None once granted one (release it), or TAKEN when a slot holder took
        ``rider`` (anything but None) along into its batch."""
        if self.busy < self.slots and not self._waiting:
            self.busy += 1
            return None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._seq), fut, rider))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result() is None:
                self.release()  # granted just as we were cancelled: pass the slot on
            raise

    def take(self, limit: int, along: Callable[[Any], bool]) -> list[Any]:
        """Up to ``limit`` riders from the head of the queue for which ``along(rider)`` holds; stops
        at the first waiter that does not qualify, so nothing overtakes a more urgent task."""
        taken: list[Any] = []
        while self._waiting and len(taken) < limit:
            _, _, fut, rider = self._waiting[0]
            if fut.done():
                heapq.heappop(self._waiting)
                continue
            if rider is None or not along(rider):
                break
            heapq.heappop(self._waiting)
            fut.set_result(TAKEN)
            taken.append(rider)
        return taken

    def release(self) -> None:
        while self._waiting:
            fut = heapq.heappop(self._waiting)[2]
            if not fut.done():
                fut.set_result(None)
                return
        self.busy -= 1

    @property
    def queued(self) -> int:
        return sum(1 for _, _, f, _ in self._waiting if not f.done())

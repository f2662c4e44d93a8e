"""A look at something slow to ask, kept fresh in the background so that callers never wait on it.

cluster-status shows whether the other masters answer and what etcd says of its members and
alarms. Asking either waits on someone else: a leader busy with a big job answers a probe in tens
of milliseconds, and reading etcd's alarms is a raft request that queues behind big commits. Each
master therefore looks every ``every`` seconds beside its callers, and a caller gets the latest
look while it is at most ``stale`` old; an older one (just started, or a look that hangs) is taken
again, live, by the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("rota.master")

T = TypeVar("T")

#: Seconds between background looks, and the age past which a caller looks for itself.
EVERY = 1.0
STALE = 3.0


class Looked(Generic[T]):
    def __init__(
        self,
        look: Callable[[], Awaitable[T]],
        every: float = EVERY,
        stale: float = STALE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.look = look
        self.every = every
        self.stale = stale
        self.clock = clock
        self._value: T | None = None
        #: When the latest look began (what it shows is at least that recent).
        self._at: float | None = None

    def fresh(self) -> T | None:
        """The latest look while it is at most ``stale`` old, else None."""
        if self._at is None or self.clock() - self._at > self.stale:
            return None
        return self._value

    async def get(self) -> T:
        value = self.fresh()
        return value if value is not None else await self.refresh()

    async def refresh(self) -> T:
        began = self.clock()
        value = await self.look()
        if self._at is None or began >= self._at:  # a slower, older look never replaces a newer one
            self._value, self._at = value, began
        return value

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as e:  # a caller then looks live, and sees the error itself
                log.debug("background look failed: %s", e)
            await asyncio.sleep(self.every)

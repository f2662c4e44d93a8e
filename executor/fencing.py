"""Lease fencing (promise 5): an executor whose lease may have ended kills its tasks.

The leader keeps the executor's etcd lease alive on each heartbeat and acknowledges it. When
acknowledgements stop (the leader stalled, died or changed), a new leader keeps every lease it
finds alive while executors re-attach, so before the executor gives up it asks any master how
long its lease has left. Only when no master can vouch for the lease within its TTL may the
leader have given the tasks to someone else: then the executor kills its running tasks and
registers again. ``Lease`` is the bookkeeping, pure so it can be tested without a clock or a
stream; ``Fence`` is the watchdog that acts on it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Sized
from typing import Protocol

from rota.common import logs

log = logging.getLogger("rota.executor")

#: How long before its lease would run out unacknowledged the executor starts asking the masters,
#: and how often it asks again.
ASK_AHEAD = 1.5
ASK_EVERY = 0.5


class Lease:
    """When the leader last renewed this executor's lease, as far as the executor can tell.

    An acknowledged heartbeat proves a renewal no earlier than when that heartbeat was sent,
    so the renewal is dated at the send, never at the acknowledgement's arrival.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.renewed_at = 0.0
        self._sent: collections.deque[float] = collections.deque()

    def granted(self, ttl: float, now: float) -> None:
        """A welcome: the lease is live now; heartbeats sent before it will not be acknowledged."""
        self.ttl = ttl
        self.renewed_at = now
        self._sent.clear()

    def beat_sent(self, now: float) -> None:
        self._sent.append(now)

    def beat_acked(self) -> None:
        """Acknowledgements come back in the order the heartbeats went out."""
        if self._sent:
            self.renewed_at = self._sent.popleft()

    def vouched(self, asked_at: float, remaining: float) -> None:
        """A master read ``remaining`` seconds left on the lease after ``asked_at``: it lives until
        at least ``asked_at + remaining``."""
        self.renewed_at = max(self.renewed_at, asked_at + remaining - self.ttl)

    def expires_within(self, now: float, margin: float) -> bool:
        return now + margin - self.renewed_at > self.ttl

    def unanswered_for(self, now: float) -> float:
        """How long the oldest heartbeat still waiting for its acknowledgement has waited."""
        return now - self._sent[0] if self._sent else 0.0

    def silent_for(self, now: float) -> float:
        return now - self.renewed_at

    def expired(self, now: float) -> bool:
        return now - self.renewed_at > self.ttl


class Identity(Protocol):
    """The link's side: who we are registered as, how long a master says our lease has left,
    and how to give that up."""

    executor_id: str

    async def lease_left(self) -> tuple[float, float] | None: ...

    def fenced(self) -> None: ...


class Tasks(Protocol):
    """The runner's side: what runs, and how to kill it."""

    running: Sized

    async def kill_all(self) -> None: ...


class Fence:
    """Watches the lease across sessions: an executor cut off from every master is fenced too."""

    def __init__(self, lease: Lease, link: Identity, runner: Tasks, keepalive_interval: float) -> None:
        self.lease = lease
        self.link = link
        self.runner = runner
        self.period = min(0.1, keepalive_interval / 2)
        self.count = 0
        self._asked = float("-inf")

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            if not self.link.executor_id:
                continue
            now = time.monotonic()
            ahead = min(ASK_AHEAD, self.lease.ttl / 3)
            if self.lease.expires_within(now, ahead) and now - self._asked >= ASK_EVERY:
                self._asked = now
                left = await self.link.lease_left()
                if left is not None:
                    self.lease.vouched(*left)
            now = time.monotonic()
            if self.link.executor_id and self.lease.expired(now):
                log.warning(
                    "lease not renewed for %.1fs (ttl %gs): fenced out; killing %d running tasks",
                    self.lease.silent_for(now),
                    self.lease.ttl,
                    len(self.runner.running),
                    **logs.ids(executor=self.link.executor_id),
                )
                await self.fence()

    async def fence(self) -> None:
        self.count += 1
        await self.runner.kill_all()
        self.link.fenced()

"""A session: one etcd lease kept alive for as long as its holder runs.

Like etcd's Go ``concurrency.Session``. Keys written under the lease vanish when
the holder dies. ``lost`` is set as soon as the lease is known or presumed
expired: etcd said so, or no renewal has succeeded for a whole TTL, after which
etcd may have expired it (we cannot tell, so we must assume it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from rota.metastore.client import EtcdClient, EtcdError

log = logging.getLogger("rota.session")

#: Seconds of its lease a holder keeps in hand when it acts on holding it without asking etcd.
MARGIN = 1.0


def held_surely(ttl: float, renew_every: float, since: float) -> bool:
    """Whether a lease etcd renewed ``since`` seconds ago is still held with MARGIN to spare, and
    missed at most one renewal (one missed more is a sign that etcd is not answering)."""
    return since < min(ttl - MARGIN, 2 * renew_every)


class Session:
    def __init__(self, client: EtcdClient, ttl: float, renew_every: float | None = None) -> None:
        self.client = client
        self.ttl = max(1, round(ttl))
        self.renew_every = renew_every if renew_every is not None else self.ttl / 3
        self.lease_id = 0
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._renewed_at = 0.0
        self._stream = ""

    async def start(self) -> Session:
        self.lease_id = await self.client.grant(self.ttl)
        self._stream = f"session-{self.lease_id:x}"
        self._renewed_at = time.monotonic()
        self._task = asyncio.create_task(self._keep_alive(), name=f"lease-{self.lease_id:x}")
        return self

    @property
    def expires_in(self) -> float:
        """Seconds for which the lease is certainly still valid, from what we last heard."""
        return self._renewed_at + self.ttl - time.monotonic()

    def surely_held(self) -> bool:
        """Whether etcd renewed the lease lately enough to act on holding it without asking."""
        return not self.lost.is_set() and held_surely(self.ttl, self.renew_every, self.ttl - self.expires_in)

    async def _keep_alive(self) -> None:
        while not self.lost.is_set():
            sent = time.monotonic()
            try:
                ttl = await self.client.keepalive(
                    self.lease_id, timeout=max(0.1, min(1.0, self.expires_in)), stream=self._stream
                )
            except EtcdError as e:
                log.debug("lease %x renewal failed: %s", self.lease_id, e)
                ttl = -1
            if ttl == 0:
                log.warning("lease %x expired", self.lease_id)
                self.lost.set()
                return
            if ttl > 0:
                self._renewed_at = sent
            if self.expires_in <= 0:
                log.warning("lease %x not renewed for %ss: presumed expired", self.lease_id, self.ttl)
                self.lost.set()
                return
            pause = self.renew_every if ttl > 0 else 0.1
            await asyncio.sleep(max(0.0, min(pause, self.expires_in)))

    async def close(self, revoke: bool = True) -> None:
        """Stop renewing; with ``revoke`` the lease and its keys go at once."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close_keepalive(self._stream)
        if revoke and self.lease_id and not self.lost.is_set():
            try:
                await self.client.revoke(self.lease_id)
            except EtcdError as e:
                log.warning("could not revoke lease %x: %s", self.lease_id, e)
        self.lost.set()

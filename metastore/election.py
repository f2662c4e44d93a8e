"""Leader election with a fencing token, after etcd's Go ``concurrency.Election``.

Campaigning is one transaction: create the leader key under the candidate's lease
only if no such key exists. The key's create revision is the leader's fencing
token: every write the leader makes afterwards goes through :meth:`Election.fenced_txn`,
which adds the compare "the leader key still has that create revision". A deposed
leader (its lease expired, a new key created since) has every such write rejected.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from rota.metastore.client import KV, EtcdClient, TxnResult, create_revision_is, delete_op, get_op, put_op
from rota.metastore.session import Session

log = logging.getLogger("rota.election")


class Fenced(Exception):
    """A fenced write was rejected: this process is no longer the leader."""


@dataclass(frozen=True)
class Leader:
    """The leader key as read from etcd."""

    name: str
    addr: str
    lease: int
    term: int  # the key's create revision: the fencing token

    @classmethod
    def from_kv(cls, kv: KV) -> Leader:
        try:
            data = json.loads(kv.value)
        except ValueError:
            data = {}
        return cls(str(data.get("name", "")), str(data.get("addr", "")), kv.lease, kv.create_revision)


def campaign_outcome(result: TxnResult, lease_id: int) -> tuple[int, KV | None]:
    """Read a campaign transaction: (term, None) when we lead, (0, holder) when another does.

    A retried campaign whose first attempt committed finds the key under our own lease:
    that is a win too, with the key's create revision as the term.
    """
    if result.succeeded:
        return result.revision, None
    current = result.ranges()[0] if result.responses else []
    if current and current[0].lease == lease_id:
        return current[0].create_revision, None
    return 0, (current[0] if current else None)


def fence(key: bytes, term: int) -> Any:
    """The compare that makes a transaction fail once ``term`` has ended."""
    return create_revision_is(key, term)


class Election:
    def __init__(self, client: EtcdClient, key: bytes, session: Session) -> None:
        self.client = client
        self.key = key
        self.session = session
        self.term = 0
        self.rejected = 0

    @property
    def is_leader(self) -> bool:
        return self.term > 0 and not self.session.lost.is_set()

    async def campaign(self, name: str, addr: str) -> int:
        """Block until this session holds the leader key; return the fencing token."""
        value = json.dumps({"name": name, "addr": addr}).encode()
        while True:
            if self.session.lost.is_set():
                raise Fenced("session lost while campaigning")
            result = await self.client.txn(
                [create_revision_is(self.key, 0)],
                [put_op(self.key, value, lease=self.session.lease_id)],
                [get_op(self.key)],
            )
            term, holder = campaign_outcome(result, self.session.lease_id)
            if term:
                self.term = term
                return term
            if holder is not None:
                await self.wait_deleted(holder.mod_revision)

    async def wait_deleted(self, seen_revision: int) -> None:
        """Return once the leader key seen at ``seen_revision`` is deleted."""
        lost = asyncio.ensure_future(self.session.lost.wait())
        watch = asyncio.ensure_future(self._next_delete(seen_revision + 1))
        try:
            await asyncio.wait([lost, watch], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            watch.cancel()
            await asyncio.gather(lost, watch, return_exceptions=True)

    async def _next_delete(self, start: int) -> None:
        async for events in self.client.watch(self.key, start):
            if any(e.type == "delete" for e in events):
                return

    async def fenced_txn(self, ops: Sequence[Any], compare: Sequence[Any] = ()) -> TxnResult:
        """Apply ``ops`` only while we still lead; raise Fenced otherwise.

        Extra ``compare`` conditions may be given; the result then says whether they
        held (the leadership check failing is always Fenced, never a plain False).
        """
        if not self.term:
            raise Fenced("not the leader")
        result = await self.client.txn(
            [fence(self.key, self.term), *compare], list(ops), [get_op(self.key)] if compare else []
        )
        if result.succeeded:
            return result
        if compare:
            current = result.ranges()[0]
            if current and current[0].create_revision == self.term:
                return result
        self.rejected += 1
        self.term = 0
        raise Fenced("fenced write rejected: the leader key has changed")

    async def resign(self) -> None:
        """Give up leadership at once so the next leader need not wait out the lease."""
        term, self.term = self.term, 0
        if term:
            await self.client.txn([fence(self.key, term)], [delete_op(self.key)])

    async def leader(self) -> Leader | None:
        return await read_leader(self.client, self.key)


async def read_leader(client: EtcdClient, key: bytes, serializable: bool = False) -> Leader | None:
    kv = await client.get(key, serializable)
    return Leader.from_kv(kv) if kv else None


async def observe(client: EtcdClient, key: bytes) -> AsyncIterator[Leader | None]:
    """Yield the current leader, then every change of it (None: no leader)."""
    kv, revision = await client.read(key)
    yield Leader.from_kv(kv) if kv else None
    async for events in client.watch(key, revision + 1):
        last = events[-1]
        yield Leader.from_kv(last.kv) if last.type == "put" else None

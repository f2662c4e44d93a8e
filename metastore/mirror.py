"""A prefix of etcd held in memory: listed once, then kept current by a watch.

Like etcd's Go ``clientv3/mirror``. Reading the copy costs nothing, where a read of etcd waits on a
member that may be busy committing (the leader's, under a big job). The copy is as current as the
watch, which moves to another member by itself when one stops answering; ``synced`` is False
until the first listing and while listing again (after a compaction, or etcd refusing it), when
the caller reads etcd instead. While etcd cannot be reached at all the copy is the last one seen.
"""

from __future__ import annotations

import asyncio
import logging

from rota.metastore.client import EtcdClient, EtcdError, WatchCompacted

log = logging.getLogger("rota.metastore")

#: Seconds before listing again after etcd could not be read.
RETRY = 0.5


class Mirror:
    """The keys under ``prefix`` and their values, as ``run`` follows them."""

    def __init__(self, client: EtcdClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self.kvs: dict[bytes, bytes] = {}
        self.synced = False

    async def run(self) -> None:
        try:
            await self._follow()
        finally:
            self.synced = False

    async def _follow(self) -> None:
        while True:
            try:
                kvs, revision = await self.client.get_prefix(self.prefix)
                self.kvs = {kv.key: kv.value for kv in kvs}
                self.synced = True
                async for events in self.client.watch(self.prefix, revision + 1, prefix=True):
                    for e in events:
                        if e.type == "put":
                            self.kvs[e.kv.key] = e.kv.value
                        else:
                            self.kvs.pop(e.kv.key, None)
                return  # a watch ends only when its client is closed
            except WatchCompacted:
                self.synced = False  # events were missed: list again
            except EtcdError as e:
                self.synced = False
                log.debug("mirror of %r: %s", self.prefix, e)
                await asyncio.sleep(RETRY)

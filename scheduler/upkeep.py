"""The leader's upkeep of etcd: compacting old revisions, so that what retention deletes frees space.

etcd keeps every revision of every key until it is compacted. An embedded member compacts itself
each hour, an external cluster maybe never; with thousands of task writes a minute, that history
is most of the database. The leader compacts it here, keeping one period of history behind the
current revision for watchers to resume from (the executor watch lists again if it fell further
behind). Compaction frees space inside the database file; the file itself shrinks only when a
member is defragmented, which this does not do yet.
"""

from __future__ import annotations

import asyncio
import logging

from rota.metastore import keys
from rota.metastore.client import EtcdClient, EtcdError

log = logging.getLogger("rota.leader")

#: Seconds between compactions, and the history kept behind the current revision.
COMPACT_EVERY = 60.0


async def compact_loop(client: EtcdClient, every: float = COMPACT_EVERY) -> None:
    """Each period, compact up to the revision the previous period started at."""
    behind = 0
    while True:
        await asyncio.sleep(every)
        try:
            _, revision = await client.read(keys.HEALTH)
            if behind:
                await client.compact(behind)
                log.debug("etcd compacted up to revision %d", behind)
            behind = revision
        except EtcdError as e:
            if "compacted" not in str(e):  # already compacted past it (etcd's own auto-compaction)
                log.warning("cannot compact etcd: %s", e)

"""The leader's executor registry against real etcd: a deposed leader's revoke, a compacted watch (issue 12).

Two elections share a real etcd cluster. The first leader's key is taken away (as when it stalled
past its lease) and another master wins; the first still believes it leads when it acts.
"""

from __future__ import annotations

import asyncio

import pytest

from rota.metastore import keys
from rota.metastore.client import EtcdClient
from rota.metastore.election import Election
from rota.metastore.session import Session
from rota.scheduler.core import Core
from rota.scheduler.executor_registry import ExecutorRegistry
from rota.scheduler.placement import ExecutorSlot
from rota.scheduler.store import Store

pytestmark = pytest.mark.etcd


def test_a_deposed_leader_does_not_revoke_an_executors_lease(etcd_cluster):
    async def scenario() -> tuple[int, int]:
        async with EtcdClient(etcd_cluster.endpoints, timeout=20) as client:
            old_session = await Session(client, ttl=20).start()
            old = Election(client, keys.LEADER, old_session)
            assert await old.campaign("m0", "127.0.0.1:1")
            old_registry = ExecutorRegistry(client, Store(client, old), Core(), lambda: None, lambda: None)
            lease = await client.grant(30)  # an executor's lease, which the next leader adopts

            await client.delete(keys.LEADER)  # m0's key is gone: it stalled past its lease
            new_session = await Session(client, ttl=20).start()
            new = Election(client, keys.LEADER, new_session)
            assert await new.campaign("m1", "127.0.0.1:2")
            assert old.term  # m0 has not noticed

            await old_registry._gone("ex-1", lease, "disconnected")
            after_deposed = await client.time_to_live(lease)

            new_registry = ExecutorRegistry(client, Store(client, new), Core(), lambda: None, lambda: None)
            await new_registry._gone("ex-1", lease, "disconnected")
            after_leader = await client.time_to_live(lease)
            await old_session.close()
            await new_session.close()
            return after_deposed, after_leader

    after_deposed, after_leader = asyncio.run(scenario())
    assert after_deposed > 0, "the deposed leader revoked the lease"
    assert after_leader <= 0, "the leader could not revoke it"


def test_an_executor_lost_while_the_watch_history_was_compacted_is_still_lost(etcd_cluster):
    """The leader's executor watch resumes from a revision etcd has compacted away, so the
    deletion of a lost executor's key is no longer in the history: a relist must find it."""

    async def scenario() -> tuple[set[str], set[str]]:
        async with EtcdClient(etcd_cluster.endpoints, timeout=20) as client:
            session = await Session(client, ttl=20).start()
            election = Election(client, keys.LEADER, session)
            assert await election.campaign("m0", "127.0.0.1:1")
            core = Core()
            for ex_id in ("gone", "here"):
                core.attach_executor(
                    ExecutorSlot(id=ex_id, name=ex_id, addr="x:1", slots=1, kinds=frozenset())
                )
            start = await client.put(keys.executor("here"), b"{}") + 1
            gone = await client.put(keys.executor("gone"), b"{}")
            deleted = await client.delete(keys.executor("gone"))
            assert deleted
            now = await client.put(keys.HEALTH, b"x")
            await client.compact(now, physical=True)  # the watch's start, and the deletion, are gone
            registry = ExecutorRegistry(client, Store(client, election), core, lambda: None, lambda: None)
            watching = asyncio.create_task(registry.watch(min(start, gone)))
            for _ in range(100):
                if "gone" not in core.executors:
                    break
                await asyncio.sleep(0.05)
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            await session.close()
            return set(core.executors), {"here"}

    held, expected = asyncio.run(scenario())
    assert held == expected

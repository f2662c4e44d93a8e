"""What a leader that was deposed without noticing may still do: nothing that sticks (issue 12).

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

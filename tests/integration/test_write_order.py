"""A copy of a state write that reaches etcd late must not undo a later write (scheduler/store.py).

Seen in a chaos run: while an etcd member was stalled, a transaction that wrote tasks ASSIGNED was
applied a second time, 54 revisions later, after the tasks had been written SUCCEEDED and their job
had ended; the client had given up on the first copy and sent it again. A real etcd cluster takes a
late copy here exactly as it would from a member that thawed: the transaction the store sent is
recorded and sent again after a later write.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from rota.common.jobspec import JobSpec
from rota.metastore import keys
from rota.metastore.client import EtcdClient, TxnResult
from rota.metastore.election import Election
from rota.metastore.session import Session
from rota.scheduler.core import Job, PutTask
from rota.scheduler.store import Store

pytestmark = pytest.mark.etcd


def test_a_late_copy_of_a_write_does_not_undo_a_later_one(etcd_cluster):
    async def scenario() -> tuple[dict[str, Any], TxnResult, dict[str, Any]]:
        async with EtcdClient(etcd_cluster.endpoints, timeout=20) as client:
            session = await Session(client, ttl=20).start()
            election = Election(client, keys.LEADER, session)
            assert await election.campaign("m0", "127.0.0.1:1")
            store = Store(client, election)
            await store.begin_term()
            spec = JobSpec.from_dict({"name": "j", "task": [{"name": "t", "kind": "noop"}]})
            job = Job("j", spec, 1, time.time())
            assert await store.create_job("j", spec, job.created)
            sent: list[tuple[Any, ...]] = []
            txn = client.txn

            async def recording(*args: Any) -> TxnResult:
                sent.append(args)
                return await txn(*args)

            client.txn = recording  # type: ignore[method-assign]
            await store.commit([PutTask(job.tasks[0], {"s": "ASSIGNED", "a": 1, "e": "ex"})])
            await store.commit([PutTask(job.tasks[0], {"s": "SUCCEEDED", "a": 1, "e": "ex"})])
            client.txn = txn  # type: ignore[method-assign]
            late = await client.txn(*sent[0])  # the first write's copy, arriving now
            kv = await client.get(keys.task("j", 0))
            assert kv is not None
            order = await client.get(keys.WRITE_ORDER)
            await session.close()
            return json.loads(kv.value), late, {"order": order.value.decode() if order else None}

    task, late, seen = asyncio.run(scenario())
    assert not late.succeeded, "the late copy was applied"
    assert task["s"] == "SUCCEEDED", task
    assert seen["order"] is not None and seen["order"].endswith("/00000000000000000003"), seen


def test_a_resent_job_creation_whose_first_copy_applied_is_recognised_as_ours(etcd_cluster):
    """etcd applied the creation but its answer was lost, so the client sent it again: the copy
    fails its compares, and the store must see that the record is its own, not another leader's."""

    async def scenario() -> tuple[int | None, int | None]:
        async with EtcdClient(etcd_cluster.endpoints, timeout=20) as client:
            session = await Session(client, ttl=20).start()
            election = Election(client, keys.LEADER, session)
            assert await election.campaign("m0", "127.0.0.1:1")
            store = Store(client, election)
            await store.begin_term()
            spec = JobSpec.from_dict({"name": "j", "task": [{"name": "t", "kind": "noop"}]})
            txn = client.txn

            async def applied_then_resent(*args: Any) -> TxnResult:
                await txn(*args)  # applied; its answer is lost
                return await txn(*args)

            client.txn = applied_then_resent  # type: ignore[method-assign]
            mine = await store.create_job("j", spec, 1000.5)
            client.txn = txn  # type: ignore[method-assign]
            theirs = await store.create_job("j", spec, 2000.5)  # same id, another submission
            await session.close()
            return mine, theirs

    mine, theirs = asyncio.run(scenario())
    assert mine is not None and mine > 0
    assert theirs is None

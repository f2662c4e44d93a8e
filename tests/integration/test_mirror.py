"""A mirror of an etcd prefix follows puts and deletes under it, and nothing outside it."""

from __future__ import annotations

import asyncio
import time

import pytest

from rota.metastore.client import EtcdClient
from rota.metastore.mirror import Mirror

pytestmark = pytest.mark.etcd


async def _until(what: str, check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_mirror_lists_then_follows_its_prefix(etcd_cluster):
    async def scenario() -> None:
        async with EtcdClient(etcd_cluster.endpoints, timeout=10) as client:
            await client.put(b"/m/a", b"1")
            await client.put(b"/other", b"x")
            mirror = Mirror(client, b"/m/")
            assert not mirror.synced
            task = asyncio.create_task(mirror.run())
            try:
                await _until("the first listing", lambda: mirror.synced)
                assert mirror.kvs == {b"/m/a": b"1"}
                await client.put(b"/m/b", b"2")
                await client.put(b"/m/a", b"3")
                await client.delete(b"/m/b")
                await client.put(b"/n", b"outside")
                await client.put(b"/m/c", b"4")
                await _until("the last put", lambda: b"/m/c" in mirror.kvs)
                assert mirror.kvs == {b"/m/a": b"3", b"/m/c": b"4"}
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())

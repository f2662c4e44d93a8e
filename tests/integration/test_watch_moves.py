"""A watch whose etcd member stops answering moves to another member and goes on (found by the
partition tests: grpc.aio raises CancelledError from a call the watch's own checker cancelled,
which used to end the watch, and with it the leader's watch of executor leases)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from rota.metastore.client import EtcdClient

pytestmark = pytest.mark.etcd


def test_a_watch_on_a_frozen_member_goes_on_from_another(etcd_cluster):
    frozen = etcd_cluster.members[0]

    async def scenario() -> list[bytes]:
        async with (
            EtcdClient(etcd_cluster.endpoints, timeout=10) as watcher,
            EtcdClient(etcd_cluster.endpoints[1:], timeout=10) as writer,
        ):
            _, revision = await watcher.read(b"/w/")
            seen: list[bytes] = []

            async def follow() -> None:
                async for events in watcher.watch(b"/w/", revision + 1, prefix=True, check_every=0.2):
                    seen.extend(e.kv.key for e in events)
                    if b"/w/after" in seen:
                        return

            task = asyncio.create_task(follow())
            await writer.put(b"/w/before", b"1")
            frozen.kill(signal.SIGSTOP)
            try:
                await asyncio.sleep(1.0)  # the checker finds the member silent and cancels the stream
                await writer.put(b"/w/after", b"2")
                await asyncio.wait_for(task, 20)
            finally:
                frozen.kill(signal.SIGCONT)
            return seen

    assert asyncio.run(scenario()) == [b"/w/before", b"/w/after"]

"""A hello out of bounds is refused before anything is written (issue 13): a fake executor
claiming 2**31 slots would have taken every pending task."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rota.metastore import keys
from rota.metastore.client import EtcdClient
from rota.protos import rota_pb2, rota_pb2_grpc

pytestmark = pytest.mark.etcd


def hello(**fields) -> rota_pb2.ExecutorMessage:
    base = {"name": "fake", "addr": "127.0.0.1:1", "slots": 1, "kinds": ["noop"], "keepalive_ttl": 5.0}
    return rota_pb2.ExecutorMessage(hello=rota_pb2.Hello(**{**base, **fields}))


def test_hellos_out_of_bounds_are_refused_and_write_nothing(local_cluster):
    cluster = local_cluster()
    leader = cluster.leader()
    with grpc.insecure_channel(leader.addr) as ch:
        stub = rota_pb2_grpc.MasterStub(ch)
        for fields, needle in (
            ({"slots": 2**31 - 1}, "slots"),
            ({"keepalive_ttl": 1e9}, "TTL"),
            ({"name": "../etc"}, "name"),
            ({"addr": "0.0.0.0:1"}, "wildcard"),
        ):
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Attach(iter([hello(**fields)]), timeout=10))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
            assert "hello refused" in e.value.details() and needle in e.value.details(), e.value.details()

    async def registered() -> int:
        async with EtcdClient(cluster.etcd_endpoints, timeout=20) as client:
            return len((await client.get_prefix(keys.EXECUTORS, keys_only=True))[0])

    assert asyncio.run(registered()) == 0
    with cluster.client(timeout=20) as c:
        assert c.list_executors() == []
        job = c.submit_job({"name": "after", "task": [{"name": "t", "kind": "noop"}]})
        cluster.add_executor()
        assert c.wait_job(job["id"], timeout=60)["state"] == "SUCCEEDED"

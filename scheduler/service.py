"""The master's gRPC service. Every master answers; leader-only calls are forwarded."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import grpc

from metastore import keys
from metastore.client import EtcdClient, EtcdError
from metastore.election import read_leader
from protos import rota_pb2, rota_pb2_grpc
from scheduler import rpc
from scheduler.leadership import Leadership

log = logging.getLogger("rota.service")

PEER_TIMEOUT = 0.5
BEAT_EVERY = 2.0


class Peers:
    """gRPC channels to the other masters, opened once and reused."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, addr: str) -> rota_pb2_grpc.MasterStub:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = rpc.channel(addr)
        return rota_pb2_grpc.MasterStub(ch)

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()), return_exceptions=True)
        self._channels.clear()


class MasterService(rota_pb2_grpc.MasterServicer):
    def __init__(
        self, name: str, addr: str, client: EtcdClient, leadership: Leadership, peers: Peers
    ) -> None:
        self.name = name
        self.addr = addr
        self.client = client
        self.leadership = leadership
        self.peers = peers

    def info(self) -> rota_pb2.MasterInfo:
        lead = self.leadership
        leader = lead.leader
        return rota_pb2.MasterInfo(
            name=self.name,
            addr=self.addr,
            role="leader" if lead.is_leader else "follower",
            leader_name=leader.name if leader else "",
            leader_addr=leader.addr if leader else "",
            term=lead.term,
            fenced_rejections=lead.fenced_rejections + (lead.election.rejected if lead.election else 0),
            elections_won=lead.elections_won,
        )

    async def GetMasterInfo(
        self, request: rota_pb2.MasterInfoRequest, context: object
    ) -> rota_pb2.MasterInfo:
        return self.info()

    async def GetClusterStatus(
        self, request: rota_pb2.ClusterStatusRequest, context: object
    ) -> rota_pb2.ClusterStatus:
        try:
            leader, (registered, _), executors, endpoints = await asyncio.gather(
                read_leader(self.client, keys.LEADER),
                self.client.get_prefix(keys.MASTERS),
                self.client.count_prefix(keys.EXECUTORS),
                self.client.member_client_urls(),
            )
            healthy = True
            masters = {m["name"]: m["addr"] for m in (json.loads(kv.value) for kv in registered)}
        except EtcdError as e:
            log.warning("cluster status without etcd: %s", e)
            healthy, leader, executors, endpoints = (
                False,
                self.leadership.leader,
                0,
                list(self.client.endpoints),
            )
            masters = {self.name: self.addr}
        names = sorted(masters)
        reachable = await asyncio.gather(*(self._reachable(n, masters[n]) for n in names))
        statuses = [
            rota_pb2.MasterStatus(
                name=n,
                addr=masters[n],
                role=("leader" if leader and leader.name == n else "follower") if ok else "unreachable",
            )
            for n, ok in zip(names, reachable, strict=True)
        ]
        return rota_pb2.ClusterStatus(
            leader_name=leader.name if leader else "",
            leader_addr=leader.addr if leader else "",
            masters=statuses,
            etcd=rota_pb2.EtcdStatus(endpoints=sorted(set(endpoints)), healthy=healthy),
            executors=executors,
        )

    async def _reachable(self, name: str, addr: str) -> bool:
        if name == self.name:
            return True
        try:
            await self.peers.stub(addr).GetMasterInfo(rota_pb2.MasterInfoRequest(), timeout=PEER_TIMEOUT)
            return True
        except grpc.aio.AioRpcError:
            return False

    async def FollowLeader(
        self, request: rota_pb2.FollowRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rota_pb2.LeaderBeat]:
        lead = self.leadership
        while lead.is_leader:
            assert lead.session is not None
            yield rota_pb2.LeaderBeat(leader_name=self.name, term=lead.term, lease_id=lead.session.lease_id)
            await asyncio.sleep(BEAT_EVERY)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.name} is not the leader")

"""A master's leadership loop: campaign, lead until the lease is lost, step down, repeat.

Followers also watch the leader's process: each keeps a FollowLeader stream open to
it. When the stream breaks and the leader's port refuses connections, its process is
gone, and the follower revokes the dead leader's lease instead of waiting out the TTL.
Were that ever wrong (a live leader), the fencing token keeps it safe: the old
leader's next write is rejected and it steps down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import grpc

from rota.common import rpc
from rota.common.tls import TlsFiles
from rota.metastore import keys
from rota.metastore.client import EtcdClient, EtcdError, NoSpace, put_op
from rota.metastore.election import Election, Fenced, Leader, observe
from rota.metastore.session import Session
from rota.protos import rota_pb2, rota_pb2_grpc

log = logging.getLogger("rota.leadership")

#: How long a stopping master tries to resign before it gives up (etcd without quorum).
STOP_TIMEOUT = 1.5
#: Pause after resigning a leadership this master could not take up, so that another may.
RESIGN_BACKOFF = 1.0
#: Pause between campaigns while etcd is out of space (it grants no lease then).
NOSPACE_BACKOFF = 1.0

Hook = Callable[[Election], Awaitable[None]]


class Leadership:
    def __init__(
        self,
        client: EtcdClient,
        name: str,
        addr: str,
        lease_ttl: float,
        on_elected: Hook | None = None,
        on_deposed: Callable[[], Awaitable[None]] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.tls = tls
        self.client = client
        self.name = name
        self.addr = addr
        self.lease_ttl = lease_ttl
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.session: Session | None = None
        self.election: Election | None = None
        self.leader: Leader | None = None
        self.elections_won = 0
        self.fenced_rejections = 0
        self._stopping = False
        self._abdicate = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def is_leader(self) -> bool:
        return self.election is not None and self.election.is_leader

    @property
    def term(self) -> int:
        return self.election.term if self.election and self.election.is_leader else 0

    def step_down(self) -> None:
        """Give up leading at once (a fenced write was rejected); the loop campaigns again."""
        self._abdicate.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._campaign_loop(), name="campaign"),
            asyncio.create_task(self._observe_loop(), name="observe-leader"),
        ]

    async def stop(self) -> None:
        """Resign at once (so the next leader need not wait out the lease) and stop."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.election and self.election.term:
            term = self.election.term
            try:
                await asyncio.wait_for(self.election.resign(), STOP_TIMEOUT)
                log.info("resigned leadership (term %d)", term)
            except (EtcdError, asyncio.TimeoutError) as e:
                log.warning("could not resign: %s", e or "etcd did not answer")
        if self.session:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.session.close(revoke=True), STOP_TIMEOUT)

    # -- campaigning and leading ---------------------------------------------------------

    async def _campaign_loop(self) -> None:
        full = False
        while not self._stopping:
            won = False
            try:
                self.session = await Session(self.client, self.lease_ttl).start()
                self.election = Election(self.client, keys.LEADER, self.session)
                term = await self.election.campaign(self.name, self.addr)
                won, full = True, False
                self.elections_won += 1
                log.info("elected leader (term %d)", term)
                await self._lead(self.election)
            except NoSpace as e:
                # No lease is granted and no leader key written until space is freed (upkeep.py).
                (log.debug if full else log.warning)("cannot campaign while etcd is out of space: %s", e)
                full = True
                await asyncio.sleep(NOSPACE_BACKOFF)
            except (EtcdError, Fenced) as e:
                log.warning("leadership interrupted: %s", e)
                await asyncio.sleep(0.2)
            except Exception:
                # A leader that cannot lead (its rebuild raised) must not sit on the lease: every
                # call would answer "no leader is ready" until the process is restarted.
                log.exception("cannot lead: resigning so that another master can, then campaigning again")
                if self.election is not None and self.election.term:
                    with contextlib.suppress(EtcdError, Fenced, asyncio.TimeoutError):
                        await asyncio.wait_for(self.election.resign(), STOP_TIMEOUT)
                await asyncio.sleep(RESIGN_BACKOFF * (1 + random.random()))
            finally:
                if self.election is not None:
                    self.fenced_rejections += self.election.rejected
                    self.election.rejected = 0
            if self._stopping:
                return
            if self.session:
                await self.session.close(revoke=True)
            if won and self.on_deposed:
                await self.on_deposed()

    async def _lead(self, election: Election) -> None:
        assert self.session is not None
        self._abdicate.clear()
        if self.on_elected:
            await self.on_elected(election)
        lost = asyncio.ensure_future(self.session.lost.wait())
        abdicate = asyncio.ensure_future(self._abdicate.wait())
        try:
            await asyncio.wait([lost, abdicate], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            abdicate.cancel()
        # The lease is gone or presumed gone: prove it with a fenced write, which a
        # successor's key makes fail. If it still succeeds, give the key up anyway.
        try:
            await election.fenced_txn([put_op(keys.LEADER_CHECK, self.name.encode())])
            log.warning("lease lost but the leader key is still ours; resigning")
            await election.resign()
        except Fenced:
            log.warning("fenced write rejected: another master leads now; stepping down")
        except EtcdError as e:
            log.warning("cannot confirm leadership (%s); stepping down", e)
        election.term = 0

    # -- following ---------------------------------------------------------------------

    async def _observe_loop(self) -> None:
        follow: asyncio.Task[None] | None = None
        while not self._stopping:
            try:
                async for leader in observe(self.client, keys.LEADER):
                    self.leader = leader
                    if follow:
                        follow.cancel()
                        follow = None
                    if leader and leader.name != self.name:
                        follow = asyncio.create_task(self._watch_leader_process(leader))
            except EtcdError as e:
                log.warning("lost sight of the leader key: %s", e)
                await asyncio.sleep(0.2)
            finally:
                if follow:
                    follow.cancel()
                    follow = None

    async def _watch_leader_process(self, leader: Leader) -> None:
        """Revoke the leader's lease once its process is provably gone."""
        async with rpc.channel(leader.addr, self.tls) as channel:
            stub = rota_pb2_grpc.MasterStub(channel)
            while True:
                started = time.monotonic()
                try:
                    async for _ in stub.FollowLeader(rota_pb2.FollowRequest(follower=self.name)):
                        pass
                except grpc.aio.AioRpcError as e:
                    log.debug("follow stream to %s ended: %s", leader.name, e.details())
                if await _refuses_connections(leader.addr):
                    break
                await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
        current = await self.client.get(keys.LEADER)
        if current is not None and current.create_revision == leader.term:
            log.warning("leader %s is gone (connection refused); revoking its lease", leader.name)
            await self.client.revoke(leader.lease)


async def _refuses_connections(addr: str) -> bool:
    """True when nothing listens at ``addr`` (a fresh connection is refused at once)."""
    host, _, port = addr.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 0.5)
    except ConnectionRefusedError:
        return True
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False

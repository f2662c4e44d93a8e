"""The one etcd client of Rota: failover between endpoints, batched txns, leases, watches.

It speaks etcd's v3 gRPC API through the protocol bindings of ``aetcd`` (a maintained
asyncio descendant of python-etcd3) over grpc.aio channels of its own, because Rota
needs what ``aetcd.Client`` does not do: rotate to the next endpoint when a member dies
or loses quorum, keep one lease keep-alive stream for many leases, and re-watch from the
last seen revision. Nothing outside ``metastore`` imports an etcd client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from rota.common.tls import TlsFiles, channel_credentials
from rota.metastore import keys

log = logging.getLogger("rota.etcd")

RETRY_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN}
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.min_reconnect_backoff_ms", 100),
]
_HAS_LEADER = (("hasleader", "true"),)
#: A keep-alive stream with renewals pending that has answered nothing for this long is abandoned.
STUCK_STREAM = 2.0


class EtcdError(Exception):
    """etcd could not be reached or refused a request."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the deadline (members down or quorum lost)."""


class Refused(EtcdError):
    """etcd refused the request itself (too large, too many operations, a bad key): sending the
    same request again cannot succeed."""


#: How etcd says a request can never succeed: "request is too large", "too many operations in txn
#: request" and the like are INVALID_ARGUMENT; a message over its receive limit is refused by gRPC.
REFUSED_CODES = {grpc.StatusCode.INVALID_ARGUMENT}
TOO_LARGE_DETAIL = "larger than max"


class NoSpace(EtcdError):
    """etcd refused a write because a member's database reached its quota (the NOSPACE alarm).

    Reads, deletes (and transactions of deletes only), lease renewals and revocations,
    compaction, defragmentation and disarming still work; puts, transactions with a put and
    lease grants do not. The write that raised the alarm may have been applied all the same:
    a caller that must know reads back.
    """


#: What etcd says of a write refused for space (gRPC RESOURCE_EXHAUSTED, like "too many requests").
NOSPACE_DETAIL = "database space exceeded"


class WatchCompacted(EtcdError):
    """The revision a watch asked for was compacted: the caller must list again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, kv: Any) -> KV:
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


@dataclass(frozen=True, slots=True)
class Event:
    """A watch event. ``kv.value`` is empty for deletes; ``prev`` is the value before."""

    type: str  # "put" or "delete"
    kv: KV
    prev: KV | None


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[Any]

    def ranges(self) -> list[list[KV]]:
        """The range results among the responses, in order."""
        return [
            [KV.from_pb(kv) for kv in r.response_range.kvs]
            for r in self.responses
            if r.WhichOneof("response") == "response_range"
        ]


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One etcd member as its own Status call describes it; ``error`` when it did not answer."""

    id: int
    name: str
    endpoint: str
    db_size: int = 0
    db_size_in_use: int = 0
    error: str = ""

    @property
    def free(self) -> int:
        """Bytes of the database file that compaction freed and only defragmentation returns."""
        return max(0, self.db_size - self.db_size_in_use)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One etcd member as MemberList gives it, and whether it answered its own Status call
    (``error`` says why not; a member added but never started has no name and no client URLs)."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    learner: bool = False
    error: str = ""
    #: The raft leader's member id as this member sees it (0: it knows none, or did not answer).
    raft_leader: int = 0

    @property
    def started(self) -> bool:
        return bool(self.name)

    @property
    def healthy(self) -> bool:
        return not self.error


class MemberNotFound(EtcdError):
    """No member of that id."""


class MemberExists(EtcdError):
    """A member with that peer URL is there already."""


@dataclass(frozen=True, slots=True)
class Alarm:
    member_id: int
    alarm: str  # "NOSPACE" or "CORRUPT"


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


# Operations and comparisons for transactions, as etcd's own messages.


def put_op(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes, prefix: bool = False) -> Any:
    req = rpc.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
    return rpc.RequestOp(request_delete_range=req)


def get_op(key: bytes, prefix: bool = False) -> Any:
    req = rpc.RangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
    return rpc.RequestOp(request_range=req)


def value_below(key: bytes, value: bytes) -> Any:
    """True while ``key`` exists with a value that sorts before ``value`` (bytewise)."""
    return rpc.Compare(key=key, result=rpc.Compare.LESS, target=rpc.Compare.VALUE, value=value)


def create_revision_is(key: bytes, revision: int) -> Any:
    """True while ``key`` is the very key created at ``revision`` (0: absent)."""
    return rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, create_revision=revision)


class EtcdClient:
    """An asyncio etcd client over several endpoints.

    Calls go to one endpoint at a time; when it fails with a transport error or a
    deadline, the client moves to the next and retries until ``timeout`` runs out.
    Retried writes may have been applied once already: callers keep them idempotent
    (puts of whole values, compare-guarded creates).

    An ``https://`` endpoint is dialled with TLS, showing ``tls``'s certificate (etcd started with
    --client-cert-auth asks for one).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 5.0,
        call_timeout: float = 1.0,
        tls: TlsFiles | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.tls = tls
        self._secure: set[str] = set()
        self.endpoints = self._targets(endpoints)
        self.timeout = timeout
        self.call_timeout = call_timeout
        self._current = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._keepalives: dict[str, _KeepAliveStream] = {}
        self._closed = False
        #: Called after every transaction with (operations, seconds); for metrics.
        self.on_txn: Callable[[int, float], None] | None = None

    # -- plumbing -----------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    def _targets(self, endpoints: Sequence[str]) -> list[str]:
        targets = [_target(e) for e in endpoints]
        self._secure.update(t for e, t in zip(endpoints, targets, strict=True) if e.startswith("https://"))
        return targets

    def _channel(self, target: str) -> grpc.aio.Channel:
        ch = self._channels.get(target)
        if ch is None:
            if target in self._secure:
                creds = (
                    channel_credentials(self.tls) if self.tls is not None else grpc.ssl_channel_credentials()
                )
                ch = grpc.aio.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
            else:
                ch = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            self._channels[target] = ch
        return ch

    def _rotate(self, failed: str) -> None:
        if self.endpoint == failed and len(self.endpoints) > 1:
            self._current = (self._current + 1) % len(self.endpoints)
            log.info("etcd endpoint %s failed; trying %s", failed, self.endpoint)

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Adopt the cluster's member list, keeping the current endpoint first."""
        targets = self._targets(endpoints)
        if not targets:
            return
        current = self.endpoint
        self.endpoints = [current] + [t for t in targets if t != current] if current in targets else targets
        self._current = 0

    async def _call(self, stub_cls: Any, method: str, request: Any, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        delay = 0.02
        last: Exception | None = None
        while True:
            target = self.endpoint
            remaining = deadline - time.monotonic()
            try:
                fn = getattr(stub_cls(self._channel(target)), method)
                return await fn(request, timeout=max(0.05, min(self.call_timeout, remaining)))
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRY_CODES:
                    raise _error(method, e) from e
                last = e
                self._rotate(target)
            if time.monotonic() + delay >= deadline:
                detail = last.details() if isinstance(last, grpc.aio.AioRpcError) else last
                raise EtcdUnavailable(f"etcd unavailable at {', '.join(self.endpoints)}: {detail}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def close(self) -> None:
        self._closed = True
        for stream in self._keepalives.values():
            await stream.close()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- KV -----------------------------------------------------------------------------

    async def get(self, key: bytes, serializable: bool = False) -> KV | None:
        """``serializable`` reads the member's own copy without a quorum round: quick under load,
        possibly a moment stale; for views, never for decisions."""
        return (await self.read(key, serializable))[0]

    async def read(self, key: bytes, serializable: bool = False) -> tuple[KV | None, int]:
        """A key and the store revision it was read at."""
        resp = await self._call(rpc.KVStub, "Range", rpc.RangeRequest(key=key, serializable=serializable))
        return (KV.from_pb(resp.kvs[0]) if resp.kvs else None), int(resp.header.revision)

    async def get_prefix(
        self, prefix: bytes, revision: int = 0, keys_only: bool = False, serializable: bool = False
    ) -> tuple[list[KV], int]:
        """Every key under ``prefix`` at one revision, read in pages; returns (kvs, revision)."""
        return await self.get_range(prefix, prefix_end(prefix), revision, keys_only, serializable)

    async def get_range(
        self, start: bytes, end: bytes, revision: int = 0, keys_only: bool = False, serializable: bool = False
    ) -> tuple[list[KV], int]:
        """Every key in ``[start, end)`` at one revision, read in pages; returns (kvs, revision)."""
        out: list[KV] = []
        while True:
            req = rpc.RangeRequest(
                key=start,
                range_end=end,
                limit=10000,
                revision=revision,
                keys_only=keys_only,
                serializable=serializable,
            )
            resp = await self._call(rpc.KVStub, "Range", req, timeout=max(self.timeout, 30.0))
            revision = revision or resp.header.revision
            out.extend(KV.from_pb(kv) for kv in resp.kvs)
            if not resp.more:
                return out, revision
            start = resp.kvs[-1].key + b"\0"

    async def count_prefix(self, prefix: bytes, serializable: bool = False) -> int:
        req = rpc.RangeRequest(
            key=prefix, range_end=prefix_end(prefix), count_only=True, serializable=serializable
        )
        return int((await self._call(rpc.KVStub, "Range", req)).count)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        resp = await self._call(rpc.KVStub, "Put", rpc.PutRequest(key=key, value=value, lease=lease))
        return int(resp.header.revision)

    async def delete(self, key: bytes, prefix: bool = False) -> int:
        req = rpc.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        return int((await self._call(rpc.KVStub, "DeleteRange", req)).deleted)

    async def compact(self, revision: int, physical: bool = False) -> None:
        """Drop the history of every key before ``revision`` (watches from before it then fail);
        ``physical`` waits until the answering member has removed it from its database."""
        await self._call(
            rpc.KVStub,
            "Compact",
            rpc.CompactionRequest(revision=revision, physical=physical),
            timeout=max(self.timeout, 30.0) if physical else None,
        )

    async def db_size(self) -> tuple[int, int]:
        """(database file size, bytes of it in use) of the member answering."""
        status = await self._call(rpc.MaintenanceStub, "Status", rpc.StatusRequest())
        return int(status.dbSize), int(status.dbSizeInUse)

    # -- maintenance --------------------------------------------------------------------

    async def _call_at(self, endpoint: str, stub_cls: Any, method: str, request: Any, timeout: float) -> Any:
        """One call to one member, no failover: defragmentation and Status are about that member."""
        try:
            fn = getattr(stub_cls(self._channel(self._targets([endpoint])[0])), method)
            return await fn(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise _error(method, e) from e

    async def member_statuses(self, timeout: float | None = None) -> list[MemberStatus]:
        """Every member with its database size, asked directly (one that does not answer has ``error``)."""
        resp = await self._call(rpc.ClusterStub, "MemberList", rpc.MemberListRequest())
        wait = self.call_timeout if timeout is None else timeout

        async def one(m: Any) -> MemberStatus:
            endpoint = m.clientURLs[0] if m.clientURLs else ""
            if not endpoint:
                return MemberStatus(int(m.ID), m.name, endpoint, error="not started")
            try:
                st = await self._call_at(endpoint, rpc.MaintenanceStub, "Status", rpc.StatusRequest(), wait)
            except EtcdError as e:
                return MemberStatus(int(m.ID), m.name, endpoint, error=str(e))
            return MemberStatus(int(m.ID), m.name, endpoint, int(st.dbSize), int(st.dbSizeInUse))

        return list(await asyncio.gather(*(one(m) for m in resp.members)))

    async def alarms(self, timeout: float | None = None) -> list[Alarm]:
        """The alarms raised in the cluster (etcd keeps them until they are disarmed). A raft
        request: it waits for etcd to have a leader."""
        resp = await self._call(
            rpc.MaintenanceStub, "Alarm", rpc.AlarmRequest(action=rpc.AlarmRequest.GET, memberID=0), timeout
        )
        return [Alarm(int(a.memberID), rpc.AlarmType.Name(a.alarm)) for a in resp.alarms]

    async def disarm(self, alarm: Alarm) -> None:
        req = rpc.AlarmRequest(
            action=rpc.AlarmRequest.DEACTIVATE,
            memberID=alarm.member_id,
            alarm=rpc.AlarmType.Value(alarm.alarm),
        )
        await self._call(rpc.MaintenanceStub, "Alarm", req)

    async def defragment(self, endpoint: str, timeout: float) -> None:
        """Rewrite one member's database file without its free pages. The member answers nothing
        else meanwhile, so members are defragmented one at a time."""
        await self._call_at(endpoint, rpc.MaintenanceStub, "Defragment", rpc.DefragmentRequest(), timeout)

    async def txn(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> TxnResult:
        req = rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        started = time.monotonic()
        resp = await self._call(rpc.KVStub, "Txn", req)
        if self.on_txn is not None:
            self.on_txn(len(req.success), time.monotonic() - started)
        return TxnResult(resp.succeeded, resp.header.revision, list(resp.responses))

    # -- cluster ------------------------------------------------------------------------

    async def members(self, timeout: float | None = None) -> list[MemberInfo]:
        """Every member, each asked for its Status directly (within ``timeout``): one that does not
        answer, or answers without knowing a raft leader, has ``error``."""
        resp = await self._call(rpc.ClusterStub, "MemberList", rpc.MemberListRequest())
        wait = self.call_timeout if timeout is None else timeout

        async def one(m: Any) -> MemberInfo:
            info = MemberInfo(int(m.ID), m.name, tuple(m.peerURLs), tuple(m.clientURLs), bool(m.isLearner))
            if not m.clientURLs:
                return _replace(info, error="not started")
            try:
                st = await self._call_at(
                    m.clientURLs[0], rpc.MaintenanceStub, "Status", rpc.StatusRequest(), wait
                )
            except EtcdError as e:
                return _replace(info, error=str(e))
            if not st.leader:
                return _replace(info, error="no raft leader")
            return _replace(info, raft_leader=int(st.leader))

        return list(await asyncio.gather(*(one(m) for m in resp.members)))

    async def member_add(self, peer_urls: Sequence[str]) -> tuple[int, list[MemberInfo]]:
        """Add a voting member (it joins once started with --initial-cluster-state existing);
        returns its id and every member. A retry that finds its own add applied returns that one."""
        try:
            resp = await self._call(
                rpc.ClusterStub, "MemberAdd", rpc.MemberAddRequest(peerURLs=list(peer_urls))
            )
        except EtcdError as e:
            if "already exists" not in str(e):
                raise
            listed = await self._call(rpc.ClusterStub, "MemberList", rpc.MemberListRequest())
            mine = [m for m in listed.members if list(m.peerURLs) == list(peer_urls) and not m.name]
            if not mine:
                raise MemberExists(str(e)) from e
            return int(mine[0].ID), [_member(m) for m in listed.members]
        return int(resp.member.ID), [_member(m) for m in resp.members]

    async def member_remove(self, member_id: int) -> list[MemberInfo]:
        """Remove a member; the members left. MemberNotFound when there is none of that id."""
        try:
            resp = await self._call(rpc.ClusterStub, "MemberRemove", rpc.MemberRemoveRequest(ID=member_id))
        except EtcdError as e:
            if "member not found" in str(e):
                raise MemberNotFound(str(e)) from e
            raise
        return [_member(m) for m in resp.members]

    async def member_client_urls(self) -> list[str]:
        resp = await self._call(rpc.ClusterStub, "MemberList", rpc.MemberListRequest())
        return [url for m in resp.members for url in m.clientURLs]

    async def prefer_raft_leader(self) -> str:
        """Talk to the member that leads etcd's raft: a write sent to a follower costs an extra hop."""
        status = await self._call(rpc.MaintenanceStub, "Status", rpc.StatusRequest())
        members = await self._call(rpc.ClusterStub, "MemberList", rpc.MemberListRequest())
        for m in members.members:
            if m.ID == status.leader and m.clientURLs:
                target = self._targets([m.clientURLs[0]])[0]
                if target not in self.endpoints:
                    self.endpoints.append(target)
                self._current = self.endpoints.index(target)
                return target
        return self.endpoint

    async def healthy(self, timeout: float = 1.0) -> bool:
        """True when a linearizable read succeeds, i.e. a quorum answers."""
        try:
            await self._call(rpc.KVStub, "Range", rpc.RangeRequest(key=keys.HEALTH), timeout=timeout)
            return True
        except EtcdError:
            return False

    # -- leases -------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        resp = await self._call(rpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl))
        if resp.error:
            raise EtcdError(f"lease grant: {resp.error}")
        return int(resp.ID)

    async def revoke(self, lease_id: int) -> bool:
        """Revoke a lease; False when it was already gone."""
        try:
            await self._call(rpc.LeaseStub, "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id))
            return True
        except EtcdError as e:
            if "lease not found" in str(e):
                return False
            raise

    async def keepalive(self, lease_id: int, timeout: float | None = None, stream: str = "shared") -> int:
        """Renew a lease once; returns its remaining TTL (0: it has expired).

        Renewals travel on one LeaseKeepAlive stream per ``stream`` name: the leader's own
        session keeps a stream to itself, so a thousand executor leases renewed on the
        shared one can never delay it.
        """
        ka = self._keepalives.get(stream)
        if ka is None:
            ka = self._keepalives[stream] = _KeepAliveStream(self)
        return await ka.renew(lease_id, self.call_timeout if timeout is None else timeout)

    async def close_keepalive(self, stream: str) -> None:
        ka = self._keepalives.pop(stream, None)
        if ka is not None:
            await ka.close()

    async def time_to_live(self, lease_id: int) -> int:
        resp = await self._call(rpc.LeaseStub, "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease_id))
        return int(resp.TTL)

    # -- watches ------------------------------------------------------------------------

    async def watch(
        self, key: bytes, start_revision: int, prefix: bool = False, check_every: float = 1.0
    ) -> AsyncIterator[list[Event]]:
        """Yield batches of events from ``start_revision`` on, forever.

        Survives member deaths: the stream is re-created on another endpoint from the
        revision after the last event seen. A member that stops answering (SIGSTOP,
        lost quorum) is found by a linearizable read every ``check_every`` seconds.
        Raises WatchCompacted when history is gone; the caller must list again.
        """
        next_rev = start_revision
        while not self._closed:
            target = self.endpoint
            call = rpc.WatchStub(self._channel(target)).Watch(metadata=_HAS_LEADER)
            checker = asyncio.create_task(self._watch_checker(target, call, check_every))
            try:
                create = rpc.WatchCreateRequest(
                    key=key,
                    range_end=prefix_end(key) if prefix else b"",
                    start_revision=next_rev,
                    prev_kv=True,
                )
                await call.write(rpc.WatchRequest(create_request=create))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        break
                    if resp.compact_revision:
                        raise WatchCompacted(resp.compact_revision)
                    if resp.canceled:
                        log.info("etcd watch on %s canceled: %s", target, resp.cancel_reason)
                        break
                    if resp.events:
                        events = [_event(e) for e in resp.events]
                        next_rev = events[-1].kv.mod_revision + 1
                        yield events
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED or not checker.done():
                    log.info("etcd watch on %s broke: %s", target, e.details())
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError from read() on a call cancelled here, so the
                # checker's cancel looks like ours: only a cancel of this task ends the watch.
                if not _ours_only(checker):
                    call.cancel()
                    raise
            finally:
                checker.cancel()
                call.cancel()
            self._rotate(target)
            await asyncio.sleep(0.05)

    async def _watch_checker(self, target: str, call: Any, every: float) -> None:
        """Cancel ``call`` when ``target`` stops answering linearizable reads."""
        stub = rpc.KVStub(self._channel(target))
        while True:
            await asyncio.sleep(every)
            try:
                await stub.Range(rpc.RangeRequest(key=keys.HEALTH), timeout=max(every, 0.5))
            except grpc.aio.AioRpcError:
                log.info("etcd member %s stopped answering; moving the watch", target)
                call.cancel()
                return


def _ours_only(canceller: asyncio.Task[Any] | None) -> bool:
    """Whether a CancelledError in the running task came only from a gRPC call that we cancelled
    ourselves (``canceller`` finished after cancelling it; None: another task of ours did), not
    from a request to stop this task. Python 3.11 tells (Task.cancelling); before it, such a
    request arriving in the same instant would be lost, and the next one is heeded."""
    if canceller is not None and (not canceller.done() or canceller.cancelled()):
        return False
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() == 0


def _error(method: str, e: grpc.aio.AioRpcError) -> EtcdError:
    detail = e.details() or e.code().name
    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and NOSPACE_DETAIL in detail:
        return NoSpace(f"etcd {method}: {detail}")
    if e.code() in REFUSED_CODES or (
        e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and TOO_LARGE_DETAIL in detail
    ):
        return Refused(f"etcd {method}: {detail}")
    return EtcdError(f"etcd {method}: {detail}")


def _member(m: Any) -> MemberInfo:
    return MemberInfo(int(m.ID), m.name, tuple(m.peerURLs), tuple(m.clientURLs), bool(m.isLearner))


def _replace(info: MemberInfo, **changes: Any) -> MemberInfo:
    return dataclasses.replace(info, **changes)


def _event(e: Any) -> Event:
    prev = KV.from_pb(e.prev_kv) if e.HasField("prev_kv") else None
    return Event("delete" if e.type == rpc.Event.DELETE else "put", KV.from_pb(e.kv), prev)


def _target(endpoint: str) -> str:
    """``http://host:port`` to the ``host:port`` that gRPC dials."""
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme) :]
    return endpoint.rstrip("/")


class _KeepAliveStream:
    """One LeaseKeepAlive stream shared by every lease of a client.

    The leader renews the leases of many executors; one stream with requests matched
    to answers by lease id costs a fraction of a stream per renewal.
    """

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._call: Any = None
        self._target = ""
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[int, list[asyncio.Future[int]]] = {}
        self._lock = asyncio.Lock()
        self._last_answer = time.monotonic()

    async def _ensure(self) -> Any:
        if self._call is None or self._call.done():
            self._target = self._client.endpoint
            self._call = rpc.LeaseStub(self._client._channel(self._target)).LeaseKeepAlive()
            self._reader = asyncio.create_task(self._read(self._call, self._target))
            self._last_answer = time.monotonic()
        return self._call

    async def _read(self, call: Any, target: str) -> None:
        error: Exception = EtcdUnavailable(f"lease keep-alive stream to {target} closed")
        try:
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    break
                self._last_answer = time.monotonic()
                for fut in self._waiters.pop(resp.ID, []):
                    if not fut.done():
                        fut.set_result(int(resp.TTL))
        except grpc.aio.AioRpcError as e:
            error = EtcdUnavailable(f"lease keep-alive stream to {target}: {e.details()}")
        except asyncio.CancelledError:
            pass
        finally:
            if self._call is call:
                self._call = None
                self._client._rotate(target)
            waiters, self._waiters = self._waiters, {}
            for futs in waiters.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(error)

    async def renew(self, lease_id: int, timeout: float) -> int:
        deadline = time.monotonic() + max(timeout, 0.05)
        while True:
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            sent = time.monotonic()
            call: Any = None
            try:
                async with self._lock:
                    call = await self._ensure()
                    self._waiters.setdefault(lease_id, []).append(fut)
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                return await asyncio.wait_for(fut, max(0.01, deadline - time.monotonic()))
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, EtcdUnavailable, asyncio.InvalidStateError):
                fut.cancel()
                self._drop()
            except asyncio.CancelledError:
                # Also what a write raises on the stream another renewal dropped meanwhile: then
                # try again on a new stream, as after any transport error.
                fut.cancel()
                if call is None or not call.cancelled() or not _ours_only(None):
                    raise
            except asyncio.TimeoutError:
                waiters = self._waiters.get(lease_id)
                if waiters and fut in waiters:
                    waiters.remove(fut)
                if self._last_answer < sent or time.monotonic() - self._last_answer > STUCK_STREAM:
                    # Nothing heard since we asked: the member is down or frozen. Move now, not
                    # after more renewals time out, or a 3 s leader lease runs out meanwhile.
                    self._drop()
                raise EtcdUnavailable(f"lease keep-alive timed out at {self._target}") from None
            if time.monotonic() >= deadline:
                raise EtcdUnavailable(f"lease keep-alive failed at {self._target}")
            await asyncio.sleep(0.02)

    def _drop(self) -> None:
        """Abandon the stream (its member is down or stuck) so the next renewal reopens one."""
        if self._call is not None:
            self._call.cancel()

    async def close(self) -> None:
        self._drop()
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

"""The master's gRPC service. Every master answers; leader-only calls are forwarded."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from rota.common import admission, membership, roles, rpc
from rota.common.config import MAX_DRAIN_TIMEOUT
from rota.common.jobspec import MAX_SCHEDULE_ID, JobSpecError, parse_job_json, validate_job_id
from rota.common.paging import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_TASK_PAGE
from rota.common.states import JOB_STATES
from rota.common.tls import TlsFiles
from rota.metastore import keys
from rota.metastore.client import (
    Alarm,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    MemberExists,
    MemberInfo,
    MemberNotFound,
    MemberStatus,
    NoSpace,
    WatchCompacted,
)
from rota.metastore.election import read_leader
from rota.metastore.mirror import Mirror
from rota.protos import rota_pb2, rota_pb2_grpc
from rota.scheduler import access, events
from rota.scheduler.executor_registry import ExecutorLink
from rota.scheduler.leader import LeaderRuntime, NotReady
from rota.scheduler.leadership import Leadership
from rota.scheduler.looked import Looked
from rota.scheduler.pipeline import OutOfSpace
from rota.scheduler.schedules import MAX_SCHEDULE_BYTES
from rota.scheduler.token_store import Identity, TokenError, TokenStore, TooManyTokens
from rota.scheduler.upkeep import EtcdSpace
from rota.scheduler.views import executor_doc, job_doc

log = logging.getLogger("rota.service")

PEER_TIMEOUT = 0.5
BEAT_EVERY = 2.0
#: How long a membership call waits for each etcd member's own status.
MEMBER_WAIT = 1.0
#: The longest a WaitJob or a waiting SubmitJob may hold its call, in seconds.
MAX_HOLD = 300.0


class Peers:
    """Stubs for the other masters, over one pooled channel each."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        self.pool = rpc.ChannelPool(tls)

    def stub(self, addr: str) -> rota_pb2_grpc.MasterStub:
        return rota_pb2_grpc.MasterStub(self.pool.get(addr))

    async def close(self) -> None:
        await self.pool.close()


def _hold(field: str, seconds: float, unset: float) -> float:
    """A call's hold time, checked: a NaN, a negative or an endless hold is refused."""
    if not 0.0 <= seconds <= MAX_HOLD:  # also false for NaN
        raise ValueError(f"{field} must be between 0 and {MAX_HOLD:g} seconds, got {seconds}")
    return seconds or unset


def _json(doc: Any) -> rota_pb2.JsonReply:
    return rota_pb2.JsonReply(json=json.dumps(doc).encode())


def member_doc(m: MemberInfo, rota_leader: str = "") -> dict[str, Any]:
    """One etcd member as ``member list --json`` shows it."""
    return {
        "id": f"{m.id:x}",
        "name": m.name,
        "peer_urls": list(m.peer_urls),
        "client_urls": list(m.client_urls),
        "started": m.started,
        "healthy": m.healthy,
        "error": m.error or None,
        "raft_leader": bool(m.raft_leader) and m.raft_leader == m.id,
        "leader": bool(rota_leader) and m.name == rota_leader,
        "learner": m.learner,
    }


def _member_name(members: list[MemberStatus], member_id: int) -> str:
    return next((m.name for m in members if m.id == member_id), f"{member_id:x}")


class MasterService(rota_pb2_grpc.MasterServicer):
    def __init__(
        self,
        name: str,
        addr: str,
        client: EtcdClient,
        leadership: Leadership,
        peers: Peers,
        runtime: Callable[[], LeaderRuntime | None],
        space: EtcdSpace | None = None,
        tokens: TokenStore | None = None,
    ) -> None:
        self.name = name
        self.addr = addr
        self.client = client
        self.leadership = leadership
        self.peers = peers
        self.runtime = runtime
        self.space = space or EtcdSpace(0)
        self.tokens = tokens or TokenStore(client, None)
        #: Executor streams by the id of the token they attached with: a revoke closes them.
        self._streams: dict[str, set[ExecutorLink]] = {}
        self._event_streams = 0
        self.tokens.on_revoke.append(self._close_streams)
        #: What cluster-status shows of the other masters and of etcd's space, looked at beside it
        #: (``run_looks``): a busy peer or etcd must not hold up the status view.
        self.peer_look = Looked(self._probe_all)
        self.space_look = Looked(self._space_now)
        #: The registered masters, as watched.
        self.masters = Mirror(client, keys.MASTERS)

    async def run_looks(self) -> None:
        await asyncio.gather(self.peer_look.run(), self.space_look.run(), self.masters.run())

    def _close_streams(self, token_id: str) -> None:
        for link in self._streams.pop(token_id, set()):
            log.warning(
                "executor %s: its token %s was revoked; closing its stream", link.executor_id, token_id
            )
            link.close()

    def info(self) -> rota_pb2.MasterInfo:
        lead = self.leadership
        rt = self.runtime()
        leader = lead.leader
        txns, writes = rt.etcd_writes if rt else (0, 0)
        return rota_pb2.MasterInfo(
            name=self.name,
            addr=self.addr,
            role="leader" if lead.is_leader else "follower",
            leader_name=leader.name if leader else "",
            leader_addr=leader.addr if leader else "",
            term=lead.term,
            fenced_rejections=lead.fenced_rejections + (lead.election.rejected if lead.election else 0),
            elections_won=lead.elections_won,
            etcd_txns=txns,
            etcd_writes=writes,
        )

    async def GetMasterInfo(
        self, request: rota_pb2.MasterInfoRequest, context: object
    ) -> rota_pb2.MasterInfo:
        return self.info()

    async def GetClusterStatus(
        self, request: rota_pb2.ClusterStatusRequest, context: object
    ) -> rota_pb2.ClusterStatus:
        rt = self.runtime()
        known = rt.executors_known() if rt is not None else None
        leader = self.leadership.leader
        try:
            if known is not None and self.masters.synced and leader is not None and leader.name == self.name:
                # A ready leader that etcd renewed just now is the leader etcd would name, and
                # knows its executors: no read of its busy etcd member.
                executors = known
                # Awaited in turn, not gathered: each task gathered waits a turn of the leader's
                # busy loop (tens of ms), and both answer at once while their looks are fresh.
                masters = await self._probed_masters()
                members, alarms = await self.space_look.get()
            else:
                # Serializable reads: a status view must answer quickly while etcd is busy
                # committing. What needs others to answer (peers, etcd's members and alarms) is
                # looked at beside.
                leader, masters, executors, (members, alarms) = await asyncio.gather(
                    read_leader(self.client, keys.LEADER, serializable=True),
                    self._probed_masters(),
                    self.client.count_prefix(keys.EXECUTORS, serializable=True),
                    self.space_look.get(),
                )
            healthy = True
            endpoints = [m.endpoint for m in members if m.endpoint] or list(self.client.endpoints)
        except EtcdError as e:
            log.warning("cluster status without etcd: %s", e)
            healthy, leader, executors, endpoints = (
                False,
                self.leadership.leader,
                0,
                list(self.client.endpoints),
            )
            masters = {self.name: (self.addr, True)}
            members, alarms = self.space.members, self.space.alarms
        statuses = [
            rota_pb2.MasterStatus(
                name=n,
                addr=addr,
                role=("leader" if leader and leader.name == n else "follower") if ok else "unreachable",
            )
            for n, (addr, ok) in sorted(masters.items())
        ]
        return rota_pb2.ClusterStatus(
            leader_name=leader.name if leader else "",
            leader_addr=leader.addr if leader else "",
            masters=statuses,
            etcd=rota_pb2.EtcdStatus(
                endpoints=sorted(set(endpoints)),
                healthy=healthy,
                alarms=[
                    rota_pb2.EtcdAlarm(member=_member_name(members, a.member_id), alarm=a.alarm)
                    for a in alarms
                ],
                members=[
                    rota_pb2.EtcdMemberStatus(
                        name=m.name,
                        endpoint=m.endpoint,
                        db_size=m.db_size,
                        db_size_in_use=m.db_size_in_use,
                        error=m.error,
                    )
                    for m in sorted(members, key=lambda m: m.name)
                ],
                quota_bytes=self.space.quota,
            ),
            executors=executors,
        )

    async def _space_now(self) -> tuple[list[MemberStatus], list[Alarm]]:
        """etcd's members and alarms, or the last ones seen (every master looks every SPACE_CHECK)
        when etcd cannot say within PEER_TIMEOUT: reading alarms is a raft request, which queues
        behind big commits and waits out etcd's own election after its leader died."""
        try:
            members, alarms = await asyncio.wait_for(
                asyncio.gather(self.client.member_statuses(timeout=PEER_TIMEOUT), self.client.alarms()),
                PEER_TIMEOUT,
            )
        except (EtcdError, asyncio.TimeoutError):
            return list(self.space.members), list(self.space.alarms)
        self.space.observe(alarms, members)
        return members, alarms

    async def _registered(self) -> dict[str, str]:
        """Every registered master's address by its name: as watched, else read."""
        if self.masters.synced:
            values = list(self.masters.kvs.values())
        else:
            values = [kv.value for kv in (await self.client.get_prefix(keys.MASTERS, serializable=True))[0]]
        return {m["name"]: m["addr"] for m in map(json.loads, values)}

    async def _probe_all(self) -> dict[tuple[str, str], bool]:
        """Whether each registered master answers, by (name, address): the background look."""
        masters = await self._registered()
        answers = await asyncio.gather(*(self._reachable(n, a) for n, a in masters.items()))
        return dict(zip(masters.items(), answers, strict=True))

    async def _probed_masters(self) -> dict[str, tuple[str, bool]]:
        """Every registered master: its address and whether it answers. One that answered the
        latest background look counts as answering; any other (new, or silent then) is asked now,
        so a master that is back is never shown unreachable."""
        masters = await self._registered()
        seen = self.peer_look.fresh() or {}
        ask = [n for n in sorted(masters) if n != self.name and not seen.get((n, masters[n]), False)]
        answers = await asyncio.gather(*(self._reachable(n, masters[n]) for n in ask)) if ask else []
        asked = dict(zip(ask, answers, strict=True))
        return {n: (masters[n], asked.get(n, True)) for n in sorted(masters)}

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

    async def _on_leader(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        local: Callable[[LeaderRuntime], Awaitable[Any]],
    ) -> Any:
        """Run ``local`` here when we lead, else forward the call to the leader (promise 7)."""
        rt = self.runtime()
        if rt is not None and rt.ready:
            try:
                return await local(rt)
            except OutOfSpace as e:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            except NoSpace as e:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"etcd is out of space (NOSPACE alarm): {e}"
                )
            except (NotReady, EtcdError) as e:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        leader = self.leadership.leader
        if leader is None or leader.name == self.name:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no leader is ready yet; try again")
        assert leader is not None
        remaining = context.time_remaining()
        try:
            return await getattr(self.peers.stub(leader.addr), method)(
                request,
                timeout=remaining if remaining is not None else 30.0,
                metadata=access.passed_on(context),
            )
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or "")

    async def SubmitJob(self, request: rota_pb2.SubmitJobRequest, context: Any) -> rota_pb2.SubmitJobReply:
        try:
            spec = parse_job_json(request.spec_json)
            job_id = validate_job_id(request.id or spec.id or "")
            wait = _hold("wait", request.wait, 0.0)
        except (JobSpecError, ValueError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

        if spec.cron is not None:
            if wait:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "a schedule never ends: submit it without waiting"
                )
            if len(request.spec_json) > MAX_SCHEDULE_BYTES:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a scheduled job file is at most {MAX_SCHEDULE_BYTES // 1024} KiB as JSON "
                    f"(MAX_SCHEDULE_BYTES), this one is {len(request.spec_json)} bytes",
                )
            if len(job_id) > MAX_SCHEDULE_ID:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a schedule's id is at most {MAX_SCHEDULE_ID} characters (its jobs add 17)",
                )

        async def local(rt: LeaderRuntime) -> rota_pb2.SubmitJobReply:
            who = await self._caller(context)
            if spec.cron is not None:
                try:
                    sched, made = await rt.schedules.create(job_id, spec, who.id if who else "")
                except ValueError as e:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
                return rota_pb2.SubmitJobReply(
                    id=sched.id, created=made, schedule_json=json.dumps(sched.doc()).encode()
                )
            refused = rt.jobs.unplaceable(spec)
            if refused and rt.jobs.job(job_id) is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refused)
            jid, created = await rt.jobs.submit(job_id, spec, who.id if who else "")
            if not wait:
                return rota_pb2.SubmitJobReply(id=jid, created=created)
            doc = await self._waited(rt, jid, wait, context)
            return rota_pb2.SubmitJobReply(id=jid, created=created, job_json=doc.json)

        return await self._on_leader("SubmitJob", request, context, local)

    async def _job_or_404(self, job: Any, job_id: str, context: Any, rt: LeaderRuntime) -> Any:
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, rt.jobs.why_missing(job_id))
        return job

    async def GetJob(self, request: rota_pb2.GetJobRequest, context: Any) -> rota_pb2.JsonReply:
        if request.task_offset < 0 or not 0 <= request.task_limit <= MAX_TASK_PAGE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"task_offset must be >= 0 and task_limit from 0 to {MAX_TASK_PAGE}, "
                f"got {request.task_offset} and {request.task_limit}",
            )

        async def local(rt: LeaderRuntime) -> rota_pb2.JsonReply:
            job = await self._job_or_404(rt.jobs.job(request.id), request.id, context, rt)
            return await self._page(
                rt, job, request.task_offset, request.task_limit or MAX_TASK_PAGE, context
            )

        return await self._on_leader("GetJob", request, context, local)

    async def ListJobs(self, request: rota_pb2.ListJobsRequest, context: Any) -> rota_pb2.ListJobsReply:
        state = request.state.upper()
        if state and state not in JOB_STATES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown job state {request.state!r} (one of {', '.join(JOB_STATES)})",
            )
        if not 0 <= request.limit <= MAX_LIST_LIMIT:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"limit must be from 1 to {MAX_LIST_LIMIT} (0: {DEFAULT_LIST_LIMIT}), got {request.limit}",
            )
        limit = request.limit or DEFAULT_LIST_LIMIT

        async def local(rt: LeaderRuntime) -> rota_pb2.ListJobsReply:
            before = None
            if request.before:
                before = rt.jobs.place_of(request.before)
                if before is None:
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND,
                        f"no job {request.before!r} to list from (before names a job list-jobs showed)",
                    )
            jobs, more = await rt.jobs.list_jobs(state, limit, before)
            doc = [job_doc(j) for j in jobs]
            return rota_pb2.ListJobsReply(json=json.dumps(doc).encode(), more=more)

        return await self._on_leader("ListJobs", request, context, local)

    async def _waited(self, rt: LeaderRuntime, job_id: str, hold: float, context: Any) -> rota_pb2.JsonReply:
        """A summary while the job runs after ``hold`` seconds; once it ended, its first page of tasks."""
        job = await self._job_or_404(await rt.jobs.wait_job(job_id, hold), job_id, context, rt)
        if job.state is None:
            return _json(job_doc(job))
        return await self._page(rt, job, 0, MAX_TASK_PAGE, context)

    async def _page(
        self, rt: LeaderRuntime, job: Any, offset: int, limit: int, context: Any
    ) -> rota_pb2.JsonReply:
        """The get-job document with a page of tasks; NOT_FOUND when the job expired meanwhile."""
        blob = await rt.jobs.page_json(job, offset, limit)
        if blob is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, rt.jobs.why_missing(job.id))
        return rota_pb2.JsonReply(json=blob)

    async def WaitJob(self, request: rota_pb2.WaitJobRequest, context: Any) -> rota_pb2.JsonReply:
        try:
            hold = _hold("timeout", request.timeout, 30.0)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

        async def local(rt: LeaderRuntime) -> rota_pb2.JsonReply:
            return await self._waited(rt, request.id, hold, context)

        return await self._on_leader("WaitJob", request, context, local)

    async def CancelJob(self, request: rota_pb2.CancelJobRequest, context: Any) -> rota_pb2.JsonReply:
        async def local(rt: LeaderRuntime) -> rota_pb2.JsonReply:
            who = await self._caller(context)
            if who is not None:
                job = rt.jobs.job(request.id)
                if job is not None and not roles.may_cancel(who.role, who.id, job.owner):
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"job {request.id} was submitted by another token; a {who.role} token cancels only "
                        "its own jobs",
                    )
            job = await self._job_or_404(await rt.jobs.cancel_job(request.id), request.id, context, rt)
            return await self._page(rt, job, 0, MAX_TASK_PAGE, context)

        return await self._on_leader("CancelJob", request, context, local)

    async def WatchEvents(
        self, request: rota_pb2.WatchEventsRequest, context: Any
    ) -> AsyncIterator[rota_pb2.EventBatch]:
        """Served by this master from etcd (events.py), whoever leads."""
        if request.from_revision < 0 or len(request.job_id) > 128:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "from_revision must be >= 0 and job_id a job id"
            )
        if self._event_streams >= events.MAX_STREAMS:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"this master serves {events.MAX_STREAMS} event streams already: try another",
            )
        await self._caller(context)
        self._event_streams += 1
        try:
            start = request.from_revision
            if not start:
                _, now = await self.client.read(keys.HEALTH)
                start = now + 1
            # The cursor first: a client that has received nothing yet still knows where to resume.
            yield rota_pb2.EventBatch(revision=start - 1, changes_json=b"[]")
            try:
                async for batch in self.client.watch(keys.ROOT, start, prefix=True):
                    for revision, changes in events.by_revision(batch, request.job_id):
                        yield rota_pb2.EventBatch(
                            revision=revision, changes_json=json.dumps(changes).encode()
                        )
            except WatchCompacted as e:
                await context.abort(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"etcd's history before revision {e.compact_revision + 1} is compacted (it keeps a minute or two): "
                    "read the state now with get-job or list-jobs, then watch from now",
                )
        finally:
            self._event_streams -= 1

    async def ListSchedules(self, request: rota_pb2.ListSchedulesRequest, context: Any) -> rota_pb2.JsonReply:
        async def local(rt: LeaderRuntime) -> rota_pb2.JsonReply:
            return _json([s.doc() for s in rt.schedules.list()])

        return await self._on_leader("ListSchedules", request, context, local)

    async def UpdateSchedule(
        self, request: rota_pb2.UpdateScheduleRequest, context: Any
    ) -> rota_pb2.JsonReply:
        if request.action not in ("pause", "resume", "delete"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"action must be pause, resume or delete, got {request.action[:40]!r}",
            )

        async def local(rt: LeaderRuntime) -> rota_pb2.JsonReply:
            sched = rt.schedules.get(request.id)
            if sched is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"no schedule {request.id!r} (list-schedules shows them)"
                )
            who = await self._caller(context)
            if who is not None and not roles.may_cancel(who.role, who.id, sched.owner):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"schedule {request.id} was submitted by another token; a {who.role} token changes only "
                    "its own schedules",
                )
            if request.action == "delete":
                await rt.schedules.delete(sched)
            else:
                sched = await rt.schedules.set_paused(sched, request.action == "pause")
            return _json(sched.doc())

        return await self._on_leader("UpdateSchedule", request, context, local)

    async def _caller(self, context: Any) -> Identity | None:
        """Who makes this call: None when this master does not check tokens. A token that no
        longer identifies (revoked since the check let the call in) ends the call, never passes as
        "no tokens"."""
        who = access.caller(self.tokens, context)
        if who is None and self.tokens.enabled:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
        return who

    async def WhoAmI(self, request: rota_pb2.WhoAmIRequest, context: Any) -> rota_pb2.JsonReply:
        who = await self._caller(context)
        return _json(who.doc() if who else {"tokens": False})

    async def _need_tokens(self, context: Any) -> None:
        if not self.tokens.enabled:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this cluster does not check tokens: start its masters with --admin-token-file first "
                "(a token made while anyone may call would let anyone make an admin token)",
            )

    async def CreateToken(
        self, request: rota_pb2.CreateTokenRequest, context: Any
    ) -> rota_pb2.CreateTokenReply:
        await self._need_tokens(context)
        who = await self._caller(context)
        try:
            token, rec = await self.tokens.create(request.role, request.name, who.id if who else "")
        except TokenError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except TooManyTokens as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except NoSpace as e:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"etcd is out of space (NOSPACE alarm): {e}"
            )
        except EtcdError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        log.info(
            "token %s (%s, role %s) created by %s", rec["id"], rec["name"], rec["role"], rec["by"] or "-"
        )
        return rota_pb2.CreateTokenReply(token=str(token), json=json.dumps(rec).encode())

    async def ListTokens(self, request: rota_pb2.ListTokensRequest, context: Any) -> rota_pb2.JsonReply:
        await self._need_tokens(context)
        return _json(self.tokens.list())

    async def RevokeToken(self, request: rota_pb2.RevokeTokenRequest, context: Any) -> rota_pb2.JsonReply:
        await self._need_tokens(context)
        try:
            rec = await self.tokens.revoke(request.id)
        except TokenError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except EtcdError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no token {request.id}")
        log.info("token %s (%s) revoked", request.id, rec["name"] if rec else "")
        return _json(rec)

    # -- membership: any master answers, from etcd (common/membership.py has the checks) ------

    async def _members(self, context: Any, judge: bool = False) -> list[MemberInfo]:
        """Every etcd member with its health. ``judge``: the answer may refuse a change, so a started
        member that did not answer within MEMBER_WAIT is asked once more, longer, before it counts
        as down (a first TLS handshake on a loaded host can take that long)."""
        try:
            members = await self.client.members(timeout=MEMBER_WAIT)
            if judge and any(m.error and m.client_urls for m in members):
                members = await self.client.members(timeout=3 * MEMBER_WAIT)
            return members
        except EtcdError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"etcd: {e}")
            raise  # unreachable: abort raises

    async def _member_docs(self, members: list[MemberInfo]) -> list[dict[str, Any]]:
        try:
            leader = await read_leader(self.client, keys.LEADER, serializable=True)
        except EtcdError:
            leader = self.leadership.leader
        name = leader.name if leader else ""
        return [member_doc(m, name) for m in sorted(members, key=lambda m: (m.name == "", m.name, m.id))]

    async def ListMembers(self, request: rota_pb2.ListMembersRequest, context: Any) -> rota_pb2.JsonReply:
        return _json(await self._member_docs(await self._members(context)))

    async def AddMember(self, request: rota_pb2.AddMemberRequest, context: Any) -> rota_pb2.JsonReply:
        try:
            name = membership.check_name(request.name)
            membership.check_peer_url(request.peer_url)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        members = await self._members(context, judge=True)
        schemes = {u.split("://", 1)[0] for m in members for u in m.peer_urls}
        try:
            url = membership.check_peer_url(request.peer_url, schemes.pop() if len(schemes) == 1 else None)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        # Added, never started, at this very URL: a retry whose first answer was lost. Answer again.
        again = next((m for m in members if not m.started and list(m.peer_urls) == [url]), None)
        if again is not None:
            new_id, after = again.id, members
        else:
            new_id, after = await self._add_member(context, members, name, url)
        cluster = membership.initial_cluster(after, new_id, name)
        log.warning("etcd member %s (%x) added at %s: start its master with --initial-cluster %s "
                    "--initial-cluster-state existing", name, new_id, url, cluster)  # fmt: skip
        added = next(m for m in after if m.id == new_id)
        docs = await self._member_docs(after)
        return _json(
            {
                "added": {**member_doc(added), "name": name},
                "members": docs,
                "initial_cluster": cluster,
                "initial_cluster_state": "existing",
                "flags": membership.master_flags(name, url, cluster),
            }
        )

    async def _add_member(
        self, context: Any, members: list[MemberInfo], name: str, url: str
    ) -> tuple[int, list[MemberInfo]]:
        clash = membership.duplicate(members, name, url)
        if clash:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, clash)
        refused = membership.addition_refusal(members)
        if refused:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refused)
        try:
            return await self.client.member_add([url])
        except MemberExists as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except EtcdUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except EtcdError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"etcd refused the new member: {e}")
        raise AssertionError("unreachable: abort raises")

    async def RemoveMember(self, request: rota_pb2.RemoveMemberRequest, context: Any) -> rota_pb2.JsonReply:
        wanted = request.name.strip()
        if not wanted or len(wanted) > membership.MAX_NAME:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "name a member: its name, or its id as member list shows it"
            )
        members = await self._members(context, judge=True)
        target = membership.find(members, wanted)
        if target is None:
            known = ", ".join(m.name or f"{m.id:x}" for m in members)
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no etcd member {wanted[:80]!r} (members: {known})"
            )
        assert target is not None
        refused = membership.removal_refusal(members, target.id)
        if refused:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{target.name or wanted}: {refused}")
        if target.name == self.name:
            # This master stops once its member is gone, maybe before it could answer or drop its
            # registration: another master does it.
            return await self._elsewhere("RemoveMember", request, context)
        try:
            await self.client.member_remove(target.id)
        except MemberNotFound:
            pass  # removed meanwhile (or our own first try was applied before its answer was lost)
        except EtcdUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except EtcdError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"etcd refused the removal: {e}")
        if target.name:
            try:
                await self.client.delete(keys.master(target.name))
            except EtcdError as e:
                log.warning("member %s removed, but its registration stays: %s", target.name, e)
        log.warning("etcd member %s (%x) removed", target.name or "-", target.id)
        rest = [m for m in members if m.id != target.id]
        return _json({"removed": member_doc(target), "members": await self._member_docs(rest)})

    async def _elsewhere(self, method: str, request: Any, context: Any) -> Any:
        """Pass the call on to another registered master that answers."""
        try:
            registered, _ = await self.client.get_prefix(keys.MASTERS)
        except EtcdError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"etcd: {e}")
        others = [r for r in (json.loads(kv.value) for kv in registered) if r["name"] != self.name]
        failures = []
        for other in others:
            remaining = context.time_remaining()
            try:
                return await getattr(self.peers.stub(other["addr"]), method)(
                    request,
                    timeout=min(remaining if remaining is not None else 30.0, 10.0),
                    metadata=access.passed_on(context),
                )
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    await context.abort(e.code(), e.details() or "")
                failures.append(f"{other['name']}: {e.details() or e.code().name}")
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"{self.name} does not remove its own member and no other master answered "
            f"({'; '.join(failures) or 'none registered'}): ask another master",
        )

    async def ListExecutors(self, request: rota_pb2.ListExecutorsRequest, context: Any) -> rota_pb2.JsonReply:
        async def local(rt: LeaderRuntime) -> rota_pb2.JsonReply:
            return _json([executor_doc(e) for e in sorted(rt.executor_slots(), key=lambda e: e.id)])

        return await self._on_leader("ListExecutors", request, context, local)

    async def _drain(self, method: str, request: Any, context: Any, drain: bool) -> rota_pb2.JsonReply:
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name an executor (its id or its name)")
        timeout: float | None = None
        if drain and request.HasField("timeout"):
            timeout = request.timeout
            if not 0.0 <= timeout <= MAX_DRAIN_TIMEOUT:  # also false for NaN
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"timeout must be between 0 and {MAX_DRAIN_TIMEOUT:g} seconds, got {timeout}",
                )

        async def local(rt: LeaderRuntime) -> rota_pb2.JsonReply:
            rt.check()
            found = await rt.executors.request_drain(request.name, drain, timeout)
            if not found:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"no executor {request.name!r} (by id or name)"
                )
            return _json([executor_doc(e) for e in found])

        return await self._on_leader(method, request, context, local)

    async def DrainExecutor(self, request: rota_pb2.DrainExecutorRequest, context: Any) -> rota_pb2.JsonReply:
        return await self._drain("DrainExecutor", request, context, drain=True)

    async def UndrainExecutor(
        self, request: rota_pb2.UndrainExecutorRequest, context: Any
    ) -> rota_pb2.JsonReply:
        return await self._drain("UndrainExecutor", request, context, drain=False)

    async def LeaseStatus(
        self, request: rota_pb2.LeaseStatusRequest, context: grpc.aio.ServicerContext
    ) -> rota_pb2.LeaseStatusReply:
        """Any master answers from etcd: an executor cut off from its leader must still learn
        whether some leader renews its lease before it fences itself."""
        if request.lease_id <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "lease_id must be positive")
        try:
            ttl = await self.client.time_to_live(request.lease_id)
        except EtcdError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"etcd: {e}")
        return rota_pb2.LeaseStatusReply(ttl=ttl)

    async def Attach(
        self, request_iterator: AsyncIterator[rota_pb2.ExecutorMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rota_pb2.LeaderMessage]:
        """One executor's stream: hello, then heartbeats and reports in; work, cancels and acks out."""
        rt = self.runtime()
        if rt is None or not rt.ready:
            leader = self.leadership.leader
            addr = leader.addr if leader and leader.name != self.name else ""
            context.set_trailing_metadata((("rota-leader", addr),))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.name} is not the leader")
        assert rt is not None
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an executor stream starts with hello")
        assert first is not None
        hello = first.hello
        try:
            admission.check_hello(
                hello.name, hello.addr, hello.slots, hello.keepalive_ttl, hello.kinds, hello.labels,
                len(hello.running), hello.executor_id,
            )  # fmt: skip
        except admission.BadHello as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hello refused: {e}")
        try:
            rt.check()
            link = await rt.executors.attach(first.hello)
        except NoSpace:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "etcd is out of space (NOSPACE alarm): a new executor cannot register until it has room again",
            )
        except (NotReady, EtcdError) as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        reader = asyncio.create_task(self._read_executor(rt, link, request_iterator))
        who = await self._caller(context)
        if who is not None:
            self._streams.setdefault(who.id, set()).add(link)
        try:
            yield rota_pb2.LeaderMessage(
                welcome=rota_pb2.Welcome(executor_id=link.executor_id, lease_id=link.lease_id, ttl=link.ttl)
            )
            while True:
                msg = await link.outbox.get()
                if msg is None or not rt.holds_lease():
                    break
                yield msg
        finally:
            if who is not None:
                self._streams.get(who.id, set()).discard(link)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await rt.executors.detach(link)

    async def _read_executor(
        self, rt: LeaderRuntime, link: ExecutorLink, requests: AsyncIterator[rota_pb2.ExecutorMessage]
    ) -> None:
        try:
            async for msg in requests:
                body = msg.WhichOneof("body")
                if body == "heartbeat":
                    if msg.heartbeat.HasField("credit"):
                        rt.executors.credit(link, msg.heartbeat.credit)
                    rt.executors.leaving(link, msg.heartbeat.leaving)
                    ttl = await rt.executors.heartbeat(link)
                    if ttl == 0:
                        log.info("executor %s: lease expired", link.executor_id)
                        break
                    if ttl > 0:
                        link.send(rota_pb2.LeaderMessage(heartbeat_ack=rota_pb2.HeartbeatAck(ttl=ttl)))
                elif body == "reports":
                    rt.executors.reports(link, msg.reports)
                elif body == "task_call":
                    rt.executors.task_call(link, msg.task_call)
                elif body == "leaving":
                    await rt.executors.leave(link)
                    break
        except grpc.aio.AioRpcError:
            pass
        finally:
            link.close()

"""The Python API of Rota: ``Client`` (blocking) and ``AsyncClient`` (awaitable).

Both take a list of master addresses; any master works, and when one does not
answer the next is tried until ``timeout`` runs out. ``bin/master-client`` is built
on this module, so the CLI and programs share one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from rota.client.errors import AccessDenied, NoMasterReachable, OutOfSpace, RequestError
from rota.client.tasklogs import task_logs as stream_task_logs
from rota.common import rpc, tokens
from rota.common.config import ConfigError, parse_address, split_list
from rota.common.jobspec import MAX_JOB_BYTES, JobSpec, JobSpecError, load_job, validate_job_id
from rota.common.paging import MAX_LIST_LIMIT, MAX_TASK_PAGE
from rota.common.states import TERMINAL
from rota.common.tls import TlsFiles
from rota.protos import rota_pb2, rota_pb2_grpc

DEFAULT_ADDR = "127.0.0.1:10240"
#: How long one master may take to accept a connection before the next is tried.
CONNECT_TIMEOUT = 1.0
#: The least time one call to one master gets when there are others to try (at most half the
#: client's timeout, so that a stalled master never takes all of a short one).
PER_TRY_MIN = 3.0
_RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
#: Calls every master answers itself: no need to look for the leader first.
_ANY_MASTER = {
    "GetMasterInfo", "GetClusterStatus", "WhoAmI", "CreateToken", "ListTokens", "RevokeToken",
    "ListMembers", "AddMember", "RemoveMember",
}  # fmt: skip
T = TypeVar("T")
#: A token for the calls made in this context instead of the client's own: the HTTP API passes on
#: the bearer token of each request it serves this way.
call_token: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_token", default=None)


def resolve_token(token: str | None) -> str | None:
    """The token to send: ``token``, else ``$ROTA_TOKEN``, else the file ``$ROTA_TOKEN_FILE`` names;
    checked, so a typo is a clear error here rather than a refusal from the cluster."""
    if token is None:
        token = os.environ.get("ROTA_TOKEN") or None
        if token is None and os.environ.get("ROTA_TOKEN_FILE"):
            try:
                return str(tokens.read_file(os.environ["ROTA_TOKEN_FILE"]))
            except tokens.BadToken as e:
                raise ConfigError(f"ROTA_TOKEN_FILE: {e}") from None
    if not token:
        return None
    try:
        return str(tokens.parse(token))
    except tokens.BadToken as e:
        raise ConfigError(f"token: {e}") from None


#: Tasks per GetJob page: about 20 ms of the leader's time each (the masters allow twice that).
TASK_PAGE = 5_000
#: How long one WaitJob call may block on the leader before the client asks again.
WAIT_CHUNK = 20.0
#: The shortest hold asked for: a last look at a job whose wait has run out.
MIN_HOLD = 0.001
#: How long a call to one given address is tried again after a refusal: gRPC's longest reconnect
#: backoff here (``common/rpc.py``) and a margin.
RECONNECT_GRACE = 1.5
#: How long a progress display gathers state changes before it asks for fresh counts.
PROGRESS_GATHER = 0.25


def new_job_id(spec: JobSpec) -> str:
    """A fresh id, made by the client so that a retried submission stays one job. A schedule's is
    its name made safe, without a random part: submitting its file again finds it, not a twin."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.name).strip("-.")[:80] or "job"
    return slug if spec.cron is not None else f"{slug}-{uuid.uuid4().hex[:10]}"


def resolve_addresses(addresses: str | Sequence[str] | None) -> list[str]:
    """``A,B,C`` (or a list) to dialable addresses; default ``$ROTA_MASTER_ADDR``, then 127.0.0.1:10240."""
    if addresses is None:
        addresses = os.environ.get("ROTA_MASTER_ADDR") or DEFAULT_ADDR
    items = split_list(addresses)
    if not items:
        raise ConfigError("no master address given")
    return [parse_address(a).dial() for a in items]


def status_to_dict(s: rota_pb2.ClusterStatus) -> dict[str, Any]:
    return {
        "leader": {"name": s.leader_name, "addr": s.leader_addr} if s.leader_name else None,
        "masters": [{"name": m.name, "addr": m.addr, "role": m.role} for m in s.masters],
        "etcd": {
            "endpoints": list(s.etcd.endpoints),
            "healthy": s.etcd.healthy,
            "alarms": [{"member": a.member, "alarm": a.alarm} for a in s.etcd.alarms],
            "members": [
                {
                    "name": m.name,
                    "endpoint": m.endpoint,
                    "db_size": m.db_size if not m.error else None,
                    "db_size_in_use": m.db_size_in_use if not m.error else None,
                    "error": m.error or None,
                }
                for m in s.etcd.members
            ],
            "quota": s.etcd.quota_bytes,
        },
        "executors": s.executors,
    }


def info_to_dict(i: rota_pb2.MasterInfo) -> dict[str, Any]:
    return {
        "name": i.name,
        "addr": i.addr,
        "role": i.role,
        "leader": {"name": i.leader_name, "addr": i.leader_addr} if i.leader_name else None,
        "term": i.term,
        "fenced_rejections": i.fenced_rejections,
        "elections_won": i.elections_won,
        "etcd_txns": i.etcd_txns,
        "etcd_writes": i.etcd_writes,
    }


class AsyncClient:
    """``tls``: the CA, certificate and key to reach masters and executors over mutual TLS;
    ``token``: sent with every call when the cluster checks tokens (default ``$ROTA_TOKEN``, then the
    file ``$ROTA_TOKEN_FILE`` names; ``""`` sends none)."""

    def __init__(
        self,
        addresses: str | Sequence[str] | None = None,
        timeout: float = 10.0,
        token: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.addresses = resolve_addresses(addresses)
        self.timeout = timeout
        self.token = resolve_token(token)
        self.tls = tls
        self._channels = rpc.ChannelPool(tls)
        self._preferred = 0
        self._leader_known = False

    def metadata(self) -> tuple[tuple[str, str], ...]:
        token = call_token.get() or self.token
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _stub(self, addr: str) -> rota_pb2_grpc.MasterStub:
        return rota_pb2_grpc.MasterStub(self._channels.get(addr))

    async def _find_leader(self) -> None:
        """Prefer the leader's address: a follower would only forward each call to it."""
        self._leader_known = True
        try:
            info = await self._call(
                "GetMasterInfo", rota_pb2.MasterInfoRequest(), timeout=min(self.timeout, 2.0)
            )
        except (NoMasterReachable, grpc.aio.AioRpcError):
            return
        if info.role == "leader":
            return
        if info.leader_addr and info.leader_addr in self.addresses:
            self._preferred = self.addresses.index(info.leader_addr)

    async def _call(self, method: str, request: Any, timeout: float | None = None, hold: float = 0.0) -> Any:
        """Call ``method`` on the first master that answers, going round until the deadline.

        ``hold`` is how long the master may keep the call by design (a WaitJob): each try gets that
        on top of its share of the timeout."""
        if not self._leader_known and len(self.addresses) > 1 and method not in _ANY_MASTER:
            await self._find_leader()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        errors: dict[str, str] = {}
        n = len(self.addresses)
        attempt = 0
        first = self._preferred
        while True:
            idx = (first + attempt) % n
            addr = self.addresses[idx]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = "; ".join(f"{a}: {e}" for a, e in errors.items()) or "no attempt"
                raise NoMasterReachable(
                    f"no master reachable at {', '.join(self.addresses)} within {self.timeout:g}s ({detail})"
                )
            stub = self._stub(addr)
            ch = self._channels.get(addr)
            if n > 1 and not await rpc.ready(ch, min(remaining, CONNECT_TIMEOUT)):
                errors[addr] = await rpc.failure(ch, self.tls)
            else:
                try:
                    # Several masters: do not let one that stopped answering eat the whole timeout.
                    per_try = (
                        remaining
                        if n == 1
                        else min(remaining, hold + max(min(PER_TRY_MIN, self.timeout / 2), self.timeout / n))
                    )
                    result = await getattr(stub, method)(request, timeout=per_try, metadata=self.metadata())
                    self._preferred = idx
                    return result
                except grpc.aio.AioRpcError as e:
                    if e.code() in (
                        grpc.StatusCode.INVALID_ARGUMENT,
                        grpc.StatusCode.NOT_FOUND,
                        grpc.StatusCode.FAILED_PRECONDITION,
                    ):
                        raise RequestError(
                            e.details() or "", not_found=e.code() == grpc.StatusCode.NOT_FOUND
                        ) from None
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise OutOfSpace(e.details() or "etcd is out of space") from None
                    if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                        raise AccessDenied(
                            e.details() or e.code().name, e.code() == grpc.StatusCode.UNAUTHENTICATED
                        ) from None
                    if e.code() not in _RETRY:
                        raise
                    errors[addr] = rpc.explain(e.details() or e.code().name, self.tls)
                    self._leader_known = False  # the leader may have moved: look again next time
            if idx == self._preferred:
                # A stalled master keeps its connection up and answers nothing: start the next
                # call elsewhere instead of paying its timeout on every call.
                self._preferred = (idx + 1) % n
            attempt += 1
            if attempt % n == 0:
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def cluster_status(self) -> dict[str, Any]:
        """The dict that ``master-client cluster-status --json`` prints."""
        return status_to_dict(await self._call("GetClusterStatus", rota_pb2.ClusterStatusRequest()))

    async def master_info(self, addr: str | None = None) -> dict[str, Any]:
        """What one master (the first that answers, or ``addr``) says of itself."""
        if addr is not None:
            # A channel to an address that refused a moment ago fails at once until gRPC's reconnect
            # backoff (at most 1 s) is over, even when it listens now: ask again within that time.
            stub = self._stub(parse_address(addr).dial())
            deadline = time.monotonic() + min(self.timeout, RECONNECT_GRACE)
            while True:
                try:
                    return info_to_dict(
                        await stub.GetMasterInfo(rota_pb2.MasterInfoRequest(), timeout=self.timeout)
                    )
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                        raise
                await asyncio.sleep(0.1)
        return info_to_dict(await self._call("GetMasterInfo", rota_pb2.MasterInfoRequest()))

    async def submit_job(
        self, job: str | os.PathLike[str] | dict[str, Any] | JobSpec, job_id: str | None = None
    ) -> dict[str, Any]:
        """Submit a job (a path, TOML text, a dict or a JobSpec); returns {"id", "created"}, and
        for a job file with ``schedule`` also ``"schedule"``: the schedule's document (the id is
        the schedule's; its jobs are made at its fire times).

        The reply comes only once the whole job is committed to etcd. Bad input raises
        scheduler.jobspec.JobSpecError before anything is sent.
        """
        reply = await self._call("SubmitJob", self._submit_request(job, job_id))
        out: dict[str, Any] = {"id": reply.id, "created": reply.created}
        if reply.schedule_json:
            out["schedule"] = json.loads(reply.schedule_json)
        return out

    def _submit_request(
        self, job: str | os.PathLike[str] | dict[str, Any] | JobSpec, job_id: str | None, wait: float = 0.0
    ) -> rota_pb2.SubmitJobRequest:
        spec = job if isinstance(job, JobSpec) else load_job(job)
        jid = validate_job_id(job_id) if job_id else (spec.id or new_job_id(spec))
        blob = json.dumps(spec.to_dict()).encode()
        if len(blob) > MAX_JOB_BYTES:  # the masters refuse it too: say so before sending
            raise JobSpecError(f"oversize job: more than {MAX_JOB_BYTES} bytes as JSON (MAX_JOB_BYTES)")
        return rota_pb2.SubmitJobRequest(spec_json=blob, id=jid, wait=wait)

    async def run_job(
        self,
        job: str | os.PathLike[str] | dict[str, Any] | JobSpec,
        job_id: str | None = None,
        timeout: float | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Submit a job and wait for its end: the get-job dict, as ``wait_job`` returns it.

        The submission itself waits (one call, not two, for a short job); a job still running when
        that hold ends is waited for with ``wait_job``. A retried submission stays one job (the id
        is made here, once).
        """
        chunk = 0.5 if progress else WAIT_CHUNK
        deadline = None if timeout is None else time.monotonic() + timeout
        hold = chunk if timeout is None else min(chunk, max(MIN_HOLD, timeout))
        req = self._submit_request(job, job_id, hold)
        reply = await self._call("SubmitJob", req, timeout=hold + self.timeout, hold=hold)
        doc = json.loads(reply.job_json)
        if doc["state"] in TERMINAL:
            return await self._rest_of_tasks(reply.id, doc)
        if progress:
            progress(doc)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return await self.wait_job(reply.id, left, progress)

    async def _json_call(
        self, method: str, request: Any, timeout: float | None = None, hold: float = 0.0
    ) -> Any:
        return json.loads((await self._call(method, request, timeout, hold)).json)

    async def get_job(
        self, job_id: str, tasks_from: int = 0, task_limit: int | None = None
    ) -> dict[str, Any]:
        """The get-job document with tasks from index ``tasks_from``: ``task_limit`` of them (one call,
        at most MAX_TASK_PAGE), or all the rest, read a page at a time: every call stays small and
        quick however large the job, so a short timeout works and the leader is never held up."""
        if tasks_from < 0:
            raise ValueError(f"tasks_from must be >= 0, got {tasks_from}")
        if task_limit is not None:
            if not 1 <= task_limit <= MAX_TASK_PAGE:
                raise ValueError(f"task_limit must be from 1 to {MAX_TASK_PAGE}, got {task_limit}")
            return await self._json_call(  # type: ignore[no-any-return]
                "GetJob", rota_pb2.GetJobRequest(id=job_id, task_offset=tasks_from, task_limit=task_limit)
            )
        doc: dict[str, Any] = await self._json_call(
            "GetJob", rota_pb2.GetJobRequest(id=job_id, task_offset=tasks_from, task_limit=TASK_PAGE)
        )
        return await self._rest_of_tasks(job_id, doc, tasks_from)

    async def _rest_of_tasks(self, job_id: str, doc: dict[str, Any], tasks_from: int = 0) -> dict[str, Any]:
        """Complete a document that carries the first page of its tasks (from ``tasks_from``)."""
        total = sum(doc["counts"].values())
        tasks: list[dict[str, Any]] = doc["tasks"]
        while tasks_from + len(tasks) < total:
            page = await self._json_call(
                "GetJob",
                rota_pb2.GetJobRequest(id=job_id, task_offset=tasks_from + len(tasks), task_limit=TASK_PAGE),
            )
            if not page["tasks"]:
                break
            tasks.extend(page["tasks"])
            doc.update(state=page["state"], counts=page["counts"])
        return doc

    async def list_jobs(
        self, state: str | None = None, limit: int | None = None, before: str | None = None
    ) -> list[dict[str, Any]]:
        """One page of jobs, oldest first: the newest ``limit`` (default DEFAULT_LIST_LIMIT) of those
        submitted before job ``before`` (the first id of the page before). See list_jobs_page."""
        return (await self.list_jobs_page(state, limit, before))[0]

    async def list_jobs_page(
        self, state: str | None = None, limit: int | None = None, before: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """``list_jobs`` and whether older jobs remain (then pass ``before=page[0]["id"]``)."""
        if limit is not None and not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be from 1 to {MAX_LIST_LIMIT}, got {limit}")
        reply = await self._call(
            "ListJobs", rota_pb2.ListJobsRequest(state=state or "", limit=limit or 0, before=before or "")
        )
        return json.loads(reply.json), reply.more

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self._json_call("CancelJob", rota_pb2.CancelJobRequest(id=job_id))  # type: ignore[no-any-return]

    async def watch_events(
        self, job_id: str = "", from_revision: int = 0, cursor: bool = False
    ) -> AsyncGenerator[tuple[int, list[dict[str, Any]]], None]:
        """Job and task state changes as (revision, changes), from ``from_revision`` (0: from now),
        forever. A stream that breaks (its master died, the network) goes on from another master
        at the revision after the last one received: nothing is lost or repeated. RequestError
        when that history is compacted; NoMasterReachable when no master serves it for ``timeout``.
        ``cursor``: first yield (the revision it starts after, []), where to resume from at once."""
        next_rev = from_revision
        n = len(self.addresses)
        idx = self._preferred
        failed_since: float | None = None
        while True:
            addr = self.addresses[idx % n]
            try:
                call = self._stub(addr).WatchEvents(
                    rota_pb2.WatchEventsRequest(job_id=job_id, from_revision=next_rev),
                    metadata=self.metadata(),
                )
                try:
                    async for batch in call:
                        failed_since = None
                        next_rev = batch.revision + 1
                        changes = json.loads(batch.changes_json)
                        if changes or cursor:
                            cursor = False
                            yield batch.revision, changes
                finally:
                    call.cancel()  # a stream given up (aclose) frees its place on the master now
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.OUT_OF_RANGE,
                    grpc.StatusCode.UNIMPLEMENTED,
                ):
                    raise RequestError(e.details() or code.name) from None
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    raise AccessDenied(
                        e.details() or code.name, code == grpc.StatusCode.UNAUTHENTICATED
                    ) from None
            now = time.monotonic()
            failed_since = failed_since or now
            if now - failed_since > self.timeout:
                raise NoMasterReachable(f"no master served the event stream within {self.timeout:g}s")
            idx += 1
            await asyncio.sleep(0.1 if idx % n == 0 else 0.0)

    async def list_schedules(self) -> list[dict[str, Any]]:
        return await self._json_call("ListSchedules", rota_pb2.ListSchedulesRequest())  # type: ignore[no-any-return]

    async def update_schedule(self, schedule_id: str, action: str) -> dict[str, Any]:
        """``action``: "pause", "resume" or "delete"; the schedule's document after it (delete: before)."""
        request = rota_pb2.UpdateScheduleRequest(id=schedule_id, action=action)
        return await self._json_call("UpdateSchedule", request)  # type: ignore[no-any-return]

    async def list_executors(self) -> list[dict[str, Any]]:
        return await self._json_call("ListExecutors", rota_pb2.ListExecutorsRequest())  # type: ignore[no-any-return]

    async def drain_executor(self, name: str, timeout: float | None = None) -> list[dict[str, Any]]:
        """Place no more work on the executor of this id (or every executor of this name): it hands
        back its queued tasks and lets running ones finish within ``timeout`` seconds (default: its
        own --drain-timeout), then hands back the rest. The list-executors dicts of those named."""
        request = rota_pb2.DrainExecutorRequest(name=name)
        if timeout is not None:
            request.timeout = timeout
        return await self._json_call("DrainExecutor", request)  # type: ignore[no-any-return]

    async def undrain_executor(self, name: str) -> list[dict[str, Any]]:
        """Let drained executors take work again; the list-executors dicts of those named."""
        return await self._json_call("UndrainExecutor", rota_pb2.UndrainExecutorRequest(name=name))  # type: ignore[no-any-return]

    async def wait_job(
        self,
        job_id: str,
        timeout: float | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """The get-job dict once the job has ended; TimeoutError after ``timeout`` seconds.

        Survives leader changes: each wait is a bounded call, repeated on whichever master answers.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            # A cluster without the event stream (or one whose history is gone) falls back to looking.
            with contextlib.suppress(RequestError, NoMasterReachable):
                return await self._wait_on_events(job_id, deadline, progress)
        chunk = 0.5 if progress else WAIT_CHUNK
        while True:
            # Never 0: the masters read a hold of 0 as their default of 30 s.
            left = chunk if deadline is None else min(chunk, max(MIN_HOLD, deadline - time.monotonic()))
            # A summary (counts, no tasks) until the job ends; then the document with its first
            # page of tasks, once.
            doc = await self._json_call(
                "WaitJob",
                rota_pb2.WaitJobRequest(id=job_id, timeout=left),
                timeout=left + self.timeout,
                hold=left,
            )
            if doc["state"] in TERMINAL:
                return await self._rest_of_tasks(job_id, doc)
            if progress:
                progress(doc)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {doc['state']} after {timeout:g}s")

    async def _wait_on_events(
        self, job_id: str, deadline: float | None, progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """wait_job with a progress callback: a fresh summary after each of the job's state changes
        (gathered for PROGRESS_GATHER), so a bar moves when tasks do, not on a timer."""
        events = self.watch_events(job_id, cursor=True)
        try:
            left = None if deadline is None else max(MIN_HOLD, deadline - time.monotonic())
            try:  # the stream is open: no change from here on is missed
                await asyncio.wait_for(anext(events), left)
            except asyncio.TimeoutError:
                raise NoMasterReachable("no master opened the event stream in time") from None
            while True:
                doc = await self._json_call(
                    "WaitJob",
                    rota_pb2.WaitJobRequest(id=job_id, timeout=MIN_HOLD),
                    timeout=self.timeout,
                    hold=MIN_HOLD,
                )
                if doc["state"] in TERMINAL:
                    return await self._rest_of_tasks(job_id, doc)
                progress(doc)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.wait_for(anext(events), left)
                except asyncio.TimeoutError:  # not the builtin before Python 3.11
                    raise TimeoutError(f"job {job_id} still {doc['state']} after its timeout") from None
                await asyncio.sleep(PROGRESS_GATHER)
        finally:
            await events.aclose()

    def task_logs(
        self,
        job_id: str,
        task: str | None = None,
        follow: bool = False,
        on_task: Callable[[dict[str, Any]], None] | None = None,
    ) -> AsyncGenerator[tuple[str, bytes], None]:
        """A task's output, fetched from the executor that ran it: ``(stream, data)`` pairs, stream being
        "stdout", "stderr" or "notice" (text for a human). ``task`` is a name, an id or an index; it may
        be None when the job has one task. With ``follow``, it waits for the task to start and streams
        until the attempt ends. RequestError when there is nothing to read, with the reason."""

        return stream_task_logs(self, job_id, task, follow, on_task)

    async def whoami(self) -> dict[str, Any]:
        """The caller's token as the cluster sees it: ``{"id", "role", "name"}``, or
        ``{"tokens": False}`` when the cluster does not check tokens."""
        return await self._json_call("WhoAmI", rota_pb2.WhoAmIRequest())  # type: ignore[no-any-return]

    async def create_token(self, role: str, name: str) -> tuple[str, dict[str, Any]]:
        """A new token of ``role`` (admin, submit, read, executor): its text, shown only now, and its record."""
        reply = await self._call("CreateToken", rota_pb2.CreateTokenRequest(role=role, name=name))
        return reply.token, json.loads(reply.json)

    async def list_tokens(self) -> list[dict[str, Any]]:
        return await self._json_call("ListTokens", rota_pb2.ListTokensRequest())  # type: ignore[no-any-return]

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        return await self._json_call("RevokeToken", rota_pb2.RevokeTokenRequest(id=token_id))  # type: ignore[no-any-return]

    async def list_members(self) -> list[dict[str, Any]]:
        """The etcd members of the masters: ``{"id" (hex), "name", "peer_urls", "client_urls",
        "started", "healthy", "error", "raft_leader", "leader", "learner"}`` each (admin)."""
        return await self._json_call("ListMembers", rota_pb2.ListMembersRequest())  # type: ignore[no-any-return]

    async def add_member(self, name: str, peer_url: str) -> dict[str, Any]:
        """Add a master's etcd member (admin): ``{"added", "members", "initial_cluster",
        "initial_cluster_state", "flags"}``, ``flags`` being what to start the new master with
        (besides its own addresses, TLS files and token). RequestError for a bad or taken name or
        URL, or when the cluster could lose its quorum while the new member starts."""
        request = rota_pb2.AddMemberRequest(name=name, peer_url=peer_url)
        return await self._json_call("AddMember", request)  # type: ignore[no-any-return]

    async def remove_member(self, name: str) -> dict[str, Any]:
        """Remove a member by name or hex id (admin), and its master's registration: ``{"removed",
        "members"}``. RequestError (``not_found`` for an unknown member) when it is the last one or
        the members left that answer could not make a quorum."""
        return await self._json_call("RemoveMember", rota_pb2.RemoveMemberRequest(name=name))  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._channels.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Client:
    """Blocking face of AsyncClient, running it on a private event loop."""

    def __init__(
        self,
        addresses: str | Sequence[str] | None = None,
        timeout: float = 10.0,
        token: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = AsyncClient(addresses, timeout, token, tls)

    @property
    def addresses(self) -> list[str]:
        return self._async.addresses

    def _run(self, make: Callable[[], Awaitable[T]]) -> T:
        return self._loop.run_until_complete(make())  # type: ignore[arg-type]

    def cluster_status(self) -> dict[str, Any]:
        return self._run(self._async.cluster_status)

    def master_info(self, addr: str | None = None) -> dict[str, Any]:
        return self._run(lambda: self._async.master_info(addr))

    def submit_job(
        self, job: str | os.PathLike[str] | dict[str, Any] | JobSpec, job_id: str | None = None
    ) -> dict[str, Any]:
        return self._run(lambda: self._async.submit_job(job, job_id))

    def run_job(
        self,
        job: str | os.PathLike[str] | dict[str, Any] | JobSpec,
        job_id: str | None = None,
        timeout: float | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        return self._run(lambda: self._async.run_job(job, job_id, timeout, progress))

    def get_job(self, job_id: str, tasks_from: int = 0, task_limit: int | None = None) -> dict[str, Any]:
        return self._run(lambda: self._async.get_job(job_id, tasks_from, task_limit))

    def list_jobs(
        self, state: str | None = None, limit: int | None = None, before: str | None = None
    ) -> list[dict[str, Any]]:
        return self._run(lambda: self._async.list_jobs(state, limit, before))

    def list_jobs_page(
        self, state: str | None = None, limit: int | None = None, before: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        return self._run(lambda: self._async.list_jobs_page(state, limit, before))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._run(lambda: self._async.cancel_job(job_id))

    def watch_events(
        self, job_id: str = "", from_revision: int = 0, cursor: bool = False
    ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """See AsyncClient.watch_events; each revision's changes are yielded as soon as they arrive."""
        return self._pull(self._async.watch_events(job_id, from_revision, cursor))

    def list_schedules(self) -> list[dict[str, Any]]:
        return self._run(lambda: self._async.list_schedules())

    def update_schedule(self, schedule_id: str, action: str) -> dict[str, Any]:
        return self._run(lambda: self._async.update_schedule(schedule_id, action))

    def whoami(self) -> dict[str, Any]:
        return self._run(self._async.whoami)

    def create_token(self, role: str, name: str) -> tuple[str, dict[str, Any]]:
        return self._run(lambda: self._async.create_token(role, name))

    def list_tokens(self) -> list[dict[str, Any]]:
        return self._run(self._async.list_tokens)

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._run(lambda: self._async.revoke_token(token_id))

    def list_executors(self) -> list[dict[str, Any]]:
        return self._run(self._async.list_executors)

    def list_members(self) -> list[dict[str, Any]]:
        return self._run(self._async.list_members)

    def add_member(self, name: str, peer_url: str) -> dict[str, Any]:
        return self._run(lambda: self._async.add_member(name, peer_url))

    def remove_member(self, name: str) -> dict[str, Any]:
        return self._run(lambda: self._async.remove_member(name))

    def drain_executor(self, name: str, timeout: float | None = None) -> list[dict[str, Any]]:
        return self._run(lambda: self._async.drain_executor(name, timeout))

    def undrain_executor(self, name: str) -> list[dict[str, Any]]:
        return self._run(lambda: self._async.undrain_executor(name))

    def wait_job(
        self,
        job_id: str,
        timeout: float | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        return self._run(lambda: self._async.wait_job(job_id, timeout, progress))

    def task_logs(
        self,
        job_id: str,
        task: str | None = None,
        follow: bool = False,
        on_task: Callable[[dict[str, Any]], None] | None = None,
    ) -> Iterator[tuple[str, bytes]]:
        """See AsyncClient.task_logs; each pair is yielded as soon as it arrives."""
        return self._pull(self._async.task_logs(job_id, task, follow, on_task))

    def _pull(self, items: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator's items, each as soon as it arrives, on this client's loop."""
        step: asyncio.Future[T] | None = None
        try:
            while True:
                step = asyncio.ensure_future(items.__anext__(), loop=self._loop)
                try:
                    yield self._loop.run_until_complete(step)
                except StopAsyncIteration:
                    return
        finally:
            # A Ctrl-C lands in the middle of a step: cancel it, so the stream is closed.
            if not self._loop.is_closed():
                if step is not None and not step.done():
                    step.cancel()
                    with contextlib.suppress(BaseException):
                        self._loop.run_until_complete(step)
                self._loop.run_until_complete(items.aclose())  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._loop.is_closed():
            return
        closing = self._async.close()
        try:
            self._loop.run_until_complete(closing)
        except BaseException:
            # Not runnable here (a client collected while another event loop runs): say nothing
            # of a coroutine never awaited; the caller sees the error.
            closing.close()
            raise
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

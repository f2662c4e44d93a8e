"""The master's HTTP JSON API (``/api/v1``, described in ``scheduler/openapi.yaml``) and dashboard.

A thin adapter over the master's own gRPC service: every call goes through the same
``AsyncClient`` that ``master-client`` uses, aimed at this master, which answers or
forwards to the leader (promise 7). So the HTTP API works on any master and behaves
exactly like the CLI: the same validation, the same errors.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from rota.client.api import AsyncClient, NoMasterReachable, OutOfSpace, RequestError, call_token
from rota.client.errors import AccessDenied
from rota.common import formats, tokens
from rota.common.jobspec import (
    MAX_JOB_BYTES,
    JobSpec,
    JobSpecError,
    parse_job_json,
    parse_job_text,
    validate_job_id,
)
from rota.common.paging import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_TASK_PAGE
from rota.common.tls import TlsFiles
from rota.scheduler import http_guard

HERE = Path(__file__).parent
DASHBOARD = HERE / "dashboard"
OPENAPI = HERE / "openapi.yaml"
BODY_SOURCE = "<request body>"
#: The most of each stream one logs request returns; master-client logs reads everything.
LOG_CAP = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadQuery(ValueError):
    """A query parameter out of its range: a 400 naming it."""


def int_query(request: web.Request, name: str, low: int, high: int, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise BadQuery(f"{name} must be from {low} to {high}, got {value}")
    return value


def next_link(request: web.Request, **changes: str | int) -> dict[str, str]:
    """A ``Link: <...>; rel="next"`` header (RFC 8288) to the next page, same query otherwise."""
    query = dict(request.query)
    query.update({k: str(v) for k, v in changes.items()})
    return {"Link": f'<{request.rel_url.with_query(query)}>; rel="next"'}


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def guard(names: frozenset[str]) -> Any:
    """The middleware that refuses cross-site writes and foreign Host names (``http_guard``)."""

    @web.middleware
    async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = http_guard.refusal(
            request.method,
            request.path,
            request.host,
            request.headers.get("Origin"),
            request.headers.get("Sec-Fetch-Site"),
            names,
        )
        if refused is not None:
            return error(*refused)
        return await handler(request)

    return _guard


@web.middleware
async def _bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Pass the request's bearer token on to the gRPC service, which checks it; without one the
    call goes out with none (never with a token of the master's own)."""
    header = request.headers.get("Authorization")
    token = None
    if header is not None:
        scheme, _, text = header.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise tokens.BadToken("the Authorization header must read 'Bearer <token>'")
            token = str(tokens.parse(text))
        except tokens.BadToken as e:
            raise AccessDenied(str(e), unauthenticated=True) from None
    reset = call_token.set(token)
    try:
        return await handler(request)
    finally:
        call_token.reset(reset)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map what the client layer raises to HTTP statuses, with the message as ``{"error": ...}``."""
    try:
        return await handler(request)
    except (JobSpecError, BadQuery) as e:
        return error(400, str(e))
    except UnsupportedType as e:
        return error(415, str(e))
    except RequestError as e:
        return error(404 if e.not_found else 400, str(e))
    except NoMasterReachable as e:
        return error(503, f"no leader reachable: {e}")
    except OutOfSpace as e:
        return error(507, str(e))
    except AccessDenied as e:
        if e.unauthenticated:
            response = error(401, str(e))
            response.headers["WWW-Authenticate"] = 'Bearer realm="rota"'
            return response
        return error(403, str(e))
    except TimeoutError as e:
        return error(504, str(e) or "timed out")
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type != "application/json":
            return error(e.status, e.reason)
        raise


class UnsupportedType(ValueError):
    """A job posted as a type other than JSON or TOML: 415."""


def parse_job_body(body: bytes, content_type: str) -> JobSpec:
    """A job from a request body, as its Content-Type says: JSON or TOML, nothing else (a page on
    another site can post text/plain without asking first, so that is never read as a job)."""
    refused = http_guard.job_type_refusal(content_type)
    if refused:
        raise UnsupportedType(refused)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise JobSpecError(f"{BODY_SOURCE}: not UTF-8 text") from None
    if not text.strip():
        raise JobSpecError(f"{BODY_SOURCE}: empty; send a job as TOML or JSON")
    if content_type == "application/json":
        return parse_job_json(body, BODY_SOURCE)
    if content_type == "application/yaml":
        if len(body) > MAX_JOB_BYTES:
            raise JobSpecError(
                f"{BODY_SOURCE}: oversize job: more than {MAX_JOB_BYTES} bytes (MAX_JOB_BYTES)"
            )
        try:
            return JobSpec.from_dict(formats.parse(text, "YAML"), BODY_SOURCE)
        except formats.FormatError as e:
            raise JobSpecError(f"{BODY_SOURCE}: {e}") from None
    return parse_job_text(text, BODY_SOURCE)


class HttpApi:
    def __init__(
        self,
        grpc_addr: str,
        name: str,
        names: frozenset[str] = frozenset(),
        timeout: float = 10.0,
        tls: TlsFiles | None = None,
    ) -> None:
        self.client = AsyncClient(grpc_addr, timeout=timeout, token="", tls=tls)
        self.name = name
        self.names = names or http_guard.own_names()

    def install(self, app: web.Application) -> None:
        app.middlewares.append(guard(self.names))
        app.middlewares.append(_errors)
        app.middlewares.append(_bearer)
        r = app.router
        r.add_get("/api/v1/cluster", self.cluster)
        r.add_get("/api/v1/executors", self.executors)
        r.add_get("/api/v1/jobs", self.list_jobs)
        r.add_post("/api/v1/jobs", self.submit_job)
        r.add_get("/api/v1/jobs/{id}", self.get_job)
        r.add_post("/api/v1/jobs/{id}/cancel", self.cancel_job)
        r.add_get("/api/v1/jobs/{id}/tasks/{task}/logs", self.task_logs)
        r.add_post("/api/v1/tasks", self.submit_task)
        r.add_get("/api/v1/schedules", self.list_schedules)
        r.add_get("/api/v1/events", self.events)
        r.add_post("/api/v1/schedules/{id}/pause", self.pause_schedule)
        r.add_post("/api/v1/schedules/{id}/resume", self.resume_schedule)
        r.add_delete("/api/v1/schedules/{id}", self.delete_schedule)
        r.add_get("/api/v1/openapi.yaml", self.openapi)
        r.add_get("/", self.dashboard)
        r.add_static("/static/", DASHBOARD, follow_symlinks=False)
        app.on_cleanup.append(self._close)

    async def _close(self, app: web.Application) -> None:
        await self.client.close()

    async def cluster(self, request: web.Request) -> web.Response:
        doc = await self.client.cluster_status()
        doc["answered_by"] = self.name
        return web.json_response(doc)

    async def executors(self, request: web.Request) -> web.Response:
        return web.json_response(await self.client.list_executors())

    async def list_jobs(self, request: web.Request) -> web.Response:
        """A page of jobs, as list-jobs prints it; a Link header leads to older ones."""
        # The state is checked where the CLI's is: by the gRPC service, as INVALID_ARGUMENT (400).
        limit = int_query(request, "limit", 1, MAX_LIST_LIMIT, DEFAULT_LIST_LIMIT)
        docs, more = await self.client.list_jobs_page(
            request.query.get("state") or None, limit, request.query.get("before") or None
        )
        headers = next_link(request, before=docs[0]["id"], limit=limit) if more and docs else None
        return web.json_response(docs, headers=headers)

    async def submit_job(self, request: web.Request) -> web.Response:
        spec = parse_job_body(await request.read(), request.content_type)
        job_id = request.query.get("id")
        if job_id is not None:
            validate_job_id(job_id)
        reply = await self.client.submit_job(spec, job_id=job_id)
        return web.json_response(reply, status=201 if reply["created"] else 200)

    async def get_job(self, request: web.Request) -> web.Response:
        """The job with a page of its tasks (``tasks_from``, ``task_limit``); a Link header leads
        to the next page."""
        tasks_from = int_query(request, "tasks_from", 0, 2**31 - 1, 0)
        limit = int_query(request, "task_limit", 1, MAX_TASK_PAGE, MAX_TASK_PAGE)
        doc = await self.client.get_job(request.match_info["id"], tasks_from, limit)
        end = tasks_from + len(doc["tasks"])
        more = end < sum(doc["counts"].values())
        headers = next_link(request, tasks_from=end, task_limit=limit) if more else None
        return web.json_response(doc, headers=headers)

    async def cancel_job(self, request: web.Request) -> web.Response:
        return web.json_response(await self.client.cancel_job(request.match_info["id"]))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one ``changes`` event per etcd revision, its id the revision; a
        browser that reconnects sends Last-Event-ID and goes on from there. The first event,
        ``cursor``, has no changes: its id is where the stream starts."""
        job_id = request.query.get("job") or ""
        if job_id:
            validate_job_id(job_id)
        start = int_query(request, "from", 0, 2**62, 0)
        last = request.headers.get("Last-Event-ID", "")
        if last:
            if not last.isdigit() or len(last) > 19:
                raise BadQuery(f"Last-Event-ID must be a revision (a whole number), got {last[:40]!r}")
            start = int(last) + 1
        batches = self.client.watch_events(job_id, start, cursor=True)
        first = await anext(batches)  # errors (a compacted revision, a refused token) still get a 4xx
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        await resp.write(f"id: {first[0]}\nevent: cursor\ndata: []\n\n".encode())
        try:
            async for revision, changes in batches:
                await resp.write(f"id: {revision}\nevent: changes\ndata: {json.dumps(changes)}\n\n".encode())
        except (ConnectionResetError, NoMasterReachable):
            pass
        finally:
            await batches.aclose()  # type: ignore[attr-defined]
        return resp

    async def submit_task(self, request: web.Request) -> web.Response:
        """TaskAndGo's submit shape, ``{"task_id", "priority", "data": "python:..." | "go:..."}``:
        a one-task job whose id is the task_id. A task_id that exists is refused (409), as there."""
        if request.content_type != "application/json":
            raise UnsupportedType(
                f"a task is posted as application/json, not {request.content_type or 'no type'}"
            )
        raw = await request.read()
        if len(raw) > MAX_JOB_BYTES:
            raise JobSpecError(f"{BODY_SOURCE}: oversize task: more than {MAX_JOB_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise JobSpecError(f"{BODY_SOURCE}: invalid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise JobSpecError(f"{BODY_SOURCE}: a task is a JSON object with task_id and data")
        unknown = sorted(set(doc) - {"task_id", "priority", "data"})
        if unknown:
            raise JobSpecError(f"{BODY_SOURCE}: {unknown[0]}: unknown key (expected task_id, priority, data)")
        if "task_id" not in doc or "data" not in doc:
            raise JobSpecError(f"{BODY_SOURCE}: {'task_id' if 'task_id' not in doc else 'data'}: missing")
        task_id = validate_job_id(doc["task_id"])
        job: dict[str, Any] = {
            "name": task_id,
            "id": task_id,
            "task": [{"name": "task", "data": doc["data"]}],
        }
        if doc.get("priority") is not None:
            job["priority"] = doc["priority"]
        spec = JobSpec.from_dict(job, BODY_SOURCE)
        reply = await self.client.submit_job(spec, job_id=task_id)
        if not reply["created"]:
            return error(409, f"task {task_id!r} exists already (a task_id is submitted once)")
        return web.json_response(reply, status=201)

    async def list_schedules(self, request: web.Request) -> web.Response:
        return web.json_response(await self.client.list_schedules())

    async def pause_schedule(self, request: web.Request) -> web.Response:
        return web.json_response(await self.client.update_schedule(request.match_info["id"], "pause"))

    async def resume_schedule(self, request: web.Request) -> web.Response:
        return web.json_response(await self.client.update_schedule(request.match_info["id"], "resume"))

    async def delete_schedule(self, request: web.Request) -> web.Response:
        return web.json_response(await self.client.update_schedule(request.match_info["id"], "delete"))

    async def task_logs(self, request: web.Request) -> web.Response:
        """Output of a task's latest attempt so far, fetched from its executor (master-client logs)."""
        job_id, task = request.match_info["id"], request.match_info["task"]
        out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        notices: list[str] = []
        seen: dict[str, Any] = {}
        truncated = False
        async for stream, data in self.client.task_logs(job_id, task, on_task=seen.update):
            if stream == "notice":
                notices.append(data.decode("utf-8", "replace"))
            elif len(out[stream]) < LOG_CAP:
                out[stream] += data[: LOG_CAP - len(out[stream])]
                truncated = truncated or len(out[stream]) == LOG_CAP
            else:
                truncated = True
        return web.json_response(
            {
                "job": job_id,
                "task": seen.get("id"),
                "name": seen.get("name"),
                "attempt": seen.get("attempt"),
                "executor": seen.get("executor"),
                "stdout": out["stdout"].decode("utf-8", "replace"),
                "stderr": out["stderr"].decode("utf-8", "replace"),
                "notices": notices,
                "truncated": truncated,
            }
        )

    async def openapi(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})

    async def dashboard(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(DASHBOARD / "index.html", headers={"Cache-Control": "no-cache"})


def install(
    app: web.Application,
    grpc_addr: str,
    name: str,
    names: frozenset[str] = frozenset(),
    tls: TlsFiles | None = None,
) -> None:
    HttpApi(grpc_addr, name, names, tls=tls).install(app)

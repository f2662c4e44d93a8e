"""``master-client logs``: find the executor that ran a task and stream the task's output from there.

Output never passes through the masters or etcd, where it would cost quorum writes: the job document
names the executor of the task's latest attempt, list-executors gives its address, and that executor's
TaskLogs RPC serves the files it keeps (executor/tasklogs.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from rota.client.errors import AccessDenied, RequestError
from rota.common import rpc
from rota.common.states import ACTIVE, TERMINAL
from rota.common.tls import TlsFiles
from rota.protos import rota_pb2, rota_pb2_grpc


class Lookup(Protocol):
    """What finding a task's executor needs of a client (AsyncClient has it)."""

    timeout: float
    #: The certificate shown to executors (mutual TLS), or None for plain channels.
    tls: TlsFiles | None

    async def get_job(
        self, job_id: str, tasks_from: int = 0, task_limit: int | None = None
    ) -> dict[str, Any]: ...

    async def list_executors(self) -> list[dict[str, Any]]: ...

    def metadata(self) -> tuple[tuple[str, str], ...]: ...


#: A job with more tasks than this lists only the first ones in an error message.
MAX_NAMES = 20
#: How often ``--follow`` looks whether a pending task has started.
START_POLL = 0.5
#: The leader names the executor a moment before the dispatch reaches it: NOT_FOUND is retried this long.
DISPATCH_GRACE = 3.0


def task_names(doc: dict[str, Any]) -> str:
    names = [t["name"] for t in doc["tasks"][:MAX_NAMES]]
    more = len(doc["tasks"]) - len(names)
    return ", ".join(names) + (f" ... and {more} more" if more > 0 else "")


def pick_task(doc: dict[str, Any], task: str | None) -> dict[str, Any]:
    """The task of a get-job document that ``task`` names: its id (JOB/N), its index N, or its name.

    Without ``task`` the job must have exactly one. Errors name the job's tasks, so the next try works.
    """
    tasks = doc["tasks"]
    if task is None:
        if len(tasks) == 1:
            return tasks[0]  # type: ignore[no-any-return]
        raise RequestError(f"job {doc['id']} has {len(tasks)} tasks; name one of: {task_names(doc)}")
    wanted_id = task if "/" in task else f"{doc['id']}/{task}" if task.isdigit() else None
    for t in tasks:
        if t["id"] == wanted_id:
            return t  # type: ignore[no-any-return]
    for t in tasks:
        if t["name"] == task:
            return t  # type: ignore[no-any-return]
    raise RequestError(f"job {doc['id']} has no task {task!r}; its tasks: {task_names(doc)}", not_found=True)


async def find_task(client: Lookup, job_id: str, task: str | None) -> dict[str, Any]:
    """``pick_task`` that reads one task, not the whole job, when ``task`` is an index or an id."""
    index = task.rpartition("/")[2] if task and task.startswith(f"{job_id}/") else task
    if index and index.isdigit():
        doc = await client.get_job(job_id, int(index), 1)
        if not doc["tasks"]:
            total = sum(doc["counts"].values())
            raise RequestError(
                f"job {job_id} has no task {task!r}: its {total} tasks are numbered 0 to {total - 1}",
                not_found=True,
            )
        return pick_task(doc, task)
    return pick_task(await client.get_job(job_id), task)


def task_index(t: dict[str, Any]) -> int:
    return int(t["id"].rsplit("/", 1)[1])


def describe(t: dict[str, Any]) -> str:
    return f"task {t['id']} ({t['name']})"


async def task_logs(
    client: Lookup,
    job_id: str,
    task: str | None = None,
    follow: bool = False,
    on_task: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncGenerator[tuple[str, bytes], None]:
    """Yield ``(stream, data)`` of the task's latest attempt: stream is "stdout" or "stderr", or "notice"
    (UTF-8 text for a human: why nothing flows, or what is awaited). With ``follow``, wait for a pending
    task to start, then stream until the attempt ends. ``on_task`` gets the task's get-job entry, plus the
    executor's "addr", once it is known. RequestError when there is nothing to read, and why."""
    announced_wait = False
    grace_until: float | None = None
    while True:
        t = await find_task(client, job_id, task)
        if t["attempt"] == 0 or not t["executor"]:
            if t["state"] in TERMINAL:
                raise RequestError(f"{describe(t)} never ran: it was {t['state']} before it started")
            if not follow:
                raise RequestError(f"{describe(t)} has not started yet ({t['state']}); --follow waits for it")
            if not announced_wait:
                announced_wait = True
                yield "notice", f"{describe(t)} is {t['state']}: waiting for it to start".encode()
            await asyncio.sleep(START_POLL)
            continue
        ex = await _executor(client, t)
        if on_task is not None:
            on_task({**t, "addr": ex["addr"]})
        sent = False
        try:
            async for item in _read(ex, t, follow, client.timeout, client.tls, client.metadata()):
                sent = True
                yield item
            return
        except _NotHere as exc:
            grace_until = grace_until or time.monotonic() + DISPATCH_GRACE
            if sent or t["state"] not in ACTIVE or time.monotonic() > grace_until:
                raise RequestError(f"executor {ex['name']} ({ex['addr']}): {exc}") from None
            await asyncio.sleep(0.2)


class _NotHere(Exception):
    """The executor holds no such attempt; maybe only not yet."""


async def _executor(client: Lookup, t: dict[str, Any]) -> dict[str, Any]:
    for ex in await client.list_executors():
        if ex["id"] == t["executor"]:
            return ex
    raise RequestError(
        f"executor {t['executor']}, which ran attempt {t['attempt']} of {describe(t)}, has left the "
        "cluster; its logs went with it"
    )


async def _read(
    ex: dict[str, Any],
    t: dict[str, Any],
    follow: bool,
    connect_timeout: float,
    tls: TlsFiles | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> AsyncIterator[tuple[str, bytes]]:
    where = f"executor {ex['name']} at {ex['addr']}"
    job_id = t["id"].rsplit("/", 1)[0]
    channel = rpc.channel(ex["addr"], tls)
    try:
        if not await rpc.ready(channel, connect_timeout):
            raise RequestError(
                f"{where}, which ran attempt {t['attempt']} of {describe(t)}, does not answer "
                f"({await rpc.failure(channel, tls)}); its logs are out of reach"
            )
        request = rota_pb2.TaskLogsRequest(
            job_id=job_id, index=task_index(t), attempt=t["attempt"], follow=follow
        )
        call = rota_pb2_grpc.ExecutorStub(channel).TaskLogs(request, metadata=metadata)
        try:
            async for chunk in call:
                if chunk.notice:
                    yield "notice", chunk.notice.encode()
                elif chunk.data:
                    yield ("stderr" if chunk.stream == rota_pb2.LogChunk.STDERR else "stdout"), chunk.data
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise _NotHere(e.details()) from None
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise RequestError(f"{where}: {e.details()}") from None
            if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise AccessDenied(
                    f"{where}: {e.details()}", e.code() == grpc.StatusCode.UNAUTHENTICATED
                ) from None
            raise RequestError(
                f"lost {where} while reading {describe(t)}: {e.details() or e.code().name}"
            ) from None
        finally:
            call.cancel()
    finally:
        await channel.close()

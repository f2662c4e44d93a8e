"""What every dataflow task does the same way: die with its executor, call the task SDK without
blocking its event loop, find a binlog, meet the others at the end."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
import traceback
from typing import Any

from rota import task as sdk
from rota.dataflow.config import Config

#: Barrier every task of the job reaches once its part is durable; after it nothing is needed.
FINAL_BARRIER = "done"
#: gRPC channel options: a peer that vanishes without a reset is noticed within seconds.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def die_with_parent() -> None:
    """SIGKILL this process when its executor dies: a task outliving a killed executor would go on
    writing beside its own next attempt (Linux; elsewhere the attempt's fencing still holds)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


def shard() -> int:
    return int(os.environ.get("ROTA_SHARD_INDEX", "0"))


def binlog_endpoint(index: int) -> str:
    return f"binlog-shard{index}.feed"


#: An attempt may have 4 task calls in flight at once (the executor refuses more): keep one spare.
_calls: asyncio.Semaphore | None = None


async def call(fn: Any, *args: Any) -> Any:
    """A blocking SDK call, off the event loop."""
    global _calls
    if _calls is None:
        _calls = asyncio.Semaphore(3)
    async with _calls:
        return await asyncio.to_thread(fn, *args)


async def save_checkpoint(blob: bytes) -> None:
    await or_stop(sdk.checkpoint.save, blob)


async def or_stop(fn: Any, *args: Any) -> None:
    """A checkpoint save (alone, or riding on a barrier arrival): refused, this attempt is stale
    (another runs), so it stops at once and writes nothing more."""
    try:
        await call(fn, *args)
    except sdk.TaskCallError as e:
        print(f"checkpoint refused, stopping: {e}", file=sys.stderr, flush=True)
        os._exit(3)


async def final_barrier(cfg: Config) -> None:
    await call(sdk.barrier, FINAL_BARRIER, cfg.parties)


def spawn(coro: Any, survivable: tuple[type[BaseException], ...] = ()) -> asyncio.Future[Any]:
    """A background task whose failure ends the process (non-zero: the service task restarts
    from its checkpoint) instead of leaving it alive and stuck; ``survivable`` errors do not."""
    task = asyncio.ensure_future(coro)

    def done(t: asyncio.Future[Any]) -> None:
        if t.cancelled():
            return
        e = t.exception()
        if e is not None and not isinstance(e, survivable):
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
            log(f"stopping: a background task failed: {type(e).__name__}: {e}")
            os._exit(1)

    task.add_done_callback(done)
    return task


def run_main(coro: Any) -> None:
    """Run a task's main coroutine, then exit at once: an SDK call still waiting in a thread
    (an endpoint of a task that has just ended) must not hold the process up."""
    die_with_parent()
    log(f"up (the process started {_started()})")
    asyncio.run(coro)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _started() -> str:
    """When this process was started, from /proc (so a log shows start-up apart from imports)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return "?"
    return stamp(time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK")))


def stamp(at: float) -> str:
    """``at`` (seconds since the epoch) as local HH:MM:SS.mmm, as the masters' and executors' logs."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def log(*parts: Any) -> None:
    """A line on stderr (the task's log), stamped to the millisecond: recoveries are read from it."""
    print(stamp(time.time()), *parts, file=sys.stderr, flush=True)

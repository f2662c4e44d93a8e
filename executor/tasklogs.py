"""Task output kept on the executor's disk, served by the TaskLogs RPC for ``master-client logs``.

While a process-based task runs, ``run_subprocess`` writes what it prints, as it arrives, to
``<work-dir>/logs/<job>/<index>.<attempt>.out`` and ``.err`` (``TaskSpec.log_prefix``), so a reader can
follow it; the result sent to the leader keeps its own OUTPUT_CAP. Kinds that do not stream (``call``,
plug-ins that do not use ``run_subprocess``) get the output they captured written there when the attempt
ends, so a reader always gets what exists.

Bounded on purpose, since every task shares the disk: one stream's file stops at LOG_FILE_CAP (16 MiB)
with a marker line, and finished attempts are kept while there are at most KEEP_ATTEMPTS of them and
their files total at most KEEP_BYTES, the oldest deleted first; and never longer than their job's
retention (sent with each task) counted from the attempt's end, as the masters keep the job itself. The files are indexed again on start, so
an executor restarted on the same ``--work-dir`` still serves them. Attempts of kinds that print nothing
(noop, sleep) get no files, only a place in a bounded list in memory, so that reading them gives empty
output; thousands of them a second must neither touch the disk nor push real logs out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from rota.common.ids import validate_job_id
from rota.executor.kinds.base import LOG_SUFFIXES, TaskResult
from rota.protos import rota_pb2

log = logging.getLogger("rota.executor")

KEEP_ATTEMPTS = 1000
KEEP_BYTES = 256 * 1024 * 1024
#: How long logs are kept when no job retention is known: files found at start, counted from their
#: last write (the masters' default --job-retention).
DEFAULT_KEEP_FOR = 24 * 3600.0
#: The longest a retention may keep logs (the job file's own bound).
MAX_KEEP_FOR = 365 * 24 * 3600.0
#: Finished attempts without files remembered (so they read as empty rather than unknown).
KEEP_QUIET = 10_000
#: How often a follower looks for new output; cheap (a read at EOF), and well under a human's notice.
POLL = 0.1
READ_CHUNK = 64 * 1024

#: (job id, task index, attempt)
AttemptKey = tuple[str, int, int]

_STREAMS = (rota_pb2.LogChunk.STDOUT, rota_pb2.LogChunk.STDERR)
_LOG_NAME = re.compile(r"(\d+)\.(\d+)\.(out|err)")


def log_name(index: int, attempt: int) -> str:
    return f"{index}.{attempt}"


def parse_log_name(name: str) -> tuple[int, int] | None:
    """``3.2.out`` -> (3, 2); anything else is not ours."""
    m = _LOG_NAME.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_request(job_id: str, index: int, attempt: int) -> None:
    """Raise ValueError for a request that could not name an attempt, or would escape the logs dir."""
    validate_job_id(job_id)  # a ValueError naming the problem
    if index < 0:
        raise ValueError(f"task index must be >= 0, got {index}")
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0 (0: the latest), got {attempt}")


class LogStore:
    """Which attempts have logs here, live or finished, and their files under ``root``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        keep_attempts: int = KEEP_ATTEMPTS,
        keep_bytes: int = KEEP_BYTES,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        # Only the executor reads task output (and serves it to those allowed): with --run-as, a
        # task must not list or read other jobs' output through its way into the work dir.
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        self.keep_attempts = keep_attempts
        self.keep_bytes = keep_bytes
        self.wall = wall
        #: (Unix time the files go, attempt): entries of attempts pruned earlier are skipped.
        self._expiry: list[tuple[float, AttemptKey]] = []
        #: Attempts that have started here and not ended: True when they stream to log files, None when
        #: their kind captures output and hands it over at the end, False when it prints nothing.
        self.live: dict[AttemptKey, bool | None] = {}
        #: Finished attempts with log files, oldest first, with the bytes the files take.
        self.kept: collections.OrderedDict[AttemptKey, int] = collections.OrderedDict()
        self.kept_bytes = 0
        #: When each kept attempt's files go (Unix time).
        self._expires: dict[AttemptKey, float] = {}
        #: Finished attempts without files, oldest first.
        self.quiet: collections.OrderedDict[AttemptKey, None] = collections.OrderedDict()
        self._scan()

    def prefix(self, key: AttemptKey) -> str:
        job_id, index, attempt = key
        return str(self.root / job_id / log_name(index, attempt))

    def begin(self, key: AttemptKey, files: bool | None) -> str:
        """An attempt starts; returns the log prefix to give its kind ("" when it gets no files).

        ``files`` is True for a kind that streams to log files, None for one that captures its
        output (the files are written at the end, and only when there is output), False for one
        that prints nothing."""
        self.live[key] = files
        if not files:
            return ""
        if not self._mkdir(key[0]):
            self.live[key] = False
            return ""
        return self.prefix(key)

    def _mkdir(self, job_id: str) -> bool:
        try:
            (self.root / job_id).mkdir(parents=True, exist_ok=True)
            return True
        except OSError as exc:
            log.warning("cannot create the log dir of job %s: %s", job_id, exc)
            return False

    def end(self, key: AttemptKey, result: TaskResult | None, keep_for: float = 0.0) -> None:
        """An attempt ended: keep its logs (writing what a capturing kind caught) for ``keep_for``
        seconds (0: DEFAULT_KEEP_FOR), and prune old ones.

        A captured attempt that printed nothing touches no disk: a Python function called thousands
        of times a second must not cost two files each."""
        files = self.live.pop(key, False)
        if not files:
            captured = files is None and result is not None and (result.stdout or result.stderr)
            if not captured or not self._mkdir(key[0]):
                self.quiet[key] = None
                if len(self.quiet) > KEEP_QUIET:
                    self.quiet.popitem(last=False)
                return
        paths = [self.prefix(key) + s for s in LOG_SUFFIXES]
        if result is not None and not any(os.path.exists(p) for p in paths):
            for path, text in zip(paths, (result.stdout, result.stderr), strict=True):
                try:
                    Path(path).write_bytes(text.encode("utf-8", errors="replace"))
                except OSError as exc:
                    log.warning("cannot write %s: %s", path, exc)
        self._keep(key, sum(_size(p) for p in paths), self.wall() + _keep_for(keep_for))
        self._prune()

    def expire(self) -> int:
        """Delete the logs whose retention has passed; how many attempts went."""
        now, n = self.wall(), 0
        while self._expiry and self._expiry[0][0] <= now:
            at, key = heapq.heappop(self._expiry)
            size = self.kept.get(key)
            if size is not None and self._expires.get(key) == at:
                del self.kept[key]
                del self._expires[key]
                self.kept_bytes -= size
                self._delete(key)
                n += 1
        return n

    def known(self, key: AttemptKey) -> bool:
        return key in self.live or key in self.kept or key in self.quiet

    def latest(self, job_id: str, index: int) -> int:
        """The highest attempt of the task known here; 0 when there is none."""
        attempts = [a for (j, i, a) in (*self.live, *self.kept, *self.quiet) if j == job_id and i == index]
        return max(attempts, default=0)

    def silence(self, key: AttemptKey) -> str:
        """Why a live attempt has no log files (yet): shown to the reader instead of output."""
        what = f"attempt {key[2]} of {key[0]}/{key[1]}"
        if key not in self.live:
            return f"{what} is queued on the executor and has not started yet"
        if self.live[key] is False:
            return f"{what} runs a kind that prints no output"
        return f"{what} runs a kind that does not stream: its output comes when the attempt ends"

    async def tail(
        self, key: AttemptKey, is_live: Callable[[], bool], follow: bool, poll: float = POLL
    ) -> AsyncIterator[rota_pb2.LogChunk]:
        """What the attempt's files hold; with ``follow``, what is added too, until the attempt ends."""
        prefix, attempt = self.prefix(key), key[2]
        files: list[BinaryIO | None] = [None, None]
        said = ""
        try:
            while True:
                # Asked before reading: output written before the attempt ended is then read below.
                live = is_live()
                for i, (stream, suffix) in enumerate(zip(_STREAMS, LOG_SUFFIXES, strict=True)):
                    f = files[i]
                    if f is None:
                        try:
                            f = files[i] = open(prefix + suffix, "rb")
                        except OSError:
                            continue
                    while data := f.read(READ_CHUNK):
                        yield rota_pb2.LogChunk(stream=stream, data=data, attempt=attempt)
                if live and files == [None, None] and self.silence(key) != said:
                    said = self.silence(key)
                    yield rota_pb2.LogChunk(attempt=attempt, notice=said)
                if not (follow and live):
                    return
                await asyncio.sleep(poll)
        finally:
            for f in files:
                if f is not None:
                    f.close()

    def _scan(self) -> None:
        """Index the logs a previous run left in ``root``, oldest first by modification time."""
        found: dict[AttemptKey, list[float]] = {}
        try:
            job_dirs = [d for d in self.root.iterdir() if d.is_dir()]
        except OSError:
            return
        for d in job_dirs:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for entry in entries:
                parsed = parse_log_name(entry.name)
                if parsed is None:
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    continue
                acc = found.setdefault((d.name, *parsed), [0.0, 0.0])
                acc[0] = max(acc[0], st.st_mtime)
                acc[1] += st.st_size
        for key, (mtime, size) in sorted(found.items(), key=lambda kv: kv[1][0]):
            self._keep(key, int(size), mtime + DEFAULT_KEEP_FOR)
        self._prune()
        self.expire()

    def _keep(self, key: AttemptKey, size: int, until: float) -> None:
        self.kept_bytes += size - self.kept.pop(key, 0)
        self.kept[key] = size
        self._expires[key] = until
        heapq.heappush(self._expiry, (until, key))

    def _prune(self) -> None:
        """Past their retention, then oldest first until both the count and the bytes fit."""
        self.expire()
        while self.kept and (len(self.kept) > self.keep_attempts or self.kept_bytes > self.keep_bytes):
            key, size = self.kept.popitem(last=False)
            self._expires.pop(key, None)
            self.kept_bytes -= size
            self._delete(key)
        if len(self._expiry) > 2 * len(self.kept) + 64:  # entries of pruned attempts: rebuild
            self._expiry = [(at, k) for k, at in self._expires.items()]
            heapq.heapify(self._expiry)

    def _delete(self, key: AttemptKey) -> None:
        prefix = self.prefix(key)
        for suffix in LOG_SUFFIXES:
            try:
                os.unlink(prefix + suffix)
            except OSError:
                pass
        try:
            (self.root / key[0]).rmdir()  # only once the job's last log is gone
        except OSError:
            pass


def _keep_for(seconds: float) -> float:
    """A retention sent by the leader, made safe: 0, NaN or out of range means the default."""
    return seconds if 0 < seconds <= MAX_KEEP_FOR else DEFAULT_KEEP_FOR


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


async def serve(
    store: LogStore,
    running_attempt: Callable[[str, int], int],
    request: rota_pb2.TaskLogsRequest,
    context: Any,
    poll: float = POLL,
) -> AsyncIterator[rota_pb2.LogChunk]:
    """The TaskLogs RPC. ``running_attempt(job, index)`` is the attempt the executor holds (queued or
    running) for the task, 0 when none: the attempt is followed for as long as that stays so."""
    job_id, index, attempt = request.job_id, request.index, request.attempt
    try:
        check_request(job_id, index, attempt)
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    store.expire()
    if attempt == 0:
        attempt = running_attempt(job_id, index) or store.latest(job_id, index)
    key = (job_id, index, attempt)

    def is_live() -> bool:
        return attempt > 0 and running_attempt(job_id, index) == attempt

    if not is_live() and not store.known(key):
        which = f"attempt {attempt}" if attempt else "any attempt"
        await context.abort(
            grpc.StatusCode.NOT_FOUND,
            f"this executor holds no logs of {which} of task {job_id}/{index} "
            "(it never ran here, or its logs were pruned)",
        )
    async for chunk in store.tail(key, is_live, request.follow, poll):
        yield chunk

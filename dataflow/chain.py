"""Chain task (one per binlog): receive -> syncer -> sink, in one process.

receive reads the binlog's FeedBinlog stream from its positions; syncer passes batches on, but at a
DDL record of table t (version v) it holds that table (only that one) until everything before the
record is checkpointed and every chain has reached the same point (the DDL barrier); sink appends
one line per record to ``<out-dir>/<flow-id>/chain_<s>/table_<t>``::

    pk version kind t_produce t_binlog t_receive t_sync t_sink      (microseconds since the epoch)

Every ``checkpoint-ms`` the sink flushes and checkpoints {table: position, file offset}; only then
does it acknowledge those positions to the binlog. A new attempt truncates each file to its
checkpointed offset and resumes from its position: the checkpoint is the only truth of what was
written, and whatever came after it is written again, once.
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import json
import os
import resource
import time
from array import array
from collections import deque
from typing import IO, Any

import grpc

from rota import task as sdk
from rota.dataflow import records as rec
from rota.dataflow import runtime
from rota.dataflow.config import Config
from rota.protos import dataflow_pb2 as pb
from rota.protos import dataflow_pb2_grpc as pb_grpc

Held = tuple[array, array, int, int]
STATS_EVERY = 5.0


def ddl_barrier(cfg: Config, version: int, checkpoint: bytes | None = None) -> None:
    """Every chain has written (and checkpointed) every table up to its DDL record of ``version``:
    one cyclic barrier, a round per version, so that an endless flow keeps no state per version.
    The checkpoint that says so rides on the arrival (saved first, in the same commit)."""
    sdk.barrier("ddl", cfg.server_count, round=version - 1, checkpoint=checkpoint)


class Chain:
    def __init__(self, cfg: Config, shard: int) -> None:
        self.cfg, self.shard = cfg, shard
        n = cfg.table_num
        self.dir = os.path.dirname(cfg.sink_path(shard, 0))
        self.pos = [0] * n
        self.offset = [0] * n
        self.recv = [0] * n
        self.saved = [0] * n
        self.files: list[IO[bytes]] = []
        self.held: list[deque[Held] | None] = [None] * n
        #: The version of the DDL record each held table waits at.
        self.held_at = [0] * n
        #: The last DDL version whose barrier this attempt has passed.
        self.passed = 0
        self.passing = False
        self.first_hold: float | None = None
        self.dirty = False
        self.ckpt_lock = asyncio.Lock()
        self.call: Any = None
        self.finished = asyncio.Event()
        self.released = False
        self.kinds = {False: " data ", True: " ddl "}
        self.last_blob = 0
        self.written = 0
        self.ckpt_time = 0.0

    def _next(self, pk: int) -> int:
        return rec.next_position(self.shard, self.cfg.server_count, self.cfg.ddl_freq, pk, self.cfg.end)

    def open(self, saved: bytes | None) -> None:
        """Take the chain's lock (an attempt still alive elsewhere holds it until it dies), then cut
        every file back to what the checkpoint says was written."""
        os.makedirs(self.dir, exist_ok=True)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.cfg.table_num + 256
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard)
            )
        self._lock = open(os.path.join(self.dir, ".lock"), "a")  # noqa: SIM115
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        first = self._next(0)
        if saved:
            state = json.loads(saved)
            self.pos, self.offset = state["p"], state["o"]
        else:
            self.pos = [first] * self.cfg.table_num
            self.offset = [0] * self.cfg.table_num
        self.recv = list(self.pos)
        self.saved = list(self.pos)
        for t in range(self.cfg.table_num):
            path = self.cfg.sink_path(self.shard, t)
            f = open(path, "ab+", buffering=1 << 15)  # noqa: SIM115
            size = f.seek(0, os.SEEK_END)
            if size < self.offset[t]:
                raise SystemExit(
                    f"{path} has {size} bytes, its checkpoint says {self.offset[t]} were written"
                )
            f.truncate(self.offset[t])
            self.files.append(f)
        self._check_finished()

    # -- receive ----------------------------------------------------------------------------

    async def receive(self) -> None:
        while not self.released:
            addr = await runtime.call(sdk.endpoint, runtime.binlog_endpoint(self.shard))
            try:
                async with grpc.aio.insecure_channel(addr, options=runtime.CHANNEL_OPTIONS) as channel:
                    call = pb_grpc.BinlogStub(channel).FeedBinlog()
                    n = self.cfg.table_num
                    await call.write(
                        pb.FeedRequest(
                            start=[pb.Position(table=t, pk=self.recv[t]) for t in range(n)],
                            acked=[pb.Position(table=t, pk=self.saved[t]) for t in range(n)],
                        )
                    )
                    self.call = call
                    while True:
                        reply = await call.read()
                        if reply is grpc.aio.EOF:
                            raise ConnectionError("the binlog ended the stream")
                        tr = rec.now_us()
                        for b in reply.batches:
                            self.on_batch(b, tr)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, ConnectionError) as e:
                self.call = None
                if not self.released:
                    runtime.log(f"chain {self.shard} <- binlog at {addr}: {e}; finding it again")
                    await asyncio.sleep(0.05)

    def on_batch(self, b: Any, tr: int) -> None:
        t = b.table
        pks, tp = rec.unpack(b.pks), rec.unpack(b.t_produce)
        want = self.recv[t]
        if not pks or pks[-1] < want:
            return
        if pks[0] != want:
            if pks[0] > want:
                raise ConnectionError(f"table {t}: the binlog sent pk {pks[0]}, position is {want}")
            i = bisect.bisect_left(pks, want)
            pks, tp = pks[i:], tp[i:]
        self.recv[t] = self._next(pks[-1] + 1)
        if self.recv[t] >= self.cfg.end:
            self._maybe_pass()
        held = self.held[t]
        if held is not None:
            held.append((pks, tp, b.t_binlog, tr))
        else:
            self.sync(t, pks, tp, b.t_binlog, tr, False)

    # -- syncer -----------------------------------------------------------------------------

    def sync(self, t: int, pks: array, tp: array, tb: int, tr: int, released: bool) -> None:
        """Write what comes before the next DDL record; hold the table from that record on."""
        freq = self.cfg.ddl_freq
        lo = pks[0] + 1 if released else pks[0]
        ddl = max(lo + (-lo) % freq, freq)
        if ddl > pks[-1]:
            self.write(t, pks, tp, tb, tr)
            return
        i = bisect.bisect_left(pks, ddl)
        if i:
            self.write(t, pks[:i], tp[:i], tb, tr)
        self.held[t] = deque([(pks[i:], tp[i:], tb, tr)])
        self.held_at[t] = ddl // freq
        if self.first_hold is None:
            self.first_hold = time.monotonic()
        self._maybe_pass()

    def _maybe_pass(self) -> None:
        """Once every table is held at a DDL record (or has ended), pass the lowest version."""
        if self.passing:
            return
        versions = [self.held_at[t] for t in range(self.cfg.table_num) if self.held[t] is not None]
        if not versions:
            return
        ended = sum(
            1 for t in range(self.cfg.table_num) if self.held[t] is None and self.recv[t] >= self.cfg.end
        )
        if len(versions) + ended < self.cfg.table_num:
            return
        self.passing = True
        runtime.spawn(self._pass_ddl(min(versions)))

    async def _pass_ddl(self, version: int) -> None:
        """Checkpoint (everything before the DDL records is then durable), meet the other chains at
        the barrier of each version up to this one (one already released answers at once), then
        let the tables held at this version go on."""
        t0 = time.monotonic()
        if self.cfg.server_count > 1:
            await self.checkpoint(arrive=range(self.passed + 1, version + 1))
        else:
            await self.checkpoint()
        t1 = time.monotonic()
        first, self.first_hold = self.first_hold or t0, None
        runtime.log(
            f"chain {self.shard}: DDL version {version} passed; held {1000 * (t1 - first):.0f} ms "
            f"(every table there after {1000 * (t0 - first):.0f}, checkpoint and barrier "
            f"{1000 * (t1 - t0):.0f})"
        )
        self.passed = version
        self.passing = False
        for t in range(self.cfg.table_num):
            items = self.held[t]
            if items is None or self.held_at[t] != version:
                continue
            self.held[t] = None
            released = True
            while items:
                item = items.popleft()
                held = self.held[t]
                if held is not None:
                    held.append(item)
                else:
                    self.sync(t, *item, released)
                released = False
        self._maybe_pass()

    # -- sink -------------------------------------------------------------------------------

    def write(self, t: int, pks: array, tp: array, tb: int, tr: int) -> None:
        now = rec.now_us()
        tail = f" {tb} {tr} {now} {now}\n"
        freq, kinds = self.cfg.ddl_freq, self.kinds
        text = "".join(
            [
                f"{pk} {pk // freq}{kinds[pk % freq == 0 and pk > 0]}{p}{tail}"
                for pk, p in zip(pks, tp, strict=True)
            ]
        ).encode()
        self.files[t].write(text)
        self.offset[t] += len(text)
        self.written += len(pks)
        self.pos[t] = self._next(pks[-1] + 1)
        self.dirty = True

    async def checkpoint(self, arrive: range = range(0)) -> None:
        """Flush, save {positions, offsets}, then acknowledge them to the binlog. With ``arrive``
        (DDL versions), the save rides on the arrival at the first version's barrier round (one
        round trip to the leader, not two) and the call returns once every round is released."""
        async with self.ckpt_lock:
            for f in self.files:
                f.flush()
            pos, offset = list(self.pos), list(self.offset)
            self.dirty = False
            blob = json.dumps({"p": pos, "o": offset}, separators=(",", ":")).encode()
            t0 = time.monotonic()
            if arrive:
                for v in arrive:
                    await runtime.or_stop(ddl_barrier, self.cfg, v, blob if v == arrive[0] else None)
            else:
                await runtime.save_checkpoint(blob)
            self.ckpt_time += time.monotonic() - t0
            self.saved = pos
            await self.ack()
            self._check_finished()
            self.last_blob = len(blob)

    async def ack(self) -> None:
        call = self.call
        if call is None:
            return
        n = self.cfg.table_num
        try:
            msg = pb.FeedRequest(acked=[pb.Position(table=t, pk=self.saved[t]) for t in range(n)])
            await asyncio.wait_for(call.write(msg), 2.0)
        except Exception:  # the stream broke: the next one carries the positions
            pass

    def _check_finished(self) -> None:
        if self.cfg.rcd_cnt and all(p >= self.cfg.end for p in self.saved):
            self.finished.set()

    async def stats(self) -> None:
        """Every STATS_EVERY seconds while it writes: how fast, and how much time checkpoints took."""
        while True:
            w0, c0 = self.written, self.ckpt_time
            await asyncio.sleep(STATS_EVERY)
            if self.written != w0:
                held = sum(1 for h in self.held if h is not None)
                runtime.log(
                    f"chain {self.shard}: {(self.written - w0) / STATS_EVERY:.0f} records/s written, "
                    f"{held} tables held, checkpoints took {(self.ckpt_time - c0) / STATS_EVERY:.0%} of the time"
                )

    async def keep_checkpoint(self) -> None:
        interval = self.cfg.checkpoint_ms / 1000
        while True:
            await asyncio.sleep(max(interval, self.last_blob / 32768))
            if self.dirty:
                await self.checkpoint()


async def run(cfg: Config, shard: int) -> None:
    chain = Chain(cfg, shard)
    saved = await runtime.call(sdk.checkpoint.load)
    await runtime.call(chain.open, saved)
    runtime.log(f"chain {shard}: positions from checkpoint: {bool(saved)}")
    receiver = runtime.spawn(chain.receive())
    keeper = runtime.spawn(chain.keep_checkpoint())
    runtime.spawn(chain.stats())
    await chain.finished.wait()
    runtime.log(f"chain {shard}: every table written and checkpointed")
    await runtime.final_barrier(cfg)
    chain.released = True
    keeper.cancel()
    receiver.cancel()
    for f in chain.files:
        f.close()


def main() -> None:
    runtime.run_main(run(Config.from_env(), runtime.shard()))

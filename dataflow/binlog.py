"""Binlog task (one per server): logs what the producers send, streams it to its chain.

The log is in memory, per table, bounded by ``log-cap`` records not yet acknowledged (a producer
is not read further until the chain acknowledges: gRPC flow control holds it back). The chain
acknowledges a position only once its checkpoint holds it; the binlog then trims, and checkpoints
the acknowledged positions itself, so a restarted binlog tells each producer where to resume (and
a producer is told its table is done only once that is checkpointed).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
from collections import deque
from typing import Any

import grpc

from rota import task as sdk
from rota.dataflow import records as rec
from rota.dataflow import runtime
from rota.dataflow.config import Config
from rota.protos import dataflow_pb2 as pb
from rota.protos import dataflow_pb2_grpc as pb_grpc

#: At most this many records in one message to the chain.
FEED_MAX_RECORDS = 32768
#: How long the feed waits after new records arrive before it sends them on.
COALESCE = 0.001
#: The binlog checkpoints its acknowledged positions this many times less often than a chain.
CHECKPOINT_SLOWER = 5


class Binlog(pb_grpc.BinlogServicer):
    def __init__(self, cfg: Config, shard: int, acked: list[int]) -> None:
        self.cfg, self.shard = cfg, shard
        self.end = cfg.end
        n = cfg.table_num
        self.acked = list(acked)
        self.saved = list(acked)
        self.log_end = list(acked)
        #: Per table: entries (first pk, last pk, pks, t_produce, t_binlog); ``base`` entries trimmed.
        self.log: list[deque[tuple[int, int, bytes, bytes, int]]] = [deque() for _ in range(n)]
        self.base = [0] * n
        self.size = [0] * n
        self.space = [asyncio.Event() for _ in range(n)]
        for e in self.space:
            e.set()
        self.done = [asyncio.Event() for _ in range(n)]
        self.pending: set[int] = set()
        self.wake = asyncio.Event()
        self.feed_gen = 0
        self.dirty = asyncio.Event()
        self.all_done = asyncio.Event()
        self._mark_done()

    def _next(self, pk: int) -> int:
        return rec.next_position(self.shard, self.cfg.server_count, self.cfg.ddl_freq, pk, self.end)

    def _mark_done(self) -> None:
        for t, pos in enumerate(self.saved):
            if pos >= self.end:
                self.done[t].set()
        if self.cfg.rcd_cnt and all(p >= self.end for p in self.saved):
            self.all_done.set()

    # -- producers --------------------------------------------------------------------------

    async def Produce(self, request_iterator: Any, context: Any) -> Any:
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        t = first.table
        if t >= self.cfg.table_num:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"table {t}: the flow has {self.cfg.table_num}"
            )
        yield pb.ProduceReply(resume_from=self.log_end[t])
        reader = asyncio.ensure_future(self._read_producer(t, it))
        done = asyncio.ensure_future(self.done[t].wait())
        try:
            await asyncio.wait({reader, done}, return_when=asyncio.FIRST_COMPLETED)
            if self.done[t].is_set():
                yield pb.ProduceReply(done=True)
            await reader
        finally:
            reader.cancel()
            done.cancel()

    async def _read_producer(self, t: int, it: Any) -> None:
        async for req in it:
            b = req.batch
            if not b.pks:
                continue
            while self.size[t] >= self.cfg.log_cap:
                self.space[t].clear()
                await self.space[t].wait()
            self._append(t, b.pks, b.t_produce)

    def _append(self, t: int, pks: bytes, tp: bytes) -> None:
        first, last = rec.first_last(pks)
        end = self.log_end[t]
        if last < end:
            return  # a second stream of the same producer (a stale attempt) resent it
        if first < end:
            arr = rec.unpack(pks)
            i = bisect.bisect_left(arr, end)
            pks, tp, first = arr[i:].tobytes(), rec.unpack(tp)[i:].tobytes(), arr[i]
        if first != end:
            raise RuntimeError(f"table {t}: producer sent pk {first}, the log needs {end} first")
        self.log[t].append((first, last, pks, tp, rec.now_us()))
        self.size[t] += len(pks) // 8
        self.log_end[t] = self._next(last + 1)
        self.pending.add(t)
        self.wake.set()

    # -- the chain --------------------------------------------------------------------------

    def _ack(self, t: int, pos: int) -> None:
        if t >= self.cfg.table_num or pos <= self.acked[t]:
            return
        self.acked[t] = pos
        log = self.log[t]
        while log and log[0][1] < pos:
            self.size[t] -= len(log[0][2]) // 8
            log.popleft()
            self.base[t] += 1
        if pos > self.log_end[t]:
            self.log_end[t] = pos
        if self.size[t] < self.cfg.log_cap:
            self.space[t].set()
        self.dirty.set()

    async def FeedBinlog(self, request_iterator: Any, context: Any) -> Any:
        self.feed_gen += 1
        gen = self.feed_gen
        self.wake.set()  # an older stream sees it is superseded
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        for p in first.acked:
            self._ack(p.table, p.pk)
        start = list(self.acked)
        for p in first.start:
            if p.table < self.cfg.table_num:
                start[p.table] = max(p.pk, self.acked[p.table])
        # Per table: the absolute index of the next entry to send and the pk to send from.
        cursor = [0] * self.cfg.table_num
        send_from = start
        for t in range(self.cfg.table_num):
            log = self.log[t]
            i = 0
            while i < len(log) and log[i][1] < start[t]:
                i += 1
            cursor[t] = self.base[t] + i
            if i < len(log):
                self.pending.add(t)
        reader = asyncio.ensure_future(self._read_acks(it))
        try:
            while gen == self.feed_gen and not reader.done():
                batches, count = [], 0
                for t in list(self.pending):
                    log, base = self.log[t], self.base[t]
                    i = max(cursor[t], base) - base
                    while i < len(log) and count < FEED_MAX_RECORDS:
                        first, last, pks, tp, tb = log[i]
                        if first < send_from[t]:
                            arr = rec.unpack(pks)
                            j = bisect.bisect_left(arr, send_from[t])
                            pks, tp = arr[j:].tobytes(), rec.unpack(tp)[j:].tobytes()
                        if pks:
                            batches.append(pb.Batch(table=t, pks=pks, t_produce=tp, t_binlog=tb))
                            count += len(pks) // 8
                        send_from[t] = last + 1
                        i += 1
                    cursor[t] = base + i
                    if i >= len(log):
                        self.pending.discard(t)
                if batches:
                    yield pb.FeedReply(batches=batches)
                    continue
                self.wake.clear()
                waiter = asyncio.ensure_future(self.wake.wait())
                await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                # What other producers send meanwhile goes in the same message: fewer, fuller messages.
                await asyncio.sleep(COALESCE)
        finally:
            reader.cancel()

    async def _read_acks(self, it: Any) -> None:
        async for req in it:
            for p in req.acked:
                self._ack(p.table, p.pk)

    # -- checkpoints ------------------------------------------------------------------------

    async def keep_checkpoint(self) -> None:
        interval = CHECKPOINT_SLOWER * self.cfg.checkpoint_ms / 1000
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            snapshot = list(self.acked)
            blob = json.dumps(snapshot, separators=(",", ":")).encode()
            await runtime.save_checkpoint(blob)
            self.saved = snapshot
            self._mark_done()
            await asyncio.sleep(max(interval, len(blob) / 32768))


async def run(cfg: Config, shard: int) -> None:
    saved = await runtime.call(sdk.checkpoint.load)
    if saved:
        acked = json.loads(saved)
    else:
        first = rec.next_position(shard, cfg.server_count, cfg.ddl_freq, 0, cfg.end)
        acked = [first] * cfg.table_num
    binlog = Binlog(cfg, shard, acked)
    server = grpc.aio.server(options=runtime.SERVER_OPTIONS)
    pb_grpc.add_BinlogServicer_to_server(binlog, server)
    host, port = os.environ.get("ROTA_HOST", "127.0.0.1"), os.environ["ROTA_PORT_FEED"]
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    runtime.log(f"binlog {shard} serves {host}:{port}; acked from checkpoint: {bool(saved)}")
    keeper = runtime.spawn(binlog.keep_checkpoint())
    await binlog.all_done.wait()
    runtime.log(f"binlog {shard}: every table written downstream")
    await runtime.final_barrier(cfg)
    keeper.cancel()
    await server.stop(0.5)


def main() -> None:
    runtime.run_main(run(Config.from_env(), runtime.shard()))

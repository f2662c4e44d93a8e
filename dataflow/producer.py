"""Producer task (one per table): sends its table's records to every binlog, each from where that
binlog says it needs them, and ends once every binlog says the table is written downstream for good.

Records are regenerated from the config (deterministic), so a producer keeps no state but "done".
Paced (``pace`` records/s per table), record pk is due at start + pk / pace and carries that time as
its t_produce; due records go out every ``flush-ms`` in batches of at most ``batch``. Unpaced,
batches go out as fast as the binlog takes them, stamped when made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from array import array
from typing import Any

import grpc

from rota import task as sdk
from rota.dataflow import records as rec
from rota.dataflow import runtime
from rota.dataflow.config import Config
from rota.protos import dataflow_pb2 as pb
from rota.protos import dataflow_pb2_grpc as pb_grpc

#: Producers meet here once, so that paced tables reach each DDL record at the same moment (the
#: chains pass a DDL version only once every table reached it).
START_BARRIER = "start"
#: How long the first attempt waits for its streams before the start barrier all the same.
START_WAIT = 30.0


class Producer:
    def __init__(self, cfg: Config, table: int, start_us: int | None) -> None:
        self.cfg, self.table = cfg, table
        #: Paced: when pk 0 was due (the first attempt's start, kept in the checkpoint).
        self.start_us = start_us or 0
        self.us_per_record = 1e6 / cfg.pace if cfg.pace else 0.0
        #: Set once the start is known: streams connect before, and send only after.
        self.clock = asyncio.Event()
        if start_us is not None:
            self.clock.set()
        self.connected: set[int] = set()
        self.all_connected = asyncio.Event()
        #: Paced: the streams the producer's one clock feeds, binlog -> [stream, position, ended,
        #: the sending in flight].
        self.paced: dict[int, list[Any]] = {}
        self.pacer: asyncio.Task[None] | None = None

    async def feed(self, s: int) -> None:
        """Until binlog ``s`` says this table is done: connect (wherever it is now), send from
        where it says; after any error, ask where it is again."""
        while True:
            addr = await runtime.call(sdk.endpoint, runtime.binlog_endpoint(s))
            try:
                async with grpc.aio.insecure_channel(addr, options=runtime.CHANNEL_OPTIONS) as channel:
                    call = pb_grpc.BinlogStub(channel).Produce()
                    await call.write(pb.ProduceRequest(table=self.table))
                    reply = await call.read()
                    if reply is grpc.aio.EOF:
                        raise ConnectionError("the binlog closed the stream")
                    self.connected.add(s)
                    if len(self.connected) == self.cfg.server_count:
                        self.all_connected.set()
                    await self.clock.wait()
                    sender = runtime.spawn(
                        self._send(call, s, reply.resume_from),
                        (grpc.aio.AioRpcError, asyncio.InvalidStateError),
                    )
                    try:
                        reply = await call.read()
                    finally:
                        sender.cancel()
                    if reply is not grpc.aio.EOF and reply.done:
                        await call.done_writing()
                        return
                    raise ConnectionError("the binlog ended the stream before the table was done")
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, ConnectionError, OSError) as e:
                runtime.log(f"producer {self.table} -> binlog {s} at {addr}: {e}; finding it again")
                await asyncio.sleep(0.05)

    async def _send(self, call: grpc.aio.StreamStreamCall, s: int, pos: int) -> None:
        """Send binlog ``s`` its records from ``pos``: paced, on the producer's one clock (one
        wake-up per flush for every binlog, not one each); unpaced, as fast as it takes them."""
        cfg, t = self.cfg, self.table
        if cfg.pace:
            ended = asyncio.get_running_loop().create_future()
            entry: list[Any] = [call, pos, ended, None]
            self.paced[s] = entry
            if self.pacer is None or self.pacer.done():
                self.pacer = runtime.spawn(self._pace())
            try:
                await ended
            finally:
                if self.paced.get(s) is entry:
                    del self.paced[s]
            return
        end, n = cfg.end, cfg.batch
        servers, freq = cfg.server_count, cfg.ddl_freq
        while pos < end:
            pks = rec.routed(s, servers, freq, pos, end, n)
            tp = array("q", [rec.now_us()]) * len(pks)
            await call.write(
                pb.ProduceRequest(table=t, batch=pb.Batch(table=t, pks=pks.tobytes(), t_produce=tp.tobytes()))
            )
            pos = rec.next_position(s, servers, freq, pks[-1] + 1, end)

    async def _pace(self) -> None:
        """Every ``flush-ms``, on the grid shared by every producer (a binlog gets all tables'
        records at once and passes them on in one message), start sending each stream what is
        due; a stream whose last sending has not finished (its binlog stopped reading: it is
        full) is skipped, so it holds back only itself."""
        flush = self.cfg.flush_ms / 1000
        while self.paced:
            for s, entry in list(self.paced.items()):
                if not entry[2].done() and (entry[3] is None or entry[3].done()):
                    entry[3] = asyncio.ensure_future(self._drain(s, entry))
            await asyncio.sleep(flush - time.time() % flush)

    async def _drain(self, s: int, entry: list[Any]) -> None:
        """Send stream ``s`` what is due now, a batch at a time; a failed write ends the stream
        (its feed finds the binlog again and resumes where the binlog says)."""
        cfg, t = self.cfg, self.table
        end, n = cfg.end, cfg.batch
        servers, freq = cfg.server_count, cfg.ddl_freq
        start, step = self.start_us, self.us_per_record
        call, _, ended, _ = entry
        try:
            while not ended.done():
                pos = entry[1]
                if pos >= end:
                    ended.set_result(None)
                    return
                due = min(end, int((rec.now_us() - start) / step) + 1)
                pks = rec.routed(s, servers, freq, pos, due, n)
                if not pks:
                    return
                tp = array("q", [int(start + pk * step) for pk in pks])
                entry[1] = rec.next_position(s, servers, freq, pks[-1] + 1, end)
                batch = pb.Batch(table=t, pks=pks.tobytes(), t_produce=tp.tobytes())
                await call.write(pb.ProduceRequest(table=t, batch=batch))
                if len(pks) < n:
                    return  # all that was due; a full batch means more may be
        except Exception as e:
            if not ended.done():
                ended.set_exception(e)


async def run(cfg: Config, table: int) -> None:
    """The checkpoint: {"start": when pk 0 was due, "done": every binlog has the table for good}.

    The first attempt connects to every binlog, then meets the other producers at the start
    barrier, so no record is due before its stream is up and every table is paced from one start."""
    saved = await runtime.call(sdk.checkpoint.load)
    state = json.loads(saved) if saved else {}
    if not state.get("done"):
        producer = Producer(cfg, table, state.get("start"))
        feeds = asyncio.gather(*(producer.feed(s) for s in range(cfg.server_count)))
        if "start" not in state:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(producer.all_connected.wait()), START_WAIT)
            released = await runtime.call(sdk.barrier, START_BARRIER, cfg.table_num)
            # One start for every table (the leader's release time, not when each producer heard
            # of it, which on a busy machine differs by up to half a second): the tables reach each
            # DDL record together, so no chain holds a table long waiting for the others.
            state = {"start": int(released * 1e6) if released else rec.now_us()}
            await runtime.save_checkpoint(json.dumps(state).encode())
            producer.start_us = state["start"]
            producer.clock.set()
        await feeds
        await runtime.save_checkpoint(json.dumps({**state, "done": True}).encode())
        runtime.log(f"producer {table}: every binlog has the table for good")
    await runtime.final_barrier(cfg)


def main() -> None:
    runtime.run_main(run(Config.from_env(), runtime.shard()))

"""The paced producer's one clock (rota.dataflow.producer): streams fed side by side, each held
back only by its own binlog. Fake streams, no I/O."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rota.dataflow import records as rec
from rota.dataflow.config import parse
from rota.dataflow.producer import Producer

FLOW = {"flow-id": "f", "table-num": 1, "servers": ["a", "b"], "rcd-cnt": 1_000_000, "ddl-freq": 1000}


class Stuck:
    """A binlog that stopped reading (its log is full): a write never finishes."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def write(self, msg: Any) -> None:
        await self.release.wait()


class Taking:
    def __init__(self) -> None:
        self.pks: list[int] = []

    async def write(self, msg: Any) -> None:
        self.pks.extend(rec.unpack(msg.batch.pks))


class Broken:
    async def write(self, msg: Any) -> None:
        raise ConnectionError("the stream broke")


def test_a_stuck_binlog_holds_back_only_its_own_stream_and_a_broken_one_ends_its_stream() -> None:
    cfg = parse({**FLOW, "pace": 20_000, "flush-ms": 5})

    async def scenario() -> None:
        producer = Producer(cfg, 0, rec.now_us())
        stuck, taking = Stuck(), Taking()
        first = rec.next_position(1, 2, cfg.ddl_freq, 0, cfg.end)
        to_stuck = asyncio.ensure_future(producer._send(stuck, 0, 0))  # type: ignore[arg-type]
        to_taking = asyncio.ensure_future(producer._send(taking, 1, first))  # type: ignore[arg-type]
        await asyncio.sleep(0.4)
        assert not to_stuck.done() and not to_taking.done()
        # About 0.4 s x 20,000/s, half of them routed to binlog 1: far more than one batch.
        assert len(taking.pks) > 2 * cfg.batch, len(taking.pks)
        expected = rec.routed(1, 2, cfg.ddl_freq, first, taking.pks[-1] + 1, len(taking.pks) + 1)
        assert taking.pks == list(expected)  # in order, none skipped, none twice
        to_stuck.cancel()
        broken = asyncio.ensure_future(producer._send(Broken(), 0, 0))  # type: ignore[arg-type]
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(broken, 2)
        assert not to_taking.done()
        to_taking.cancel()
        stuck.release.set()
        await asyncio.sleep(0.05)

    asyncio.run(scenario())

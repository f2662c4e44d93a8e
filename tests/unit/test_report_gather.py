"""The executor's reports to the leader: gathered while more tasks are to end, sent at once otherwise.

The gathering window is widened here (``wide``): a report that should go at once must be on the
stream after a few milliseconds, which no code that held it for the window could pass, and which a
loaded machine cannot make fail the way it could a 30 ms bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from rota.executor import link as link_mod
from rota.executor.config import AgentConfig
from rota.executor.fencing import Lease
from rota.executor.link import Link
from rota.executor.runner import Runner
from rota.protos import rota_pb2


class Sent:
    """What the writer put on the stream, and when."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, rota_pb2.ExecutorMessage]] = []

    async def write(self, msg: rota_pb2.ExecutorMessage) -> None:
        self.messages.append((time.monotonic(), msg))

    def reports(self) -> list[int]:
        return [len(m.reports.reports) for _, m in self.messages if m.WhichOneof("body") == "reports"]


#: A window no loaded machine stretches a few milliseconds of the test's own steps into.
WIDE = 2.0


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_mod, "REPORT_GATHER", WIDE)


def report(i: int) -> rota_pb2.TaskReport:
    return rota_pb2.TaskReport(task=rota_pb2.TaskRef(job_id="j", index=i, attempt=1), state="SUCCEEDED")


async def writing(tmp_path: Path, busy: bool, feed: Any) -> Sent:
    conf = AgentConfig(
        name="e", join=["127.0.0.1:1"], addr="", slots=1, labels={}, keepalive_ttl=5,
        keepalive_interval=1, work_dir=str(tmp_path),
    )  # fmt: skip
    runner = Runner(conf, {})
    link = Link(conf, runner, Lease(5))
    link._outbox = asyncio.Queue()
    if busy:  # another task still to end here: reports may wait for company
        runner.running[("j", 999)] = None  # type: ignore[assignment]
    sent = Sent()
    writer = asyncio.create_task(link._write(sent))  # type: ignore[arg-type]
    try:
        await feed(link, sent)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    return sent


def test_the_last_tasks_report_goes_at_once(tmp_path: Path, wide: None) -> None:
    async def feed(link: Link, sent: Sent) -> None:
        link.send(report(0))
        await asyncio.sleep(0.005)
        link.send(report(1))  # right after a report message, but nothing else is running
        await asyncio.sleep(0.005)

    sent = asyncio.run(writing(tmp_path, busy=False, feed=feed))
    assert sent.reports() == [1, 1]


def test_reports_in_quick_succession_are_gathered_while_more_tasks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link_mod, "REPORT_GATHER", 0.5)  # the five sends fit in it however slow

    async def feed(link: Link, sent: Sent) -> None:
        link.send(report(0))  # after a quiet spell: at once
        await asyncio.sleep(0.002)
        for i in range(1, 6):
            link.send(report(i))
            await asyncio.sleep(0.001)
        await asyncio.sleep(link_mod.REPORT_GATHER * 2)

    sent = asyncio.run(writing(tmp_path, busy=True, feed=feed))
    assert sent.reports() == [1, 5]
    gap = sent.messages[1][0] - sent.messages[0][0]
    assert gap >= link_mod.REPORT_GATHER * 0.9, gap


def test_the_last_report_ends_a_gathering_already_under_way(tmp_path: Path, wide: None) -> None:
    async def feed(link: Link, sent: Sent) -> None:
        link.send(report(0))
        await asyncio.sleep(0.002)
        t0 = time.monotonic()
        link.send(report(1))  # held: another task still runs
        await asyncio.sleep(0.002)
        link.runner.running.clear()  # that task ended: its report is the last
        link.send(report(2))
        await asyncio.sleep(0.005)
        assert sent.reports() == [1, 2] and sent.messages[-1][0] - t0 < link_mod.REPORT_GATHER

    asyncio.run(writing(tmp_path, busy=True, feed=feed))


def test_a_full_batch_or_any_other_message_ends_the_gathering(tmp_path: Path, wide: None) -> None:
    async def feed(link: Link, sent: Sent) -> None:
        link.send(report(0))
        await asyncio.sleep(0.002)
        t0 = time.monotonic()
        for i in range(link_mod.REPORT_BATCH):
            link.send(report(1 + i))
        await asyncio.sleep(0.005)
        assert sent.reports() == [1, link_mod.REPORT_BATCH], sent.reports()
        assert sent.messages[-1][0] - t0 < link_mod.REPORT_GATHER
        link.send(report(500))
        link._beat()  # a heartbeat takes the report gathered so far along, without waiting
        await asyncio.sleep(0.005)
        assert sent.messages[-1][0] - t0 < link_mod.REPORT_GATHER

    sent = asyncio.run(writing(tmp_path, busy=True, feed=feed))
    kinds = [m.WhichOneof("body") for _, m in sent.messages]
    assert kinds == ["reports", "reports", "heartbeat", "reports"], kinds
    assert sent.reports() == [1, link_mod.REPORT_BATCH, 1]


def test_a_message_queued_behind_a_report_is_not_held_by_it(tmp_path: Path, wide: None) -> None:
    async def feed(link: Link, sent: Sent) -> None:
        link.send(report(0))
        await asyncio.sleep(0.002)
        t0 = time.monotonic()
        link._beat()
        link.send(report(1))
        link._put(rota_pb2.ExecutorMessage(leaving=rota_pb2.Leaving()))
        await asyncio.sleep(0.005)
        kinds = [m.WhichOneof("body") for _, m in sent.messages]
        assert kinds == ["reports", "heartbeat", "leaving", "reports"], kinds
        assert sent.messages[-1][0] - t0 < link_mod.REPORT_GATHER

    asyncio.run(writing(tmp_path, busy=True, feed=feed))

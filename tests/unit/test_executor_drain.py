"""An executor draining, without a leader: what waits for a slot is handed back at once, running
tasks finish within the drain timeout or are handed back, dispatches that arrive meanwhile are
handed back, and an undrain takes work again. Reports land in ``unacked``, as for the link."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from rota.common.states import HANDED_BACK, SUCCEEDED
from rota.executor.agent import Agent
from rota.executor.config import AgentConfig
from rota.executor.kinds.sleep import SleepKind
from rota.protos import rota_pb2


def agent(tmp_path: Path, slots: int = 1) -> Agent:
    conf = AgentConfig(
        name="x",
        join=["127.0.0.1:1"],
        addr="127.0.0.1:2",
        slots=slots,
        labels={},
        keepalive_ttl=5.0,
        keepalive_interval=1.0,
        work_dir=str(tmp_path),
        prefetch=0,
        drain_timeout=30.0,
    )
    return Agent(conf, {"sleep": SleepKind()})


def sleep(index: int, seconds: float) -> rota_pb2.TaskAssignment:
    return rota_pb2.TaskAssignment(
        task=rota_pb2.TaskRef(job_id="j", index=index, attempt=1),
        kind="sleep",
        params_json=json.dumps({"seconds": seconds}).encode(),
    )


def reports(a: Agent) -> dict[int, str]:
    return {index: r.state for (_, index, _), r in a.runner.unacked.items()}


def test_queued_tasks_are_handed_back_at_once_and_a_running_one_finishes(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = agent(tmp_path, slots=1)
        for i in range(3):
            a.runner.start(sleep(i, 0.2))
        await asyncio.sleep(0.01)
        assert sorted(a.runner.queued()) == [("j", 1), ("j", 2)]
        drain = asyncio.create_task(a.drain(timeout=30.0))
        await asyncio.sleep(0.05)
        assert reports(a) == {1: HANDED_BACK, 2: HANDED_BACK}  # before the running one ends
        await drain
        assert reports(a) == {0: SUCCEEDED, 1: HANDED_BACK, 2: HANDED_BACK}
        assert not a.runner.running
        a.runner.start(sleep(3, 0.0))  # placed before the leader heard: handed back, never run
        assert reports(a)[3] == HANDED_BACK and not a.runner.running
        await a.stop()

    asyncio.run(scenario())


def test_past_the_drain_timeout_running_tasks_are_handed_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = agent(tmp_path, slots=2)
        a.runner.start(sleep(0, 60.0))
        a.runner.start(sleep(1, 0.01))
        await asyncio.sleep(0.05)
        await a.drain(timeout=0.1)
        assert reports(a) == {0: HANDED_BACK, 1: SUCCEEDED}
        assert not a.runner.running
        await a.stop()

    asyncio.run(scenario())


def test_a_second_signal_cuts_the_drain_short(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = agent(tmp_path, slots=1)
        a.runner.start(sleep(0, 60.0))
        await asyncio.sleep(0.01)
        hurry = asyncio.Event()
        drain = asyncio.create_task(a.drain(timeout=60.0, hurry=hurry))
        await asyncio.sleep(0.05)
        assert not drain.done()
        hurry.set()
        await asyncio.wait_for(drain, 5.0)
        assert reports(a) == {0: HANDED_BACK}
        await a.stop()

    asyncio.run(scenario())


def test_an_undrain_calls_off_an_operators_drain_but_not_a_shutdown(tmp_path: Path) -> None:
    async def scenario() -> None:
        a = agent(tmp_path, slots=1)
        a.runner.start(sleep(0, 0.3))
        await asyncio.sleep(0.01)
        a._drain_requested(True, 60.0)
        await asyncio.sleep(0.01)
        assert a.runner.draining and a.link.drained
        a._drain_requested(False, None)
        assert not a.runner.draining and not a.link.drained
        a.runner.start(sleep(1, 0.0))
        assert ("j", 1) in a.runner.running  # takes work again; the running task was left alone
        await a.runner.wait_idle()
        assert reports(a) == {0: SUCCEEDED, 1: SUCCEEDED}
        a.shutting_down = True
        a.runner.draining = True
        a._drain_requested(False, None)
        assert a.runner.draining
        await a.stop()

    asyncio.run(scenario())

"""The executor's slot gate: bounded parallelism, priority order, cancellation while queued."""

from __future__ import annotations

import asyncio

from rota.executor.gate import PriorityGate


def test_gate_bounds_parallelism_and_starts_highest_priority_first():
    async def scenario() -> list[str]:
        gate = PriorityGate(1)
        order: list[str] = []

        async def task(name: str, priority: int) -> None:
            await gate.acquire(priority)
            order.append(name)
            await asyncio.sleep(0.01)
            gate.release()

        await gate.acquire(0)  # one slot taken: everything below queues
        tasks = [
            asyncio.create_task(task(n, p)) for n, p in [("low", 10), ("mid", 50), ("high", 90), ("mid2", 50)]
        ]
        await asyncio.sleep(0)
        assert gate.queued == 4 and order == []
        gate.release()
        await asyncio.gather(*tasks)
        assert gate.busy == 0
        return order

    assert asyncio.run(scenario()) == ["high", "mid", "mid2", "low"]


def test_cancelled_waiter_gives_its_turn_away():
    async def scenario() -> None:
        gate = PriorityGate(1)
        await gate.acquire(0)
        waiter = asyncio.create_task(gate.acquire(90))
        other = asyncio.create_task(gate.acquire(10))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        gate.release()
        await asyncio.wait_for(other, 1)
        assert gate.busy == 1 and gate.queued == 0
        gate.release()
        assert gate.busy == 0

    asyncio.run(scenario())

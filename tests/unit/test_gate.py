"""The executor's slot gate: bounded parallelism, priority order, cancellation while queued."""

from __future__ import annotations

import asyncio

from rota.executor.gate import TAKEN, PriorityGate


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


def test_a_slot_holder_takes_along_only_the_qualifying_head_of_the_queue():
    async def scenario() -> None:
        gate = PriorityGate(1)
        await gate.acquire(0)
        waiters = {
            name: asyncio.create_task(gate.acquire(priority, rider))
            for name, priority, rider in [
                ("call-a", 90, "call"), ("call-b", 90, "call"), ("shell", 50, "shell"),
                ("call-c", 10, "call"), ("plain", 95, None),
            ]
        }  # fmt: skip
        await asyncio.sleep(0)
        # The head is "plain" (priority 95, no rider): nothing may overtake it.
        assert gate.take(10, lambda r: r == "call") == []
        gate.release()
        await asyncio.sleep(0)
        assert waiters["plain"].result() is None  # it got the slot
        assert gate.take(10, lambda r: r == "call") == ["call", "call"]  # a and b; shell stops it
        await asyncio.sleep(0)
        assert waiters["call-a"].result() is TAKEN and waiters["call-b"].result() is TAKEN
        assert not waiters["shell"].done() and not waiters["call-c"].done()
        assert gate.busy == 1 and gate.queued == 2
        for t in waiters.values():
            t.cancel()

    asyncio.run(scenario())

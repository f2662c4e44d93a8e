"""The status view's background looks (scheduler/looked.py): callers get the latest look while it is
fresh, and look for themselves otherwise."""

from __future__ import annotations

import asyncio

from rota.scheduler.looked import Looked


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting(clock: Clock) -> tuple[Looked[int], list[float]]:
    looks: list[float] = []

    async def look() -> int:
        looks.append(clock.now)
        return len(looks)

    return Looked(look, every=1.0, stale=3.0, clock=clock), looks


def test_a_caller_looks_itself_until_a_look_is_fresh_then_gets_it_until_it_is_stale() -> None:
    clock = Clock()
    view, looks = counting(clock)
    assert view.fresh() is None
    assert asyncio.run(view.get()) == 1  # nothing seen yet: looked live
    clock.now += 2.9
    assert asyncio.run(view.get()) == 1 and len(looks) == 1
    clock.now += 0.2  # 3.1 s old: stale
    assert view.fresh() is None
    assert asyncio.run(view.get()) == 2 and looks == [100.0, clock.now]


def test_a_slow_older_look_never_replaces_a_newer_one() -> None:
    clock = Clock()

    async def run() -> int | None:
        release = asyncio.Event()
        calls = 0

        async def look() -> int:
            nonlocal calls
            calls += 1
            mine = calls
            if mine == 1:
                await release.wait()  # the first look hangs until the second is done
            return mine

        view = Looked(look, clock=clock)
        slow = asyncio.create_task(view.refresh())
        await asyncio.sleep(0)
        clock.now += 1.0
        assert await view.refresh() == 2
        release.set()
        assert await slow == 1
        return view.fresh()

    assert asyncio.run(run()) == 2


def test_the_background_look_goes_on_after_a_failure() -> None:
    async def run() -> tuple[int, int | None]:
        calls = 0

        async def look() -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("etcd is away")
            return calls

        view = Looked(look, every=0.001)
        task = asyncio.create_task(view.run())
        while calls < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        return calls, view.fresh()

    calls, seen = asyncio.run(run())
    assert calls >= 3 and seen is not None and seen >= 2

"""Big jobs' objects are kept out of the cyclic collector's walks, and given back once no big job
holds its tasks."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from rota.scheduler import collector as collector_mod
from rota.scheduler.collector import Collector, collector_off
from rota.scheduler.core import Job


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def job(job_id: str, tasks: int = 3, state: str | None = None) -> Job:
    j = SimpleNamespace(id=job_id, tasks=[None] * tasks, state=state)
    j.release = lambda: setattr(j, "tasks", [])
    return cast(Job, j)


def end(j: Any, released: bool) -> None:
    j.state = "SUCCEEDED"
    if released:
        j.release()


@pytest.fixture
def now() -> list[float]:
    return [1000.0]


@pytest.fixture
def collector(now: list[float]) -> Iterator[Collector]:
    gc.unfreeze()
    c = Collector(big_job=2, clock=lambda: now[0])
    try:
        yield c
    finally:
        c.clear()
        gc.unfreeze()


def test_objects_stay_frozen_until_no_big_job_holds_its_tasks(collector: Any) -> None:
    collector.started(job("small", tasks=2))
    collector.started(job("ended", state="SUCCEEDED"))
    assert gc.get_freeze_count() == 0, "neither a small nor an ended job freezes anything"
    a, b = job("a"), job("b")
    collector.started(a)
    assert gc.get_freeze_count() > 0
    collector.started(b)
    end(a, released=True)
    collector.settle()
    assert gc.get_freeze_count() > 0, "another big job still runs"
    end(b, released=False)
    collector.settle()
    assert gc.get_freeze_count() > 0, "an ended job still holds its tasks (a client may read them)"
    b.release()  # held as a summary now
    collector.settle()
    assert gc.get_freeze_count() == 0 and not collector.big


def test_an_ended_jobs_cycles_are_collected_once_given_back(collector: Any) -> None:
    node = Node()
    ref = weakref.ref(node)
    a = job("a")
    collector.started(a)
    del node
    gc.collect()
    assert ref() is not None, "a frozen cycle is not walked, so not freed"
    end(a, released=True)
    collector.settle()
    gc.collect()
    assert ref() is None


def test_a_big_job_is_built_with_the_collector_off_and_frozen_once_built(collector: Any) -> None:
    seen: list[bool] = []

    def make() -> Job:
        seen.append(gc.isenabled())
        return job("built")

    for enabled in (True, False):
        gc.enable() if enabled else gc.disable()
        try:
            built = asyncio.run(collector.build(make))
            assert seen[-1] is False, "the collector walked a half-built job"
            assert gc.isenabled() is enabled, "the collector's own state is restored"
            assert gc.get_freeze_count() > 0 and collector.big == {"built": built}
        finally:
            gc.enable()
        collector.clear()


def test_a_built_job_whose_submission_failed_gives_back_what_it_froze(collector: Any) -> None:
    other = job("other")
    built = asyncio.run(collector.build(lambda: job("built")))
    collector.dropped(other)  # a small one, never frozen for: its tasks go all the same
    assert other.tasks == [] and gc.get_freeze_count() > 0
    collector.dropped(built)
    assert built.tasks == [] and gc.get_freeze_count() == 0 and not collector.big


def test_big_ended_jobs_are_let_go_of_a_while_after_the_last_big_job_ended(
    collector: Any, now: list[float]
) -> None:
    """An ended job may hold its tasks for a day; what was frozen with it must not wait that long,
    nor be handed back while it still holds them (the next full collection would walk them)."""
    asked: list[str] = []
    collector.let_go = lambda j: (asked.append(j.id), j.release())
    a, b = job("a"), job("b")
    collector.started(a)
    collector.started(b)
    end(a, released=False)
    collector.settle()
    now[0] += collector_mod.HELD_AFTER_END * 2
    collector.settle()
    assert gc.get_freeze_count() > 0 and not asked, "b still runs"
    end(b, released=False)
    collector.settle()  # the clock starts when the last big job has ended
    now[0] += collector_mod.HELD_AFTER_END - 1
    collector.settle()
    assert gc.get_freeze_count() > 0 and not asked
    now[0] += 1
    collector.settle()
    assert sorted(asked) == ["a", "b"] and a.tasks == [] and b.tasks == []
    collector.settle()
    assert gc.get_freeze_count() == 0 and not collector.big
    collector.settle()
    assert sorted(asked) == ["a", "b"], "asked once"


def test_everything_is_given_back_a_grace_later_when_a_job_cannot_be_let_go_of(
    collector: Any, now: list[float]
) -> None:
    asked: list[str] = []
    collector.let_go = lambda j: asked.append(j.id)  # the core does not hold it (or not yet ended there)
    a = job("a")
    collector.started(a)
    end(a, released=False)
    collector.settle()
    now[0] += collector_mod.HELD_AFTER_END
    collector.settle()
    assert asked == ["a"] and gc.get_freeze_count() > 0
    now[0] += collector_mod.LET_GO_GRACE - 1
    collector.settle()
    assert gc.get_freeze_count() > 0
    now[0] += 1
    collector.settle()
    assert gc.get_freeze_count() == 0 and not collector.big and asked == ["a"]


def test_concurrent_builds_keep_the_collector_off_until_the_last_is_built(collector: Any) -> None:
    release_second = threading.Event()
    seen: list[bool] = []

    def second() -> Job:
        release_second.wait(10)
        seen.append(gc.isenabled())
        return job("second")

    async def both() -> None:
        slow = asyncio.create_task(collector.build(second))
        await asyncio.sleep(0)
        await collector.build(lambda: job("first"))
        release_second.set()  # the first is built: the second goes on building after it
        await slow

    gc.enable()
    asyncio.run(both())
    assert seen == [False] and gc.isenabled()


def test_a_leader_that_stops_gives_back_what_it_froze(collector: Any) -> None:
    collector.started(job("a"))
    assert gc.get_freeze_count() > 0
    collector.clear()
    assert gc.get_freeze_count() == 0 and not collector.big


def test_a_rebuild_and_a_build_share_one_switch_of_the_collector(collector: Any) -> None:
    """A leader's rebuild and a big job's build both turn the collector off: the first to end must
    not turn it back on under the other."""
    gc.enable()
    with collector_off():
        built = asyncio.run(collector.build(lambda: job("built")))
        assert not gc.isenabled(), "a build ending inside a rebuild turned the collector on"
    assert gc.isenabled() and collector.big == {"built": built}

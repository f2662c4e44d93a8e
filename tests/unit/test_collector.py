"""Big running jobs' objects are kept out of the cyclic collector's walks, and given back after."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from rota.scheduler.collector import Collector
from rota.scheduler.core import Job


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def job(job_id: str, tasks: int = 3, state: str | None = None) -> Job:
    return cast(Job, SimpleNamespace(id=job_id, tasks=[None] * tasks, state=state))


@pytest.fixture
def collector() -> Iterator[Collector]:
    gc.unfreeze()
    c = Collector(big_job=2)
    try:
        yield c
    finally:
        c.clear()
        gc.unfreeze()


def test_objects_are_frozen_while_a_big_job_runs_and_given_back_after_the_last_ends(collector: Any) -> None:
    collector.started(job("small", tasks=2))
    collector.started(job("ended", state="SUCCEEDED"))
    assert gc.get_freeze_count() == 0, "neither a small nor an ended job freezes anything"
    collector.started(job("a"))
    frozen = gc.get_freeze_count()
    assert frozen > 0
    collector.started(job("b"))
    collector.ended("a")
    assert gc.get_freeze_count() >= frozen, "another big job still runs"
    collector.ended("small")  # a small job's end changes nothing
    assert gc.get_freeze_count() >= frozen
    collector.ended("b")
    assert gc.get_freeze_count() == 0


def test_an_ended_jobs_cycles_are_collected_once_given_back(collector: Any) -> None:
    node = Node()
    ref = weakref.ref(node)
    collector.started(job("a"))
    del node
    gc.collect()
    assert ref() is not None, "a frozen cycle is not walked, so not freed"
    collector.ended("a")
    gc.collect()
    assert ref() is None


def test_a_leader_that_stops_gives_back_what_it_froze(collector: Any) -> None:
    collector.started(job("a"))
    assert gc.get_freeze_count() > 0
    collector.clear()
    assert gc.get_freeze_count() == 0 and not collector.big

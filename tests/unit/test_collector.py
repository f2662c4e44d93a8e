"""Big running jobs' objects are kept out of the cyclic collector's walks, and given back after."""

from __future__ import annotations

import gc
import weakref

from rota.scheduler.collector import Collector


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_objects_are_frozen_while_a_big_job_runs_and_given_back_after_the_last_ends() -> None:
    gc.unfreeze()
    c = Collector()
    try:
        c.started("a")
        frozen = gc.get_freeze_count()
        assert frozen > 0
        c.started("b")
        c.ended("a")
        assert gc.get_freeze_count() >= frozen, "another big job still runs"
        c.ended("unknown")  # a small job's end changes nothing
        assert gc.get_freeze_count() >= frozen
        c.ended("b")
        assert gc.get_freeze_count() == 0
    finally:
        c.clear()
        gc.unfreeze()


def test_an_ended_jobs_cycles_are_collected_once_given_back() -> None:
    gc.unfreeze()
    c = Collector()
    try:
        node = Node()
        ref = weakref.ref(node)
        c.started("a")
        del node
        gc.collect()
        assert ref() is not None, "a frozen cycle is not walked, so not freed"
        c.ended("a")
        gc.collect()
        assert ref() is None
    finally:
        c.clear()
        gc.unfreeze()


def test_a_leader_that_stops_gives_back_what_it_froze() -> None:
    gc.unfreeze()
    c = Collector()
    c.started("a")
    assert gc.get_freeze_count() > 0
    c.clear()
    assert gc.get_freeze_count() == 0 and not c.big

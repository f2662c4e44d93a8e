"""Cron schedules on a real cluster (issue 16): a schedule fires once per slot across leader
SIGKILLs timed at its fire times (the jobs counted, and each job's own side effect); overlap =
"skip" never runs two of its jobs at once; pause, resume and delete do what they say."""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path

import pytest

from rota.common.cron import fire_stamp

pytestmark = [pytest.mark.etcd, pytest.mark.usefixtures("taskfuncs_importable")]


def when(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def scheduled(c, schedule_id: str) -> list[dict]:
    """The jobs a schedule made, oldest first."""
    return [j for j in c.list_jobs(limit=1000) if j["id"].startswith(schedule_id + ".")]


def next_fire_after(c, after: float) -> float | None:
    fire = when(c.list_schedules()[0]["next_fire"])
    return fire if fire > after else None


def step_job(stamps: Path, schedule: str, seconds: float, **keys) -> dict:
    return {
        "name": "tick", "id": "tick", "schedule": schedule, **keys,
        "task": [{"name": "t", "kind": "call", "function": "taskfuncs:step", "args": [str(stamps), "t", seconds]}],
    }  # fmt: skip


def runs(stamps: Path) -> list[tuple[float, float]]:
    lines = stamps.read_text().splitlines() if stamps.exists() else []
    return sorted((float(a), float(b)) for _, a, b in (line.split() for line in lines))


def test_a_schedule_fires_once_per_slot_across_leader_kills_at_its_fire_times(
    local_cluster, wait_until, tmp_path
):
    cluster = local_cluster(executors=1, executor_slots=4)
    stamps = tmp_path / "stamps"
    with cluster.client(timeout=30) as c:
        reply = c.submit_job(step_job(stamps, "*/4 * * * * *", 0.0, overlap="allow", **{"catch-up": 5}))
        assert reply["created"] and reply["id"] == "tick"
        first = when(reply["schedule"]["next_fire"])
        fire = 0.0
        for offset in (-0.1, 0.0, 0.02, 0.05, 0.1):
            # One kill per slot: a new leader may still show the slot it has yet to catch up.
            fire = wait_until("the next slot", lambda f=fire: next_fire_after(c, f), timeout=30)
            old = cluster.leader()
            time.sleep(max(0.0, fire + offset - time.time()))
            old.signal(signal.SIGKILL)
            old.wait(10)
            cluster.wait_for_leader(exclude=old.name, timeout=30)
            old.start()
            cluster.wait_for_leader(timeout=30, all_reachable=True)
        last = when(c.list_schedules()[0]["next_fire"]) - 4
        time.sleep(max(0.0, last + 1 - time.time()))
        doc = c.list_schedules()[0]
        last = when(doc["last_fire"])
        jobs = scheduled(c, "tick")
        for j in jobs:
            assert c.wait_job(j["id"], timeout=60)["state"] == "SUCCEEDED"
    slots = [first + 4 * i for i in range(round((last - first) / 4) + 1)]
    assert len(slots) >= 5  # one per kill at least
    assert [j["id"] for j in jobs] == [f"tick.{fire_stamp(t)}" for t in slots]
    assert doc["fired"] == len(slots) and doc["skipped"] == 0 and doc["missed"] == 0
    assert len(runs(stamps)) == len(slots)  # each job's task ran once


def test_overlap_skip_pause_resume_and_delete(local_cluster, wait_until, tmp_path):
    cluster = local_cluster(executors=1, executor_slots=4)
    stamps = tmp_path / "stamps"
    with cluster.client(timeout=30) as c:
        c.submit_job(step_job(stamps, "* * * * * *", 2.5))  # every second, each job 2.5 s long
        wait_until("skips", lambda: c.list_schedules()[0]["skipped"] >= 4, timeout=30)
        paused = c.update_schedule("tick", "pause")
        assert paused["paused"] and paused["next_fire"] is None
        fired = paused["fired"]
        time.sleep(3)
        assert c.list_schedules()[0]["fired"] == fired
        resumed = c.update_schedule("tick", "resume")
        assert not resumed["paused"] and when(resumed["next_fire"]) > time.time()
        wait_until("a fire after resume", lambda: c.list_schedules()[0]["fired"] > fired, timeout=30)
        gone = c.update_schedule("tick", "delete")
        assert gone["id"] == "tick" and c.list_schedules() == []
        count = len(scheduled(c, "tick"))
        time.sleep(2)
        jobs = scheduled(c, "tick")
        assert len(jobs) == count
        for j in jobs:
            c.wait_job(j["id"], timeout=60)
    spans = runs(stamps)
    assert len(spans) == count >= 2
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, spans  # never two at once

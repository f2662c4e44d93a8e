"""A short chaos round (bench/chaos.py): faults under load, then every promise checked (issue 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import chaos
from rota.metastore.client import KV, Event
from rota.metastore.keys import JOBS, TASKS

pytestmark = pytest.mark.etcd


@pytest.mark.timeout(240)
def test_short_chaos_keeps_every_promise(tmp_path: Path) -> None:
    report = chaos.run_chaos(tmp_path, faults=12, seed=1, duration_limit=40, settle_timeout=60)
    summary = report.summary()
    print(summary)
    assert not report.errors, summary
    assert len(report.faults) >= 10, summary
    assert len({f["type"] for f in report.faults}) >= 3, summary
    assert report.jobs_acknowledged >= 5, summary
    assert report.check("1 no lost jobs").count == 0, summary
    assert report.check("2 terminal state written once").count == 0, summary
    assert report.check("3 no stale results").count == 0, summary
    assert report.check("4 attempts within bounds").count == 0, summary
    assert report.ok, summary
    assert report.tasks_completed == report.tasks_total > 0, summary


def _put(key: bytes, rev: int, value: dict[str, object]) -> Event:
    return Event("put", KV(key, json.dumps(value).encode(), 1, rev, 1, 0), None)


def test_checker_flags_every_kind_of_violation() -> None:
    """The checker itself, on a made-up history that breaks each promise once."""
    t0, t1 = TASKS + b"j1/00000000", TASKS + b"j1/00000001"
    past = chaos.MOST_ATTEMPTS + 1  # lost attempts do not use up max-attempts: the bound is above it
    ok = {"exit_code": 0, "stdout": "j1/0 1 100\n"}
    history = [
        _put(t0, 10, {"s": "ASSIGNED", "a": 1, "e": "x"}),
        _put(t0, 11, {"s": "SUCCEEDED", "a": 1, "e": "x", "r": ok}),
        _put(t0, 12, {"s": "SUCCEEDED", "a": 1, "e": "y", "r": ok}),  # completed twice
        _put(t1, 13, {"s": "ASSIGNED", "a": 2, "e": "x"}),
        _put(t1, 14, {"s": "ASSIGNED", "a": past, "e": "x", "f": 6}),  # past the bounds, 6 failures
        _put(t1, 15, {"s": "SUCCEEDED", "a": 1, "e": "x", "r": {"stdout": "j1/1 3 7\n"}}),  # stale
    ]
    view = chaos.EtcdView(
        jobs={"j1": {"id": "j1", "state": "SUCCEEDED"}},
        tasks={
            "j1/0": {"s": "SUCCEEDED", "a": 1, "e": "y", "r": ok},
            "j1/1": {"s": "SUCCEEDED", "a": 1, "e": "x", "r": {"stdout": "j1/1 3 7\n"}},
        },
        task_history=history,
        job_history=[_put(JOBS + b"j1", 16, {"id": "j1", "state": "SUCCEEDED"})],
        revision=16,
    )
    side = chaos.SideLog(
        starts={"j1/0": {1}, "j1/1": {1, 3, past + 1}}, ends={"j1/0": {1}}, bad_lines=0, lines=5
    )
    report = chaos.ChaosReport(seed=0, faults_requested=0, base_dir="-")
    chaos.check_outcome(report, {"j1": 2, "lost": 1}, {}, {}, view, side)
    assert report.check("1 no lost jobs").count == 1  # "lost" has no record
    assert report.check("2 terminal state written once").count == 1
    # j1/1: no end line for attempt 1, stdout of attempt 3, attempt ``past`` written before it
    assert report.check("3 no stale results").count == 3
    # j1/1: started attempt past + 1, and a record with attempt ``past`` and 6 failures (of 5)
    assert report.check("4 attempts within bounds").count == 3
    assert report.check("5 tasks run more than once").count == 1
    assert not report.ok

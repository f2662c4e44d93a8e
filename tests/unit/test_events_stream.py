"""The event stream's translation of etcd events: pure, no etcd."""

from __future__ import annotations

import json

from rota.metastore import keys
from rota.metastore.client import KV, Event
from rota.scheduler.events import by_revision, change


def ev(key: bytes, value: dict | None, rev: int, prev: dict | None = None) -> Event:
    kv = KV(key, b"" if value is None else json.dumps(value).encode(), 1, rev, 1, 0)
    before = None if prev is None else KV(key, json.dumps(prev).encode(), 1, rev - 1, 1, 0)
    return Event("delete" if value is None else "put", kv, before)


def test_job_and_task_records_become_changes_and_other_keys_nothing() -> None:
    assert change(ev(keys.job("j"), {"id": "j", "state": None}, 5)) == {"job": "j", "event": "submitted"}
    assert change(ev(keys.job("j"), {"id": "j", "state": "FAILED"}, 6)) == {
        "job": "j",
        "event": "ended",
        "state": "FAILED",
    }
    assert change(ev(keys.job("j"), None, 7)) == {"job": "j", "event": "expired"}
    task = change(ev(keys.task("j", 3), {"s": "RUNNING", "a": 2, "e": "e1"}, 8))
    assert task == {
        "job": "j",
        "task": 3,
        "event": "task",
        "state": "RUNNING",
        "attempt": 2,
        "executor": "e1",
    }
    assert change(ev(keys.WRITE_ORDER, {"x": 1}, 9)) is None
    assert change(ev(keys.job("other"), {"state": None}, 9), job_filter="j") is None


def test_progress_alone_is_not_a_state_change() -> None:
    same = ev(
        keys.task("j", 0), {"s": "RUNNING", "a": 1, "p": [0.5, "half"]}, 9, prev={"s": "RUNNING", "a": 1}
    )
    assert change(same) is None


def test_changes_are_grouped_by_revision() -> None:
    events = [
        ev(keys.job("j"), {"state": None}, 10), ev(keys.task("j", 0), {"s": "ASSIGNED", "a": 1}, 10),
        ev(keys.WRITE_ORDER, {}, 11), ev(keys.task("j", 0), {"s": "RUNNING", "a": 1}, 12),
    ]  # fmt: skip
    assert [(r, len(c)) for r, c in by_revision(events)] == [(10, 2), (12, 1)]

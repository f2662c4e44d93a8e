"""The event stream: job and task state changes, read from etcd's own history.

Every state change the leader commits is a write to a job or task record, so etcd's watch is the
stream, and its revision the cursor: any master serves it (not only the leader), a new leader
changes nothing, and a client that reconnects with the revision after the last one it got
misses nothing and sees nothing twice. All the changes of one revision (one transaction) travel
as one message, so a cut connection never leaves half a revision delivered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from rota.metastore import keys
from rota.metastore.client import Event

#: Event streams one master serves at once.
MAX_STREAMS = 64


def change(ev: Event, job_filter: str = "") -> dict[str, Any] | None:
    """What one etcd event says of a job or a task; None for other keys (or other jobs)."""
    key = ev.kv.key
    if key.startswith(keys.JOBS):
        job_id = keys.job_id(key)
        if job_filter and job_id != job_filter:
            return None
        if ev.type == "delete":
            return {"job": job_id, "event": "expired"}
        try:
            rec = json.loads(ev.kv.value)
        except ValueError:
            return None
        state = rec.get("state")
        if state is None:
            return {"job": job_id, "event": "submitted"}
        return {"job": job_id, "event": "ended", "state": state}
    if key.startswith(keys.TASKS) and ev.type == "put":
        job_id, index = keys.task_of(key)
        if job_filter and job_id != job_filter:
            return None
        try:
            rec = json.loads(ev.kv.value)
        except ValueError:
            return None
        out: dict[str, Any] = {"job": job_id, "task": index, "event": "task", "state": rec.get("s", "PENDING"),
                               "attempt": int(rec.get("a", 0))}  # fmt: skip
        if rec.get("e"):
            out["executor"] = rec["e"]
        if ev.prev is not None:
            try:
                before = json.loads(ev.prev.value)
            except ValueError:
                before = {}
            if before.get("s") == out["state"] and int(before.get("a", 0)) == out["attempt"]:
                return None  # progress or a checkpoint count: not a state change
        return out
    return None


def by_revision(events: Iterable[Event], job_filter: str = "") -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(revision, changes) for each revision among ``events`` that changed a job or a task."""
    revision = 0
    group: list[dict[str, Any]] = []
    for ev in events:
        if ev.kv.mod_revision != revision:
            if group:
                yield revision, group
            revision, group = ev.kv.mod_revision, []
        c = change(ev, job_filter)
        if c is not None:
            group.append(c)
    if group:
        yield revision, group

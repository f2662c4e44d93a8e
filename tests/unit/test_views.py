"""An ended job read back from etcd looks exactly as it did from memory (scheduler/views.py)."""

from __future__ import annotations

import json
import time

from rota.common.jobspec import JobSpec
from rota.common.states import FAILED, SUCCEEDED
from rota.scheduler.core import EndedJob, Job, restore_task
from rota.scheduler.views import job_page_doc, stored_page_doc, task_names

SPEC = JobSpec.from_dict(
    {
        "name": "mixed",
        "task": [
            {"name": "one", "kind": "noop"},
            {"name": "many", "kind": "noop", "count": 4},
            {"name": "part", "kind": "noop", "shards": 3},
        ],
    }
)


def test_task_names_of_any_window_without_building_the_tasks() -> None:
    every = [t.name for t in SPEC.expand()]
    assert task_names(SPEC, 0, 100) == every
    for offset in range(len(every)):
        for limit in (1, 2, 5):
            assert task_names(SPEC, offset, limit) == every[offset : offset + limit]


def test_a_page_from_stored_records_matches_the_page_from_memory() -> None:
    job = Job("j", SPEC, 7, time.time())
    records = {}
    for i in range(len(job.tasks)):
        rec = {
            "s": FAILED if i == 3 else SUCCEEDED,
            "a": 2 if i == 3 else 1,
            "e": "ex-1",
            "f": 2 if i == 3 else 0,
        }
        rec["r"] = {"error": "boom"} if i == 3 else {"value": i, "stdout": "x" * 3, "truncated": True}
        if i == 5:
            rec["l"] = 1
        restore_task(job, i, rec)
        records[i] = json.loads(json.dumps(rec))
    job.state, job.ended = FAILED, time.time()
    summary = EndedJob.from_record("j", 7, json.loads(json.dumps(job.record())))
    assert summary is not None
    for offset, limit in ((0, 100), (2, 3), (7, 5)):
        stored = {i: r for i, r in records.items() if offset <= i < offset + limit}
        assert stored_page_doc(summary, SPEC, stored, offset, limit) == job_page_doc(job, offset, limit)

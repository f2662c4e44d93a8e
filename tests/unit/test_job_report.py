"""The job's report (task key ``report = true``): parsing, where the report comes from, and how
get-job (from memory or from etcd records) and the CLI show it. (tests/integration/test_jobs.py runs it.)"""

from __future__ import annotations

import json
import time

import pytest

from rota.client.cli import job_text
from rota.common.jobspec import JobSpec, JobSpecError
from rota.common.states import FAILED, RUNNING, SUCCEEDED
from rota.scheduler.core import EndedJob, Job
from rota.scheduler.views import REPORT_MAX, job_page_doc, report_of, stored_page_doc


def spec(*extra: dict) -> JobSpec:
    return JobSpec.from_dict(
        {
            "name": "r",
            "task": [
                {"name": "work", "kind": "noop", "count": 3},
                {"name": "sum", "kind": "shell", "command": "echo", "report": True},
                *extra,
            ],
        }
    )


def test_the_report_key_is_one_task_of_the_job() -> None:
    s = spec()
    assert s.tasks[1].report and not s.tasks[0].report
    assert s.report_index() == 3
    assert s.to_dict()["task"][1]["report"] is True
    assert JobSpec.from_stored(s.to_dict()).report_index() == 3
    assert JobSpec.from_dict({"name": "x", "task": [{"name": "a", "kind": "noop"}]}).report_index() is None
    with pytest.raises(
        JobSpecError, match=r"task\[2\]\.report: a job has at most one report task \(task\[1\]"
    ):
        spec({"name": "again", "kind": "noop", "report": True})
    with pytest.raises(JobSpecError, match=r"task\[2\]\.report: expected true or false"):
        spec({"name": "bad", "kind": "noop", "report": "yes"})
    with pytest.raises(JobSpecError, match=r"task\[2\]\.report: the report task is one task"):
        spec({"name": "many", "kind": "noop", "shards": 2, "report": True})
    # Any kind may be the report task.
    assert spec({"name": "c", "kind": "call", "function": "m:f"}).report_index() == 3


def test_the_report_is_a_call_value_or_the_last_stdout_line_as_a_json_object() -> None:
    ok = {"exit_code": 0, "stdout": "", "stderr": "", "value": None, "error": None}
    assert report_of(SUCCEEDED, {**ok, "value": {"records": 5}}) == {"records": 5}
    assert report_of(SUCCEEDED, {**ok, "stdout": 'table\n  a  1\n{"records": 5, "p99": 1.5}\n\n'}) == {
        "records": 5,
        "p99": 1.5,
    }
    for stdout in ("no json here\n", '{"a": 1}\nthen a line\n', "[1, 2]\n", "{not json}\n", ""):
        assert report_of(SUCCEEDED, {**ok, "stdout": stdout}) is None, stdout
    assert report_of(SUCCEEDED, {**ok, "value": [1, 2]}) is None  # a report is an object
    assert report_of(RUNNING, {**ok, "value": {"a": 1}}) is None
    assert report_of(FAILED, {**ok, "stdout": '{"a": 1}'}) is None
    assert report_of(SUCCEEDED, None) is None
    big = {"x": "y" * REPORT_MAX}
    assert report_of(SUCCEEDED, {**ok, "value": big}) is None
    assert report_of(SUCCEEDED, {**ok, "stdout": json.dumps(big)}) is None


def finished(job: Job, index: int, result: dict) -> None:
    task = job.tasks[index]
    task.state, task.attempt, task.result = SUCCEEDED, 1, result


def test_get_job_shows_the_report_from_memory_and_from_stored_records_alike() -> None:
    s = spec()
    job = Job("j", s, 1, time.time())
    assert "report" not in job_page_doc(job, 0, 10)
    finished(
        job, 3, {"exit_code": 0, "stdout": '{"total": 12}\n', "stderr": "", "value": None, "error": None}
    )
    assert job_page_doc(job, 0, 10)["report"] == {"total": 12}
    assert job_page_doc(job, 0, 1)["report"] == {"total": 12}  # whatever page of tasks
    ended = EndedJob("j", 1, job.created, SUCCEEDED, time.time(), "r", 50, job.counts, None)
    record = job.tasks[3].record()
    assert stored_page_doc(ended, s, {}, 0, 1, record)["report"] == {"total": 12}
    assert "report" not in stored_page_doc(ended, s, {}, 0, 1, None)


def test_the_cli_prints_the_report_after_the_job() -> None:
    doc = {
        "id": "j",
        "name": "r",
        "state": SUCCEEDED,
        "priority": 50,
        "counts": {SUCCEEDED: 1},
        "tasks": [],
        "report": {"records": 500000, "rate": 123456.789, "latency_ms": {"p50": 1.5, "p99": 9}, "ok": True},
    }
    text = job_text(doc)
    assert text.endswith(
        "\n\nreport:\n"
        "  records:    500000\n"
        "  rate:       123457\n"
        "  latency_ms: p50=1.5  p99=9\n"
        "  ok:         true"
    ), text
    assert "report" not in job_text({**doc, "report": None})

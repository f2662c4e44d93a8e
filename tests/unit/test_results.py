"""Result caps (issue 12): whatever an executor sends, the record the leader stores fits etcd."""

from __future__ import annotations

import json

from rota.common import results
from rota.common.states import FAILED, SUCCEEDED
from rota.protos import rota_pb2
from rota.scheduler.translate import report


def _report(**fields):
    return rota_pb2.TaskReport(task=rota_pb2.TaskRef(job_id="j", index=0, attempt=1), **fields)


def test_a_small_result_passes_unchanged():
    r = report(_report(state=SUCCEEDED, stdout="hi\n", value_json=b"42"))
    assert r.state == SUCCEEDED and r.result["value"] == 42 and "truncated" not in r.result


def test_an_oversize_value_fails_the_task_with_the_reason():
    big = json.dumps("x" * (10 * 1024 * 1024)).encode()
    r = report(_report(state=SUCCEEDED, value_json=big))
    assert r.state == FAILED and r.result["value"] is None
    assert "over the 262144 allowed (VALUE_CAP)" in r.result["error"]


def test_unreadable_or_deeply_nested_value_json_fails_cleanly():
    for raw in (b"{nope", b"[" * 100_000 + b"]" * 100_000):
        r = report(_report(state=SUCCEEDED, value_json=raw))
        assert r.state == FAILED and r.result["error"] == "the return value is not readable JSON"


def test_outputs_and_errors_are_cut_with_the_mark():
    r = report(_report(state=FAILED, stdout="o" * 200_000, stderr="e" * 70_000, error="x" * 10_000))
    assert r.result["truncated"] is True
    assert r.result["stdout"] == "o" * results.OUTPUT_CAP + results.TRUNCATED_MARK
    assert len(r.result["error"]) == results.ERROR_CAP + len(results.TRUNCATED_MARK)


def test_escaped_output_is_cut_until_the_record_fits():
    emoji = "\U0001f600" * results.OUTPUT_CAP  # 12 bytes each once escaped as JSON
    r = report(_report(state=SUCCEEDED, stdout=emoji, stderr=emoji, value_json=b"1"))
    assert r.state == SUCCEEDED and r.result["truncated"] is True
    assert len(json.dumps(r.result)) <= results.RECORD_CAP


def test_the_store_never_sends_a_task_record_over_etcds_limit() -> None:
    """The last guard behind the result caps: the state is kept, the result is replaced."""
    from rota.scheduler.store import MAX_RECORD_BYTES, task_value

    small = {"s": "SUCCEEDED", "a": 1, "r": {"value": 1}}
    assert json.loads(task_value("j", 0, small)) == small
    huge = {"s": "SUCCEEDED", "a": 2, "e": "ex", "r": {"value": "x" * MAX_RECORD_BYTES}}
    stored = task_value("j", 1, huge)
    assert len(stored) < 1000
    rec = json.loads(stored)
    assert rec["s"] == "SUCCEEDED" and rec["a"] == 2 and rec["e"] == "ex"
    assert "over etcd's request limit" in rec["r"]["error"] and rec["r"]["truncated"] is True

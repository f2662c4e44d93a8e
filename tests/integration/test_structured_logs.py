"""``--log-format json``: one JSON object per line, task events carrying job, task, attempt and executor ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rota.devtools.localcluster import LocalCluster

pytestmark = pytest.mark.etcd

JSON_LOGS = ["--log-format", "json", "--log-level", "debug"]


def records(path) -> list[dict[str, Any]]:
    """Every line the program logged; a line that is not a JSON object fails the test."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= doc.keys(), line
            out.append(doc)
    return out


def test_json_logs_carry_the_ids_of_a_failed_task(local_cluster) -> None:
    cluster: LocalCluster = local_cluster(
        executors=1, executor_slots=1, master_args=JSON_LOGS, executor_args=JSON_LOGS
    )
    job = {"name": "fails", "max-attempts": 2, "task": [{"name": "t", "kind": "shell", "command": "exit 3"}]}
    with cluster.client(timeout=10) as c:
        job_id = c.submit_job(job)["id"]
        doc = c.wait_job(job_id, timeout=60)
        executor_id = c.list_executors()[0]["id"]
    assert doc["state"] == "FAILED" and doc["tasks"][0]["attempt"] == 2

    ex_logs = records(cluster.executors[0].log_path)
    failed = [r for r in ex_logs if r.get("job_id") == job_id and "failed" in r["msg"]]
    assert [r["attempt"] for r in failed] == [1, 2]
    assert all(r["task_id"] == f"{job_id}/0" and r["executor_id"] == executor_id for r in failed)
    assert any(r.get("executor_id") == executor_id and "attached" in r["msg"] for r in ex_logs)

    master_logs = [r for m in cluster.masters for r in records(m.log_path)]
    ended = [r for r in master_logs if r.get("job_id") == job_id and "ended FAILED" in r["msg"]]
    assert len(ended) == 1 and ended[0]["logger"] == "rota.leader"
    assert any(r.get("executor_id") == executor_id and "attached" in r["msg"] for r in master_logs)

"""Tasks get a clean environment (issue 13): never the executor's secrets, only what it passes on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.etcd


def test_tasks_do_not_see_the_executors_secrets(local_cluster, monkeypatch):
    cluster = local_cluster()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("CLOUD_TOKEN", "s3cret")
    monkeypatch.setenv("SHARED_SETTING", "on")
    cluster.add_executor(args=["--pass-env", "SHARED_SETTING"])
    cluster.wait_for_executors(1)
    job = {
        "name": "env",
        "task": [
            {
                "name": "sh",
                "kind": "shell",
                "command": 'echo "${CLOUD_TOKEN:-none} ${SHARED_SETTING:-none}"; ls /',
            },
            {"name": "token", "kind": "call", "function": "os:getenv", "args": ["CLOUD_TOKEN"]},
            {"name": "shared", "kind": "call", "function": "os:getenv", "args": ["SHARED_SETTING"]},
            {"name": "own", "kind": "shell", "command": 'echo "$MINE"', "env": {"MINE": "1"}},
            # Not even in the worker's /proc/self/environ, which os.environ cannot change.
            {"name": "proc", "kind": "call", "function": "taskfuncs:environ_of", "args": ["self"]},
        ],
    }
    with cluster.client(timeout=30) as c:
        doc = c.run_job(job, timeout=120)
    by_name = {t["name"]: t["result"] for t in doc["tasks"]}
    assert doc["state"] == "SUCCEEDED", doc
    assert by_name["sh"]["stdout"].splitlines()[0] == "none on"  # and PATH still finds ls
    assert "etc" in by_name["sh"]["stdout"]
    assert by_name["token"]["value"] is None
    assert by_name["shared"]["value"] == "on"
    assert by_name["own"]["stdout"].strip() == "1"
    assert "PATH=" in by_name["proc"]["value"] and "s3cret" not in by_name["proc"]["value"]

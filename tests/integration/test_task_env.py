"""Tasks get a clean environment (issue 13): never the executor's secrets, only what it passes on."""

from __future__ import annotations

import os
import sys
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


ESCAPE = f"{sys.executable} -c 'import os, time; os.setsid(); time.sleep(300)' </dev/null >/dev/null 2>&1 & echo $!"


def test_a_process_that_left_its_tasks_group_goes_with_the_task(local_cluster, pid_alive):
    """setsid() takes a child out of the task's process group, which is what a kill aimed at; it
    must not outlive the task, whether the task ends by itself or is cancelled."""
    import time

    def gone(pid: int) -> bool:
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not pid_alive(pid)

    cluster = local_cluster(executors=1, executor_slots=2)
    with cluster.client(timeout=30) as c:
        ended = c.run_job(
            {"name": "leaves", "task": [{"name": "t", "kind": "shell", "command": ESCAPE}]}, timeout=60
        )
        running = c.submit_job(
            {"name": "cancelled", "task": [{"name": "t", "kind": "shell", "command": f"{ESCAPE}; sleep 300"}]}
        )["id"]
        deadline, printed = time.monotonic() + 30, b""
        while not printed.strip():  # the task's output so far, from its executor
            assert time.monotonic() < deadline, "the task never printed its child's pid"
            time.sleep(0.2)
            try:
                printed = b"".join(d for s, d in c.task_logs(running, "t") if s == "stdout")
            except Exception:
                printed = b""
        escaped = int(printed.split()[0])
        time.sleep(1)  # it has left the task's group by now
        assert pid_alive(escaped)
        c.cancel_job(running)
    assert ended["state"] == "SUCCEEDED"
    assert gone(int(ended["tasks"][0]["result"]["stdout"].split()[0])), (
        "a finished task's setsid child lives on"
    )
    assert gone(escaped), "a cancelled task's setsid child lives on"

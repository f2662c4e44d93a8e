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


def test_a_process_that_left_its_tasks_group_goes_with_the_task(local_cluster, pid_alive, wait_until):
    """setsid() takes a child out of the task's process group, which is what a kill aimed at; it
    must not outlive the task, whether the task ends by itself or is cancelled. Each task lives a
    second after starting its child: long enough for the child to have left the group."""
    import time

    def printed(job_id: str) -> bytes:
        """The task's stdout so far, from its executor."""
        try:
            return b"".join(d for s, d in c.task_logs(job_id, "t") if s == "stdout").strip()
        except Exception:
            return b""

    cluster = local_cluster(executors=1, executor_slots=2)
    with cluster.client(timeout=30) as c:
        ended = c.run_job(
            {"name": "leaves", "task": [{"name": "t", "kind": "shell", "command": f"{ESCAPE}; sleep 1"}]},
            timeout=60,
        )
        running = c.submit_job(
            {"name": "cancelled", "task": [{"name": "t", "kind": "shell", "command": f"{ESCAPE}; sleep 300"}]}
        )["id"]
        escaped = int(
            wait_until("the task to print its child's pid", lambda: printed(running), every=0.2).split()[0]
        )
        time.sleep(1)  # it has left the task's group by now
        assert pid_alive(escaped)
        c.cancel_job(running)
    assert ended["state"] == "SUCCEEDED"
    finished_child = int(ended["tasks"][0]["result"]["stdout"].split()[0])
    wait_until("a finished task's setsid child to go", lambda: not pid_alive(finished_child), timeout=10)
    wait_until("a cancelled task's setsid child to go", lambda: not pid_alive(escaped), timeout=10)

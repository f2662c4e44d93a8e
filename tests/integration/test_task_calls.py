"""Task calls on a real cluster (issue 14): a task's checkpoint survives into its next attempt,
its progress shows in get-job, from python, shell and call tasks alike; limits are enforced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent.parent / "sample" / "jobs" / "checkpoint.toml"

pytestmark = pytest.mark.etcd

PYTHON_RESUMES = """
import os, sys, rota.task
old = rota.task.checkpoint.load()
if old is None:
    rota.task.checkpoint.save(b"step 3 of 5")
    sys.exit("failing on purpose after the checkpoint")
print("resumed from", old.decode(), "in attempt", os.environ["ROTA_ATTEMPT"])
"""

SHELL_RESUMES = """
if "$ROTA_TASK_CLI" checkpoint load state; then
    echo "resumed from $(cat state) in attempt $ROTA_ATTEMPT"
else
    echo "shell step 2" | "$ROTA_TASK_CLI" checkpoint save -
    exit 3
fi
"""

TOO_BIG = """
import rota.task
try:
    rota.task.checkpoint.save(b"x" * (64 * 1024 + 1))
except rota.task.TaskCallError as e:
    print("refused:", e)
rota.task.checkpoint.save(b"x" * (64 * 1024))
print("64 KiB:", len(rota.task.checkpoint.load()))
"""


@pytest.fixture
def cluster_with_funcs(local_cluster, monkeypatch):
    """One executor that can import tests/integration/taskfuncs.py (for call tasks)."""
    cluster = local_cluster()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    cluster.add_executor(slots=4)
    cluster.wait_for_executors(1)
    return cluster


def test_a_checkpoint_carries_a_task_over_to_its_next_attempt(cluster_with_funcs):
    job = {
        "name": "resume",
        "max-attempts": 2,
        "task": [
            {"name": "py", "kind": "python", "code": PYTHON_RESUMES},
            {"name": "sh", "kind": "shell", "command": SHELL_RESUMES},
            {"name": "call", "kind": "call", "function": "taskfuncs:resume", "args": ["call step 9"]},
            {"name": "big", "kind": "python", "code": TOO_BIG, "max-attempts": 1},
            {
                "name": "outside",
                "kind": "shell",
                "command": 'env -u ROTA_TASK_SOCKET "$ROTA_TASK_CLI" progress 1',
            },
        ],
    }
    with cluster_with_funcs.client(timeout=30) as c:
        doc = c.run_job(job, timeout=120)
    tasks = {t["name"]: t for t in doc["tasks"]}
    assert tasks["py"]["state"] == "SUCCEEDED", tasks["py"]
    assert tasks["py"]["attempt"] == 2
    assert tasks["py"]["result"]["stdout"].strip() == "resumed from step 3 of 5 in attempt 2"
    assert tasks["sh"]["result"]["stdout"].strip() == "resumed from shell step 2 in attempt 2", tasks["sh"]
    assert tasks["call"]["result"]["value"] == "resumed from call step 9 in attempt 2", tasks["call"]
    assert tasks["call"]["progress"] == {"fraction": 1.0, "message": "resumed"}
    big = tasks["big"]["result"]["stdout"].splitlines()
    assert big[0] == "refused: checkpoint.save: 65537 bytes is over the checkpoint limit of 65536 bytes", big
    assert big[1] == "64 KiB: 65536"
    outside = tasks["outside"]
    assert outside["state"] == "FAILED" and outside["result"]["exit_code"] == 3
    assert "not inside a Rota task" in outside["result"]["stderr"]
    assert doc["state"] == "FAILED"  # only because of "outside"

    with cluster_with_funcs.client(timeout=30) as c:
        sample = c.run_job(SAMPLE, timeout=120)
    assert sample["state"] == "SUCCEEDED", sample
    python, shell = sample["tasks"]
    assert python["result"]["stdout"].splitlines() == ["attempt 2 starts after step 3", "all 5 steps done"]
    assert shell["result"]["stdout"].splitlines() == ["attempt 2 starts after part 2", "all 4 parts done"]
    assert python["progress"] == {"fraction": 1.0, "message": "step 5 of 5"}
    assert shell["progress"] == {"fraction": 1.0, "message": "part 4 of 4"}


def test_progress_shows_in_get_job_while_the_task_runs(cluster_with_funcs, tmp_path, wait_until):
    go = tmp_path / "go"
    command = (
        f'"$ROTA_TASK_CLI" progress 0.25 "a quarter, of 4 parts" && '
        f"while [ ! -e {go} ]; do sleep 0.05; done; "
        f'"$ROTA_TASK_CLI" progress 1 done'
    )
    with cluster_with_funcs.client(timeout=30) as c:
        job_id = c.submit_job(
            {"name": "progress", "task": [{"name": "t", "kind": "shell", "command": command}]}
        )["id"]

        def progress():
            task = c.get_job(job_id)["tasks"][0]
            return task.get("progress") if task["state"] == "RUNNING" else None

        assert wait_until("progress in get-job", progress, every=0.1) == {
            "fraction": 0.25,
            "message": "a quarter, of 4 parts",
        }
        go.touch()
        doc = c.wait_job(job_id, timeout=60)
    assert doc["state"] == "SUCCEEDED", doc
    assert doc["tasks"][0]["progress"] == {"fraction": 1.0, "message": "done"}


ACROSS_FAILOVER = """
import os, sys, time, rota.task
flags = {flags!r}
old = rota.task.checkpoint.load()
if old is not None:
    print("attempt", os.environ["ROTA_ATTEMPT"], "resumed from", old.decode())
    sys.exit(0)
rota.task.checkpoint.save(b"saved before the failover")
rota.task.progress(0.5, "before")
open(os.path.join(flags, "saved"), "w").close()
while not os.path.exists(os.path.join(flags, "go")):
    time.sleep(0.05)
rota.task.checkpoint.save(b"saved through the new leader")
rota.task.progress(0.9, "after")
sys.exit("failing on purpose after the failover")
"""


def test_checkpoints_and_progress_survive_a_leader_sigkill(local_cluster, tmp_path, wait_until):
    import signal

    cluster = local_cluster(executors=1)
    job = {
        "name": "failover-resume",
        "max-attempts": 2,
        "task": [{"name": "t", "kind": "python", "code": ACROSS_FAILOVER.format(flags=str(tmp_path))}],
    }
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(job)["id"]
        wait_until("the first checkpoint", lambda: (tmp_path / "saved").exists(), 60)
        old = cluster.leader()
        old.signal(signal.SIGKILL)
        cluster.wait_for_leader(exclude=old.name, timeout=30)
        (tmp_path / "go").touch()
        doc = c.wait_job(job_id, timeout=120)
    task = doc["tasks"][0]
    assert doc["state"] == "SUCCEEDED", task
    assert task["attempt"] == 2, task
    assert task["result"]["stdout"].strip() == "attempt 2 resumed from saved through the new leader", task
    assert task["progress"] == {"fraction": 0.9, "message": "after"}, task

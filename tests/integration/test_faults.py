"""Real faults, real processes: executors killed and frozen, the whole cluster restarted,
etcd quorum lost, a task that kills its executor (issue 4, promises 3-6)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from rota.client.api import Client, NoMasterReachable
from rota.devtools.localcluster import LocalCluster

pytestmark = pytest.mark.etcd


def long_tasks(tmp: Path, n: int) -> dict:
    """n shell tasks that record each attempt's pid, then sleep a minute."""
    cmd = f'echo $$ > {tmp}/"${{ROTA_TASK_ID##*/}}-$ROTA_ATTEMPT".pid; exec sleep 60'
    return {
        "name": "long",
        "max-attempts": 3,
        "task": [{"name": "s", "kind": "shell", "command": cmd, "count": n}],
    }


def running_on(c: Client, job_id: str) -> dict[str, str]:
    return {t["id"]: t["executor"] for t in c.get_job(job_id)["tasks"] if t["state"] == "RUNNING"}


def executor_id(c: Client, name: str) -> str:
    return next((e["id"] for e in c.list_executors() if e["name"] == name), "")


def test_killed_executor_tasks_run_elsewhere_with_next_attempt(wait_until, local_cluster, tmp_path):
    cluster: LocalCluster = local_cluster(executors=2, executor_slots=2)
    with cluster.client(timeout=10) as c:
        job_id = c.submit_job(long_tasks(tmp_path, 2))["id"]
        placed = wait_until(
            "both tasks running", lambda: len(running_on(c, job_id)) == 2 and running_on(c, job_id)
        )
        victim = cluster.executors[0]
        victim_id = executor_id(c, victim.name)
        moved = [t for t, e in placed.items() if e == victim_id]
        assert len(moved) == 1, placed
        victim.signal(signal.SIGKILL)

        def rerun():
            t = next(t for t in c.get_job(job_id)["tasks"] if t["id"] == moved[0])
            return t["state"] == "RUNNING" and t["attempt"] == 2 and t

        task = wait_until("the task to run again", rerun, timeout=20)
        assert task["executor"] != victim_id
        assert victim_id not in {e["id"] for e in c.list_executors()}
        c.cancel_job(job_id)


def test_frozen_executor_is_fenced_out_and_kills_its_task(wait_until, local_cluster, tmp_path, pid_alive):
    cluster: LocalCluster = local_cluster(
        executors=2,
        executor_slots=2,
        executor_args=["--keepalive-ttl", "2s", "--keepalive-interval", "200ms"],
    )
    with cluster.client(timeout=10) as c:
        job_id = c.submit_job(long_tasks(tmp_path, 2))["id"]
        placed = wait_until(
            "both tasks running", lambda: len(running_on(c, job_id)) == 2 and running_on(c, job_id)
        )
        victim = cluster.executors[0]
        victim_id = executor_id(c, victim.name)
        (task_id,) = [t for t, e in placed.items() if e == victim_id]
        first_pid_file = tmp_path / f"{task_id.rsplit('/', 1)[1]}-1.pid"
        first_pid = int(
            wait_until(
                "the first attempt's pid",
                lambda: first_pid_file.exists() and first_pid_file.read_text().strip(),
            )
        )
        victim.signal(signal.SIGSTOP)
        try:

            def rerun():
                t = next(t for t in c.get_job(job_id)["tasks"] if t["id"] == task_id)
                return t["attempt"] == 2 and t["state"] == "RUNNING" and t

            task = wait_until("the task to run elsewhere", rerun, timeout=30)
            assert task["executor"] != victim_id
        finally:
            victim.signal(signal.SIGCONT)
        # Promise 5: woken up past its TTL, the executor kills what it ran and starts over.
        wait_until("the fenced attempt's process to die", lambda: not pid_alive(first_pid), timeout=15)
        wait_until(
            "the executor to register anew",
            lambda: executor_id(c, victim.name) not in ("", victim_id),
            timeout=15,
        )
        assert next(t for t in c.get_job(job_id)["tasks"] if t["id"] == task_id)["attempt"] == 2
        c.cancel_job(job_id)


def test_whole_cluster_restart_resumes_unfinished_jobs(wait_until, local_cluster, tmp_path):
    cluster: LocalCluster = local_cluster(executors=1, executor_slots=2)
    job = {"name": "resume", "task": [{"name": "s", "kind": "sleep", "seconds": 0.3, "count": 16}]}
    with cluster.client(timeout=10) as c:
        job_id = c.submit_job(job)["id"]
        wait_until("some progress", lambda: c.get_job(job_id)["counts"].get("SUCCEEDED", 0) >= 2)
    for p in [*cluster.executors, *cluster.masters]:
        p.signal(signal.SIGKILL)
    for p in [*cluster.executors, *cluster.masters]:
        p.wait(10)
    for p in [*cluster.masters, *cluster.executors]:
        p.start()
    cluster.wait_for_leader(timeout=60)
    with cluster.client(timeout=30) as c:
        doc = c.wait_job(job_id, timeout=120)
    assert doc["state"] == "SUCCEEDED" and doc["counts"] == {"SUCCEEDED": 16}


def test_one_etcd_member_down_keeps_scheduling_and_quorum_loss_pauses_it(local_cluster, etcd_cluster):
    cluster: LocalCluster = local_cluster(
        etcd_endpoints=etcd_cluster.endpoints, executors=1, executor_slots=2
    )
    hello = {"name": "q", "task": [{"name": "t", "kind": "noop"}]}
    etcd_cluster.members[2].kill(signal.SIGKILL)
    with cluster.client(timeout=20) as c:
        assert c.wait_job(c.submit_job(hello)["id"], timeout=30)["state"] == "SUCCEEDED"
        slow = c.submit_job(
            {"name": "slow", "task": [{"name": "s", "kind": "sleep", "seconds": 1, "count": 4}]}
        )
    etcd_cluster.members[1].kill(signal.SIGKILL)
    with Client(cluster.addresses, timeout=4) as c, pytest.raises(NoMasterReachable):
        c.submit_job(hello, job_id="during-quorum-loss")
    etcd_cluster.restart_member(1, wait=False)
    etcd_cluster.restart_member(2, wait=False)
    with cluster.client(timeout=60) as c:
        # The job that was running when quorum went away finishes once it is back.
        assert c.wait_job(slow["id"], timeout=90)["counts"] == {"SUCCEEDED": 4}
        job_id = c.submit_job(hello)["id"]
        assert c.wait_job(job_id, timeout=60)["state"] == "SUCCEEDED"
        assert c.cluster_status()["etcd"]["healthy"]


def test_task_that_kills_its_executor_fails_instead_of_the_cluster(wait_until, local_cluster):
    """Attempts lost with their executor do not use up max-attempts, but a task lost ten times
    (the floor of the bound) fails: one that kills every executor it runs on must end."""
    cluster: LocalCluster = local_cluster(executors=3, executor_slots=1)
    killer = {
        "name": "killer",
        "max-attempts": 1,
        "task": [
            {
                "name": "k",
                "kind": "python",
                "code": "import os, signal; os.kill(os.getppid(), signal.SIGKILL)",
            }
        ],
    }
    with cluster.client(timeout=10) as c:
        job_id = c.submit_job(killer)["id"]

        def ended():
            # Keep three executors up for the killer to go through.
            for _ in range(3 - sum(e.alive() for e in cluster.executors)):
                cluster.add_executor(slots=1)
            doc = c.get_job(job_id)
            return doc["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") and doc

        doc = wait_until("the killer to be given up", ended, timeout=90, every=0.2)
        (task,) = doc["tasks"]
        assert doc["state"] == "FAILED"
        assert (task["attempt"], task["failures"], task["lost"]) == (10, 0, 10)
        assert "lost with its executor 10 times" in task["result"]["error"]
        killed = [e for e in cluster.executors if not e.alive()]
        assert len(killed) >= 10
        assert c.cluster_status()["leader"] is not None
        ok = c.submit_job({"name": "after", "task": [{"name": "t", "kind": "noop"}]})
        assert c.wait_job(ok["id"], timeout=30)["state"] == "SUCCEEDED"

"""Graceful executor shutdown and draining (issue 12): SIGTERM lets running tasks finish, restarts do
not use up max-attempts, drain-executor stops new work and undrain-executor resumes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rota.client.api import Client, RequestError
from rota.devtools.localcluster import LocalCluster, Process

pytestmark = pytest.mark.etcd

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def taskfuncs_importable(monkeypatch):
    """Executors started by the tests import ``taskfuncs`` for their ``call`` tasks."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))


def stamp_job(stamps: Path, name: str, seconds: float, count: int = 1, max_attempts: int = 1) -> dict:
    """Tasks that append one line per attempt to ``stamps`` (label, start, executor pid), then take
    ``seconds``."""
    return {
        "name": name,
        "max-attempts": max_attempts,
        "task": [
            {
                "name": name,
                "kind": "call",
                "function": "taskfuncs:stamp",
                "args": [str(stamps), name, seconds],
                "count": count,
            }
        ],
    }


def stamped(stamps: Path, label: str | None = None) -> list[tuple[str, int]]:
    """(label, executor pid) of every attempt that started."""
    lines = stamps.read_text().splitlines() if stamps.exists() else []
    rows = [(line.split()[0], int(line.split()[2])) for line in lines]
    return [r for r in rows if label is None or r[0] == label]


def executor_doc(c: Client, proc: Process) -> dict | None:
    return next((e for e in c.list_executors() if e["name"] == proc.name), None)


def test_sigterm_lets_the_running_task_finish_there_once_and_exits_0(wait_until, local_cluster, tmp_path):
    cluster: LocalCluster = local_cluster(executors=1, executor_slots=1)
    stamps = tmp_path / "stamps"
    victim = cluster.executors[0]
    with cluster.client(timeout=10) as c:
        victim_id = executor_doc(c, victim)["id"]
        job_id = c.submit_job(stamp_job(stamps, "slow", 3.0))["id"]
        wait_until("the task to start", lambda: stamped(stamps))
        victim.signal(signal.SIGTERM)
        wait_until(
            "the executor to drain", lambda: (executor_doc(c, victim) or {}).get("state") == "draining"
        )
        later = c.submit_job({"name": "later", "task": [{"name": "n", "kind": "noop"}]})["id"]
        doc = c.wait_job(job_id, timeout=30)
        (task,) = doc["tasks"]
        assert doc["state"] == "SUCCEEDED", task
        assert (task["executor"], task["attempt"], task["failures"], task["lost"]) == (victim_id, 1, 0, 0)
        assert victim.wait(20) == 0, victim.log_tail()
        assert stamped(stamps) == [("slow", victim.pid)]  # ran once, there
        # It left: deregistered at once, and the job submitted while it drained never went there.
        assert executor_doc(c, victim) is None
        assert c.get_job(later)["tasks"][0]["state"] == "PENDING"
        cluster.add_executor(slots=1)
        assert c.wait_job(later, timeout=30)["state"] == "SUCCEEDED"


def test_three_executor_restarts_do_not_fail_a_task_of_three_attempts(wait_until, local_cluster, tmp_path):
    cluster: LocalCluster = local_cluster(executors=1, executor_slots=1)
    stamps = tmp_path / "stamps"
    short_drain = ["--drain-timeout", "200ms"]
    with cluster.client(timeout=10) as c:
        job_id = c.submit_job(stamp_job(stamps, "long", 4.0, max_attempts=3))["id"]
        # Killed, stopped past a short drain, killed: three attempts lost, none failed by itself.
        for n, sig in enumerate([signal.SIGKILL, signal.SIGTERM, signal.SIGKILL], start=1):
            current = cluster.executors[-1]
            wait_until(f"attempt {n} to start", lambda n=n: len(stamped(stamps)) == n)
            assert stamped(stamps)[-1][1] == current.pid
            current.signal(sig)
            status = current.wait(20)
            assert status == (0 if sig == signal.SIGTERM else -signal.SIGKILL), current.log_tail()
            cluster.add_executor(slots=1, args=short_drain)
        doc = c.wait_job(job_id, timeout=60)
    (task,) = doc["tasks"]
    assert doc["state"] == "SUCCEEDED", task
    assert (task["attempt"], task["failures"], task["lost"]) == (4, 0, 3)
    assert [pid for _, pid in stamped(stamps)] == [e.pid for e in cluster.executors]


def test_drain_executor_stops_new_work_across_a_leader_change_and_undrain_resumes_it(
    wait_until, local_cluster, tmp_path
):
    cluster: LocalCluster = local_cluster(executors=2, executor_slots=1)
    e0, e1 = cluster.executors
    stamps = tmp_path / "stamps"
    with cluster.client(timeout=20) as c:
        with pytest.raises(RequestError) as missing:
            c.drain_executor("nobody")
        assert missing.value.not_found
        with pytest.raises(RequestError, match="timeout"):
            c.drain_executor(e0.name, timeout=-1)
        # A running task on e0 is handed back when the drain timeout (0 s) has passed: it runs on
        # e1 under its next attempt, its lost count up and no failure counted.
        long_job = c.submit_job(stamp_job(stamps, "long", 30.0))["id"]
        wait_until("the long task to start", lambda: stamped(stamps, "long"))
        first = stamped(stamps, "long")[0][1]
        drained, other = (e0, e1) if first == e0.pid else (e1, e0)
        (doc,) = c.drain_executor(drained.name, timeout=0)
        assert doc["name"] == drained.name and doc["state"] == "draining"

        def moved():
            t = c.get_job(long_job)["tasks"][0]
            return t["attempt"] == 2 and t["state"] == "RUNNING" and t

        task = wait_until("the task to be handed back and run elsewhere", moved)
        assert (task["failures"], task["lost"]) == (0, 1)
        wait_until("the second attempt to start", lambda: len(stamped(stamps, "long")) == 2)
        assert [pid for _, pid in stamped(stamps, "long")] == [drained.pid, other.pid]
        c.cancel_job(long_job)

        # A new leader keeps the drain: it is stored with the executor's record.
        old_leader = cluster.leader()
        old_leader.signal(signal.SIGKILL)
        cluster.wait_for_leader(timeout=30, exclude=old_leader.name)
        wait_until(
            "the drained executor back with the new leader",
            lambda: (
                (executor_doc(c, drained) or {}).get("state") == "draining"
                and (executor_doc(c, other) or {}).get("state") == "ready"
            ),
        )
        few = c.wait_job(c.submit_job(stamp_job(stamps, "few", 0.3, count=4))["id"], timeout=30)
        assert few["state"] == "SUCCEEDED"
        assert {pid for _, pid in stamped(stamps, "few")} == {other.pid}

        (doc,) = c.undrain_executor(drained.name)
        assert doc["name"] == drained.name  # "ready" once the executor says it no longer drains
        wait_until("the executor to take work", lambda: executor_doc(c, drained)["state"] == "ready")
        pair = c.wait_job(c.submit_job(stamp_job(stamps, "pair", 1.5, count=2))["id"], timeout=30)
        assert pair["state"] == "SUCCEEDED"
        assert {pid for _, pid in stamped(stamps, "pair")} == {drained.pid, other.pid}


def test_master_client_drain_executor_names_what_is_wrong(local_cluster):
    cluster: LocalCluster = local_cluster(executors=1, executor_slots=1)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rota.client.cli", "--master-addr", cluster.addresses, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    p = cli("drain-executor", "nobody")
    assert p.returncode == 2 and "no executor 'nobody'" in p.stderr, p.stderr
    p = cli("drain-executor", "e0", "--timeout", "1m")
    assert p.returncode == 0 and "draining" in p.stdout, (p.stdout, p.stderr)
    p = cli("--json", "undrain-executor", "e0")
    assert p.returncode == 0 and '"state": "ready"' in p.stdout, (p.stdout, p.stderr)

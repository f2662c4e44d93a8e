"""Gangs and service tasks on a real cluster (issue 14): a gang too large for the free slots waits
with its reason and runs all at once when an executor joins; a service task that fails is restarted
without failing its job."""

from __future__ import annotations

import signal

import pytest

pytestmark = pytest.mark.etcd

REASON = (
    "gang 'pipeline' of 6 tasks needs 6 free slots for kind 'sleep'; "
    "the cluster has 4 free on 2 executors (4 slots in all)"
)


@pytest.mark.parametrize("leader_kill", [False, True], ids=["steady", "leader-sigkill"])
def test_a_gang_waits_with_its_reason_until_a_third_executor_joins(local_cluster, wait_until, leader_kill):
    """With ``leader_kill``, the leader is SIGKILLed while the gang waits: the new leader, rebuilt
    from etcd, gives the same reason and places the gang all at once just the same."""
    cluster = local_cluster(executors=2, executor_slots=2)
    job = {
        "name": "pipeline",
        "gang": True,
        "task": [{"name": "stage", "kind": "sleep", "seconds": 2, "count": 6}],
    }
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(job)["id"]
        doc = wait_until(
            "the gang's pending reason", lambda: (d := c.get_job(job_id)).get("pending_reason") and d
        )
        assert doc["pending_reason"] == REASON
        assert doc["state"] == "PENDING" and doc["counts"] == {"PENDING": 6}
        # Other work runs on the free slots meanwhile.
        small = c.run_job({"name": "small", "task": [{"name": "n", "kind": "noop", "count": 2}]}, timeout=30)
        assert small["state"] == "SUCCEEDED"
        assert c.get_job(job_id)["counts"] == {"PENDING": 6}
        if leader_kill:
            old = cluster.leader()
            old.signal(signal.SIGKILL)
            cluster.wait_for_leader(exclude=old.name, timeout=30)
            cluster.wait_for_executors(2)
            wait_until("the new leader's reason", lambda: c.get_job(job_id).get("pending_reason") == REASON)
            assert c.get_job(job_id)["counts"] == {"PENDING": 6}

        cluster.add_executor(slots=2)
        placed = wait_until(
            "the gang placed", lambda: (d := c.get_job(job_id))["counts"].get("PENDING", 0) < 6 and d
        )
        assert "PENDING" not in placed["counts"], placed["counts"]  # all at once, not 4 then 2
        assert "pending_reason" not in placed
        done = c.wait_job(job_id, timeout=60)
    assert done["state"] == "SUCCEEDED"
    assert [t["attempt"] for t in done["tasks"]] == [1] * 6
    assert len({t["executor"] for t in done["tasks"]}) == 3


FAILS_FIRST = """
import os, sys
attempt = os.environ["ROTA_ATTEMPT"]
print("attempt", attempt)
sys.exit(3 if attempt == "1" else 0)
"""


def test_a_service_task_that_fails_once_is_restarted_and_its_job_succeeds(local_cluster):
    cluster = local_cluster(executors=1, executor_slots=1)
    job = {
        "name": "svc",
        "max-attempts": 1,  # not used by service tasks
        "timeout": "1s",  # nor is the job's timeout
        "task": [{"name": "feed", "kind": "python", "code": FAILS_FIRST, "service": True, "restarts": 2}],
    }
    with cluster.client(timeout=30) as c:
        doc = c.run_job(job, timeout=60)
    task = doc["tasks"][0]
    assert doc["state"] == "SUCCEEDED", task
    assert task["service"] is True and task["restarts"] == 1 and task["attempt"] == 2
    assert task["result"]["stdout"].strip() == "attempt 2"

"""Months of history (issue 12): records a leader cannot read or write must not stop the cluster."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from rota.metastore import keys
from rota.metastore.client import EtcdClient, put_op

pytestmark = pytest.mark.etcd


def test_a_new_leader_starts_past_a_job_it_cannot_read_or_whose_kind_is_gone(local_cluster):
    """A stored job's plug-in kind since uninstalled, and a spec no longer readable: a new leader
    rebuilds past both, names the unreadable one in its log, and schedules as before."""
    cluster = local_cluster(executors=1, executor_slots=1)
    ghost = {"name": "ghost", "priority": 50, "max-attempts": 3,
             "task": [{"name": "t", "kind": "uninstalled-plugin", "size": 3}]}  # fmt: skip

    async def plant() -> None:
        async with EtcdClient(cluster.etcd_endpoints, timeout=20) as client:
            for job_id, spec in (("ghost", json.dumps(ghost).encode()), ("garbled", b"{not json")):
                await client.txn([], [
                    put_op(keys.job_spec(job_id, 0), spec),
                    put_op(keys.job(job_id), json.dumps({"id": job_id, "created": 1.0, "state": None}).encode()),
                ])  # fmt: skip

    asyncio.run(plant())
    old = cluster.leader()
    old.signal(signal.SIGKILL)
    new = cluster.master(cluster.wait_for_leader(exclude=old.name, timeout=60))
    with cluster.client(timeout=20) as c:
        doc = c.run_job({"name": "after", "task": [{"name": "t", "kind": "noop"}]}, timeout=60)
        assert doc["state"] == "SUCCEEDED"
        assert c.get_job("ghost")["state"] == "PENDING"
        assert "ghost" in {j["id"] for j in c.list_jobs()}
    assert "job garbled cannot be read from etcd" in new.log_path.read_text()


def test_a_ten_mib_return_value_fails_its_task_and_scheduling_goes_on(local_cluster):
    cluster = local_cluster(executors=1, executor_slots=1)
    big = {"name": "big", "task": [{"name": "t", "kind": "call", "function": "operator:mul",
                                    "args": ["x", 10 * 1024 * 1024], "max-attempts": 1}]}  # fmt: skip
    with cluster.client(timeout=20) as c:
        doc = c.run_job(big, timeout=120)
        after = c.run_job({"name": "after", "task": [{"name": "t", "kind": "call", "function": "operator:mul",
                                                      "args": [6, 7], "count": 20}]}, timeout=120)  # fmt: skip
    (task,) = doc["tasks"]
    assert doc["state"] == "FAILED" and task["result"]["value"] is None
    assert "over the 262144 allowed (VALUE_CAP)" in task["result"]["error"]
    assert after["state"] == "SUCCEEDED" and {t["result"]["value"] for t in after["tasks"]} == {42}

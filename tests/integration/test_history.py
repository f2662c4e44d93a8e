"""Months of history (issue 12): records a leader cannot read or write must not stop the cluster."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from rota.client.api import RequestError
from rota.devtools.etcdcluster import EtcdCluster
from rota.metastore import keys
from rota.metastore.client import EtcdClient, EtcdError, put_op
from rota.scheduler import upkeep
from rota.scheduler.leadership import Leadership

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


def _keys_of(cluster, job_id: str) -> list[bytes]:
    async def read() -> list[bytes]:
        async with EtcdClient(cluster.etcd_endpoints, timeout=20) as client:
            found = []
            for prefix in (keys.job(job_id), keys.job_specs(job_id), keys.job_tasks(job_id)):
                kvs, _ = await client.get_prefix(prefix, keys_only=True)
                found += [kv.key for kv in kvs if kv.key == prefix or prefix.endswith(b"/")]
            return found

    return asyncio.run(read())


def test_ended_jobs_are_deleted_after_their_retention_even_across_a_failover(local_cluster):
    cluster = local_cluster(executors=1, executor_slots=2, master_args=["--job-retention", "3s"])
    with cluster.client(timeout=20) as c:
        kept = c.run_job({"name": "kept", "retention": "1h", "task": [{"name": "t", "kind": "noop"}]})
        first = c.run_job({"name": "first", "task": [{"name": "t", "kind": "noop", "count": 3}]})
        assert first["state"] == kept["state"] == "SUCCEEDED"
        assert _keys_of(cluster, first["id"]), "the ended job was never stored"
        # A new leader rebuilds the ended job and expires it in its turn.
        old = cluster.leader()
        old.signal(signal.SIGKILL)
        cluster.wait_for_leader(exclude=old.name, timeout=60)
        second = c.run_job({"name": "second", "task": [{"name": "t", "kind": "shell", "command": ["true"]}]})
        time.sleep(4)
        for job in (first, second):
            with pytest.raises(RequestError, match=f"job '{job['id']}' expired|no job '{job['id']}'") as e:
                c.get_job(job["id"])
            assert e.value.not_found
            assert _keys_of(cluster, job["id"]) == []
        with pytest.raises(RequestError, match="expired: it ended at .* kept for 3s"):
            c.get_job(second["id"])  # expired under this leader: it knows
        # A late retry of its submission does not run it again.
        assert c.submit_job({"name": "second", "task": [{"name": "t", "kind": "noop"}]}, second["id"]) == {
            "id": second["id"],
            "created": False,
        }
        assert _keys_of(cluster, second["id"]) == []
        assert c.get_job(kept["id"])["state"] == "SUCCEEDED"
        assert {j["id"] for j in c.list_jobs()} == {kept["id"]}


def test_a_master_whose_rebuild_raises_resigns_and_another_leads(etcd_cluster):
    """A leader that cannot take up its role must not keep the lease alive while serving nothing."""

    async def scenario() -> tuple[str, int]:
        # m0's process is alive (its port accepts), so only a resignation ends its term early.
        alive = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        m0_addr = f"127.0.0.1:{alive.sockets[0].getsockname()[1]}"
        async with alive, EtcdClient(etcd_cluster.endpoints, timeout=20) as client:
            tries = {"m0": 0, "m1": 0}
            won = asyncio.Event()

            def hook(name: str):
                async def on_elected(_election: object) -> None:
                    tries[name] += 1
                    if name == "m0":
                        raise KeyError("a rebuild that raised something unexpected")
                    won.set()

                return on_elected

            broken = Leadership(client, "m0", m0_addr, 10, on_elected=hook("m0"))
            broken.start()
            while not tries["m0"]:
                await asyncio.sleep(0.02)
            healthy = Leadership(client, "m1", "127.0.0.1:2", 10, on_elected=hook("m1"))
            healthy.start()
            try:
                # Well inside the 10 s lease: only a resignation lets m1 in this soon.
                await asyncio.wait_for(won.wait(), 5)
                return ("m1" if healthy.is_leader else "nobody"), tries["m0"]
            finally:
                await healthy.stop()
                await broken.stop()

    leader, broken_tries = asyncio.run(scenario())
    assert leader == "m1" and broken_tries >= 1


def test_the_leaders_compaction_drops_history_older_than_one_period(etcd_cluster):
    async def scenario() -> tuple[bool, bytes]:
        async with EtcdClient(etcd_cluster.endpoints, timeout=20) as client:
            first = await client.put(b"/rota-test/k", b"old")
            await client.put(b"/rota-test/k", b"new")
            loop = asyncio.create_task(upkeep.compact_loop(client, every=0.3))
            await asyncio.sleep(1.0)  # two periods: the second compacts up to what the first saw
            loop.cancel()
            kvs, _ = await client.get_prefix(b"/rota-test/", revision=0)
            try:
                await client.get_prefix(b"/rota-test/", revision=first)
                old_readable = True
            except EtcdError as e:
                assert "compacted" in str(e), e
                old_readable = False
            return old_readable, kvs[0].value

    old_readable, now = asyncio.run(scenario())
    assert not old_readable, "the revision before the compaction can still be read"
    assert now == b"new"


def test_a_record_etcd_refuses_for_good_is_isolated_to_its_task(local_cluster, tmp_path):
    """An external etcd whose --max-request-bytes (64 KiB) is below the leader's own caps: a task
    record of 100 KB is refused on every try. It must not hold every later write behind it: the
    task keeps its state with an error for a result, and the cluster goes on."""
    etcd = EtcdCluster(tmp_path / "etcd", size=3, max_request_bytes=64 * 1024)
    try:
        etcd.start()
        cluster = local_cluster(etcd_endpoints=etcd.endpoints, executors=1, executor_slots=1)
        wide = {"name": "wide", "task": [{"name": "t", "kind": "call", "function": "operator:mul",
                                          "args": ["x", 100_000], "max-attempts": 1}]}  # fmt: skip
        with cluster.client(timeout=20) as c:
            doc = c.run_job(wide, timeout=120)
            after = c.run_job({"name": "after", "task": [{"name": "t", "kind": "call", "function": "operator:mul",
                                                          "args": [6, 7], "count": 5}]}, timeout=120)  # fmt: skip
        (task,) = doc["tasks"]
        assert doc["state"] == "SUCCEEDED" and task["result"]["value"] is None
        assert "etcd refused this task's record" in task["result"]["error"]
        assert after["state"] == "SUCCEEDED" and {t["result"]["value"] for t in after["tasks"]} == {42}

        async def stored() -> dict:
            async with EtcdClient(etcd.endpoints, timeout=20) as client:
                kv = await client.get(keys.task(doc["id"], 0))
                assert kv is not None
                return json.loads(kv.value)

        rec = asyncio.run(stored())
        assert rec["s"] == "SUCCEEDED" and "etcd refused" in rec["r"]["error"]
        assert "committing them one by one" in cluster.leader().log_path.read_text()
    finally:
        etcd.stop()


def test_a_new_leader_holds_ended_jobs_as_summaries_and_reads_their_tasks_from_etcd(local_cluster):
    """Ended jobs come back from a rebuild without their specs or task records being read; get-job,
    wait-job and cancel-job then read a page of tasks from etcd, and say what they said before."""
    cluster = local_cluster(executors=1, executor_slots=2)
    job = {"name": "sum", "task": [{"name": "sq", "kind": "call", "function": "operator:mul", "args": [3, 3],
                                    "count": 7}, {"name": "bad", "kind": "call", "function": "operator:truediv",
                                                  "args": [1, 0], "max-attempts": 1}]}  # fmt: skip
    with cluster.client(timeout=30) as c:
        before = c.run_job(job, timeout=120)
        page_before = c.get_job(before["id"], tasks_from=5, task_limit=2)
    assert before["state"] == "FAILED" and len(before["tasks"]) == 8
    old = cluster.leader()
    old.signal(signal.SIGKILL)
    new = cluster.master(cluster.wait_for_leader(exclude=old.name, timeout=60))
    with cluster.client(timeout=30) as c:
        assert c.get_job(before["id"]) == before
        assert c.get_job(before["id"], tasks_from=5, task_limit=2) == page_before
        assert c.get_job(before["id"], tasks_from=8, task_limit=2)["tasks"] == []
        assert c.wait_job(before["id"], timeout=10) == before
        assert c.cancel_job(before["id"]) == before
        assert [d["id"] for d in c.list_jobs()] == [before["id"]]
    assert "rebuilt from etcd" in new.log_path.read_text()

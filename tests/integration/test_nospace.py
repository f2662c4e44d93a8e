"""etcd out of space (issue 12): a full backend quota raises etcd's NOSPACE alarm; the cluster says so,
refuses submissions clearly, keeps what it acknowledged, and recovers by itself once retention
frees space (compaction, defragmentation one member at a time, the alarm disarmed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from rota.client.api import OutOfSpace, RequestError
from rota.devtools.etcdcluster import EtcdCluster
from rota.metastore import keys
from rota.metastore.client import EtcdClient, NoSpace
from rota.scheduler import upkeep
from rota.scheduler.leadership import Leadership

pytestmark = pytest.mark.etcd

#: Each filler job carries this much in its spec: a 4 MiB quota takes about a dozen.
FILLER_BYTES = 300_000
FILLER_RETENTION = "12s"


def _filler(i: int) -> dict[str, object]:
    return {
        "name": f"filler-{i}",
        "retention": FILLER_RETENTION,
        "task": [{"name": "t", "kind": "call", "function": "builtins:len", "args": ["x" * FILLER_BYTES]}],
    }


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _stored_state(cluster, job_id: str) -> str | None:
    async def read() -> str | None:
        async with EtcdClient(cluster.etcd_endpoints, timeout=20) as client:
            kv = await client.get(keys.job(job_id))
            return json.loads(kv.value)["state"] if kv else None

    return asyncio.run(read())


def test_a_full_etcd_raises_nospace_refuses_submissions_and_recovers_after_retention(local_cluster, tmp_path):
    cluster = local_cluster(executors=1, executor_slots=2, master_args=["--etcd-quota-backend-bytes", "4MiB"])
    leader = cluster.leader()
    with cluster.client(timeout=20) as c:
        # Still running when etcd fills up: its end is held by the leader, then committed.
        slow = c.submit_job({"name": "slow", "task": [{"name": "t", "kind": "sleep", "seconds": 4}]})["id"]
        acknowledged: list[str] = []
        refusal = None
        for i in range(200):
            try:
                acknowledged.append(c.submit_job(_filler(i))["id"])
            except OutOfSpace as e:
                refusal = str(e)
                break
            # One at a time, each to its end, so that retention frees them all; the end of the one
            # that fills etcd is held (its waiter with it) until etcd has room again.
            with contextlib.suppress(TimeoutError):
                c.wait_job(acknowledged[-1], timeout=3)
        assert refusal is not None, f"{len(acknowledged)} fillers of {FILLER_BYTES} bytes fit a 4 MiB quota"
        assert "etcd is out of space (NOSPACE alarm)" in refusal and "was not submitted" in refusal
        assert 3 <= len(acknowledged) < 100

        # Read at once when etcd answers within 50 ms, else as every master last saw it (<= 5 s).
        deadline = time.monotonic() + 10
        while "NOSPACE" not in {a["alarm"] for a in c.cluster_status()["etcd"]["alarms"]}:
            assert time.monotonic() < deadline, "cluster-status never showed the NOSPACE alarm"
            time.sleep(0.2)
        etcd = c.cluster_status()["etcd"]
        assert etcd["quota"] == 4 * 1024**2 and all(m["db_size"] for m in etcd["members"]), etcd
        with pytest.raises(OutOfSpace, match=r"NOSPACE alarm.*not submitted"):
            c.submit_job({"name": "refused", "task": [{"name": "t", "kind": "noop"}]})
        job_file = tmp_path / "refused.toml"
        job_file.write_text('name = "refused"\n[[task]]\nname = "t"\nkind = "noop"\n')
        cli = [sys.executable, "-m", "rota.client.cli", "--master-addr", cluster.addresses]
        shown = subprocess.run([*cli, "cluster-status"], capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "alarms:    NOSPACE (" in shown.stdout, shown.stdout + shown.stderr
        assert "ETCD MEMBER (quota 4.0 MiB)" in shown.stdout, shown.stdout
        refused = subprocess.run(
            [*cli, "submit-job", "--config", str(job_file)], capture_output=True, text=True
        )
        assert refused.returncode == 4 and "NOSPACE alarm" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        # An acknowledged submission retried still answers: nothing about it changes.
        assert c.submit_job(_filler(0), acknowledged[0]) == {"id": acknowledged[0], "created": False}

        deadline = time.monotonic() + 10
        while 'rota_etcd_alarm{alarm="NOSPACE"} 1.0' not in (text := _metrics(leader.http_url)):
            assert time.monotonic() < deadline, "the leader's metrics never showed the alarm"
            time.sleep(0.2)
        assert "rota_etcd_db_bytes{member=" in text
        promtool = shutil.which("promtool")
        if promtool:
            check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr

        # Retention deletes the fillers under the alarm; the leader compacts, defragments, disarms.
        deadline = time.monotonic() + 60
        while c.cluster_status()["etcd"]["alarms"]:
            assert time.monotonic() < deadline, "the NOSPACE alarm was never cleared"
            time.sleep(0.5)
        after = c.run_job({"name": "after", "task": [{"name": "t", "kind": "noop"}]}, timeout=30)
        assert after["state"] == "SUCCEEDED"
        assert _stored_state(cluster, slow) == "SUCCEEDED", "the end held under NOSPACE never reached etcd"

        assert c.wait_job(slow, timeout=30)["state"] == "SUCCEEDED"
        for job_id in acknowledged:
            try:
                assert c.get_job(job_id)["state"] == "SUCCEEDED", job_id
            except RequestError as e:
                assert f"job '{job_id}' expired" in str(e), e  # ended, then deleted by its retention
        assert c.cluster_status()["leader"]["name"] == leader.name, "the leader stepped down"

    log = leader.log_path.read_text()
    assert log.count("etcd raised its NOSPACE alarm") == 1, log[-3000:]
    assert "disarmed etcd's NOSPACE alarm" in log and "defragmented etcd member" in log
    assert "etcd's NOSPACE alarm is cleared" in log
    assert "stepping down" not in log


def test_with_no_leader_the_masters_recover_a_full_etcd_and_a_campaign_then_succeeds(tmp_path):
    """Under NOSPACE no master can be elected (no lease is granted), so recovery cannot wait for a
    leader: the masters' space loop frees etcd by itself once data is deleted."""

    async def scenario(endpoints: list[str]) -> tuple[bool, bool, int]:
        async with EtcdClient(endpoints, timeout=20) as client:
            with pytest.raises(NoSpace):
                for i in range(1000):
                    await client.put(b"/rota-test/%d" % i, os.urandom(100_000))
            with pytest.raises(NoSpace):
                await client.grant(5)
            lead = Leadership(client, "m0", "127.0.0.1:1", 3)
            lead.start()
            space = upkeep.EtcdSpace(2 * 1024**2)
            loop = asyncio.create_task(
                upkeep.space_loop(client, space, lambda: "rescue" if space.nospace else None)
            )
            try:
                await asyncio.sleep(2)
                led_while_full = lead.is_leader
                await client.delete(b"/rota-test/", prefix=True)  # what retention does: deletes pass
                deadline = time.monotonic() + 30
                while not lead.is_leader and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                return led_while_full, lead.is_leader and not await client.alarms(), space.defrags
            finally:
                loop.cancel()
                await lead.stop()

    with EtcdCluster(tmp_path / "etcd", size=3, quota_backend_bytes=2 * 1024**2) as cluster:
        led_while_full, recovered, defrags = asyncio.run(scenario(cluster.endpoints))
    assert not led_while_full, "a campaign succeeded under NOSPACE"
    assert recovered, "no leader after the data was deleted: the alarm was never disarmed"
    assert defrags >= 3

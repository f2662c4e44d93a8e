"""Endpoints on a real cluster (issue 14): a task with a named port is told where to listen, its
executor publishes it once it listens, another task of the job finds it (waiting until it is up)
and talks to it; get-job shows it while it runs, and it is withdrawn from etcd when it ends."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from rota.metastore import keys
from rota.metastore.client import EtcdClient

pytestmark = pytest.mark.etcd

SAMPLE = Path(__file__).resolve().parents[2] / "sample" / "jobs" / "endpoints.toml"

SERVER = """
import os, socket, time
stop = {stop!r}
time.sleep(0.5)  # the client asks first: its call waits for the publish
srv = socket.create_server((os.environ["ROTA_HOST"], int(os.environ["ROTA_PORT_FEED"])))
srv.settimeout(0.05)
while not os.path.exists(stop):
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        continue
    with conn, conn.makefile("rw") as f:
        for line in f:
            f.write("echo: " + line.strip().upper() + "\\n")
            f.flush()
print("served")
"""

CLIENT = """
import socket, rota.task
addr = rota.task.endpoint("server.feed", timeout=30)
host, port = addr.rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=10) as s, s.makefile("rw") as f:
    for word in ("hello", "world"):
        f.write(word + "\\n")
        f.flush()
        print(f.readline().strip())
print("same address by task name:", rota.task.endpoint("server") == addr)
try:
    rota.task.endpoint("server.nope")
except rota.task.TaskCallError as e:
    print(e)
"""

SHELL = (
    'addr=$("$ROTA_TASK_CLI" endpoint server --timeout 30) && echo "found $addr"; '
    '"$ROTA_TASK_CLI" endpoint nobody.feed --timeout 1; echo "exit $?"'
)


def test_a_task_finds_another_tasks_endpoint_and_talks_to_it(local_cluster, tmp_path, wait_until):
    cluster = local_cluster(executors=1, executor_slots=4)
    stop = tmp_path / "stop"
    job = {
        "name": "endpoints",
        "max-attempts": 1,
        "task": [
            {"name": "server", "kind": "python", "code": SERVER.format(stop=str(stop)), "ports": ["feed"]},
            {"name": "client", "kind": "python", "code": CLIENT},
            {"name": "sh", "kind": "shell", "command": SHELL},
        ],
    }
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(job)["id"]

        def clients_done():
            doc = c.get_job(job_id)
            return (
                doc
                if all(t["state"] not in ("PENDING", "ASSIGNED", "RUNNING") for t in doc["tasks"][1:])
                else None
            )

        doc = wait_until("the clients to end", clients_done, 60, every=0.1)
        server, client, sh = doc["tasks"]
        assert server["state"] == "RUNNING", server
        addr = server["endpoints"]["feed"]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", addr), server
        assert "endpoints" not in client
        assert client["state"] == "SUCCEEDED", client
        assert client["result"]["stdout"].splitlines() == [
            "echo: HELLO",
            "echo: WORLD",
            "same address by task name: True",
            f"endpoint: task 'server' of job {job_id} has no port 'nope' (its ports: feed)",
        ]
        assert sh["state"] == "SUCCEEDED", sh
        assert sh["result"]["stdout"].splitlines() == [f"found {addr}", "exit 3"]
        assert (
            sh["result"]["stderr"].strip() == f"rota-task: endpoint: job {job_id} has no task named 'nobody'"
        )
        assert asyncio.run(stored(cluster, job_id)) == {
            "server.feed": {"addr": addr, "index": 0, "attempt": 1}
        }

        stop.touch()
        doc = c.wait_job(job_id, timeout=60)
        assert doc["state"] == "SUCCEEDED", doc
        assert doc["tasks"][0]["result"]["stdout"] == "served\n"
        assert "endpoints" not in c.get_job(job_id)["tasks"][0]
    assert wait_until(
        "the endpoint withdrawn from etcd", lambda: asyncio.run(stored(cluster, job_id)) == {}, 20
    )


async def stored(cluster, job_id: str) -> dict[str, object]:
    async with EtcdClient(cluster.etcd_endpoints, timeout=20) as client:
        kvs, _ = await client.get_prefix(keys.job_endpoints(job_id))
    return {keys.endpoint_of(kv.key)[1]: json.loads(kv.value) for kv in kvs}


LATE_CLIENT = """
import os, socket, time, rota.task
go = {go!r}
while not os.path.exists(go):
    time.sleep(0.05)
addr = rota.task.endpoint("server.feed", timeout=30)
with socket.create_connection(tuple(addr.rsplit(":", 1)), timeout=10) as s, s.makefile("rw") as f:
    f.write("after the failover\\n")
    f.flush()
    print(f.readline().strip())
"""


def test_an_endpoint_survives_a_leader_sigkill(local_cluster, tmp_path, wait_until):
    """The new leader rebuilds the endpoint from etcd: a client that asks only then finds it."""
    import signal

    cluster = local_cluster(executors=1, executor_slots=2)
    stop, go = tmp_path / "stop", tmp_path / "go"
    job = {
        "name": "endpoints-failover",
        "max-attempts": 1,
        "task": [
            {"name": "server", "kind": "python", "code": SERVER.format(stop=str(stop)), "ports": ["feed"]},
            {"name": "client", "kind": "python", "code": LATE_CLIENT.format(go=str(go))},
        ],
    }
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(job)["id"]
        addr = wait_until(
            "the endpoint in get-job",
            lambda: c.get_job(job_id)["tasks"][0].get("endpoints", {}).get("feed"),
            60,
        )
        old = cluster.leader()
        old.signal(signal.SIGKILL)
        cluster.wait_for_leader(exclude=old.name, timeout=30)
        assert c.get_job(job_id)["tasks"][0]["endpoints"] == {"feed": addr}
        go.touch()
        client = wait_until(
            "the client to end",
            lambda: (t := c.get_job(job_id)["tasks"][1])["state"] in ("SUCCEEDED", "FAILED") and t,
            60,
            every=0.1,
        )
        assert client["state"] == "SUCCEEDED", client
        assert client["result"]["stdout"] == "echo: AFTER THE FAILOVER\n"
        stop.touch()
        assert c.wait_job(job_id, timeout=60)["state"] == "SUCCEEDED"
    assert wait_until(
        "the endpoint withdrawn from etcd", lambda: asyncio.run(stored(cluster, job_id)) == {}, 20
    )


def test_the_sample_job_runs(local_cluster):
    cluster = local_cluster(executors=1, executor_slots=3)
    with cluster.client(timeout=30) as c:
        doc = c.run_job(SAMPLE, timeout=60)
    assert doc["state"] == "SUCCEEDED", doc
    out = {t["name"]: t["result"]["stdout"] for t in doc["tasks"]}
    assert out == {
        "server": "served 2 clients\n",
        "python-client": "HELLO FROM PYTHON\n",
        "shell-client": "HELLO FROM THE SHELL\n",
    }

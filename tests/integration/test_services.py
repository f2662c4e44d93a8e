"""Service tasks end to end on real processes (issue 14): a server task publishes a port, a client
task finds it and streams to it; the server's executor is SIGKILLed (and the leader too), the server
is restarted elsewhere from its checkpoint, and the client reconnects and finishes with exactly the
expected total. A stale attempt's checkpoint writes are refused. The sample service pair runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.etcd

SAMPLE = Path(__file__).resolve().parents[2] / "sample" / "jobs" / "echo-service.toml"
FAST_LEASE = ["--keepalive-ttl", "2s", "--keepalive-interval", "200ms"]
N = 200

#: Adds up what the client sends, exactly once per index: its state (the next index and the total)
#: is checkpointed before each acknowledgement, and a new attempt resumes from it.
SERVER = r"""
import json, os, socket, sys, rota.task
saved = rota.task.checkpoint.load()
state = json.loads(saved) if saved else {"next": 0, "total": 0}
print("attempt", os.environ["ROTA_ATTEMPT"], "resumes at", state["next"], flush=True)
srv = socket.create_server((os.environ["ROTA_HOST"], int(os.environ["ROTA_PORT_FEED"])))
while True:
    conn, _ = srv.accept()
    with conn, conn.makefile("rw") as f:
        f.write(f"next {state['next']}\n"); f.flush()
        for line in f:
            word, *rest = line.split()
            if word == "end":
                f.write(f"total {state['total']}\n"); f.flush()
                sys.exit(0)
            if int(word) == state["next"]:
                state = {"next": state["next"] + 1, "total": state["total"] + int(rest[0])}
                rota.task.checkpoint.save(json.dumps(state).encode())
            f.write(f"ack {state['next']}\n"); f.flush()
"""

#: Sends i*i for i below N; half-way it tells the test (which kills the server's executor) and
#: goes on when told. Any broken connection: ask where the server is now, resume where it says.
CLIENT = r"""
import os, socket, time, rota.task
N, flags = {n}, {flags!r}
told = False

def session():
    global told
    host, port = rota.task.endpoint("server.feed").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn, conn.makefile("rw") as f:
        at = int(f.readline().split()[1])
        while at < N:
            if at == N // 2 and not told:
                told = True
                open(os.path.join(flags, "half"), "w").close()
                while not os.path.exists(os.path.join(flags, "go")):
                    time.sleep(0.02)
            f.write(f"{{at}} {{at * at}}\n"); f.flush()
            at = int(f.readline().split()[1])
        f.write("end\n"); f.flush()
        return int(f.readline().split()[1])

reconnects = 0
while True:
    try:
        total = session()
        break
    except (OSError, ValueError, IndexError):
        reconnects += 1
        time.sleep(0.1)
print("total", total)
print("reconnected", "yes" if reconnects else "no")
"""


def _process_of(cluster, c, executor_id: str):
    """The executor process a task doc's ``executor`` (an executor id) names."""
    name = next(e["name"] for e in c.list_executors() if e["id"] == executor_id)
    return next(p for p in cluster.executors if p.name == name)


def _pair(flags: Path) -> dict:
    return {
        "name": "service-pair",
        "task": [
            {"name": "server", "kind": "python", "service": True, "ports": ["feed"], "code": SERVER},
            {"name": "client", "kind": "python", "code": CLIENT.format(n=N, flags=str(flags))},
        ],
    }


@pytest.mark.parametrize("leader_too", [False, True], ids=["executor", "executor-and-leader"])
def test_a_service_moves_with_its_checkpoint_and_its_client_finds_it_again(
    local_cluster, tmp_path, wait_until, leader_too
):
    cluster = local_cluster()
    for _ in range(3):
        cluster.add_executor(slots=1, args=FAST_LEASE)
    cluster.wait_for_executors(3)
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(_pair(tmp_path))["id"]
        wait_until("the client half-way", lambda: (tmp_path / "half").exists(), 60)
        server = c.get_job(job_id)["tasks"][0]
        assert server["state"] == "RUNNING" and server["endpoints"]["feed"], server
        victim = _process_of(cluster, c, server["executor"])
        victim.signal(signal.SIGKILL)
        if leader_too:
            old = cluster.leader()
            old.signal(signal.SIGKILL)
            cluster.wait_for_leader(exclude=old.name, timeout=30)
        (tmp_path / "go").touch()
        doc = c.wait_job(job_id, timeout=120)
    server, client = doc["tasks"]
    assert doc["state"] == "SUCCEEDED", doc
    assert client["result"]["stdout"].splitlines() == [
        f"total {sum(i * i for i in range(N))}",
        "reconnected yes",
    ]
    assert server["attempt"] == 2 and not server["executor"].startswith(f"{victim.name}-"), server
    assert server["restarts"] == 1, server
    first_line = server["result"]["stdout"].splitlines()[0]
    resumed_at = int(first_line.rsplit(" ", 1)[1])
    assert first_line.startswith("attempt 2 resumes at ") and resumed_at >= N // 2, first_line


STALE = r"""
import os, time, rota.task
flags = {flags!r}
if os.environ["ROTA_ATTEMPT"] == "1":
    open(os.path.join(flags, "first"), "w").close()
    i = 0
    while True:
        i += 1
        try:
            rota.task.checkpoint.save(f"attempt 1 save {{i}}".encode())
            outcome = "saved"
        except rota.task.TaskCallError as e:
            outcome = f"refused: {{e}}"
        with open(os.path.join(flags, "first.log"), "a") as log:
            log.write(outcome + "\n")
        time.sleep(0.05)
rota.task.checkpoint.save(b"attempt 2")
while not os.path.exists(os.path.join(flags, "go")):
    time.sleep(0.05)
print(rota.task.checkpoint.load().decode())
"""


def test_a_stale_attempt_cannot_overwrite_the_checkpoint_of_the_current_one(
    local_cluster, tmp_path, wait_until
):
    """The first attempt's executor freezes past its lease while the task keeps saving: the task runs
    again elsewhere, and once the old executor thaws nothing its attempt sends is written."""
    cluster = local_cluster()
    for _ in range(2):
        cluster.add_executor(slots=1, args=FAST_LEASE)
    cluster.wait_for_executors(2)
    job = {
        "name": "stale",
        "task": [{"name": "t", "kind": "python", "code": STALE.format(flags=str(tmp_path))}],
    }
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(job)["id"]
        wait_until("the first attempt saving", lambda: (tmp_path / "first.log").exists(), 60)
        first = c.get_job(job_id)["tasks"][0]
        frozen = _process_of(cluster, c, first["executor"])
        frozen.signal(signal.SIGSTOP)
        try:
            wait_until(
                "the second attempt running elsewhere",
                lambda: (t := c.get_job(job_id)["tasks"][0])["attempt"] == 2 and t["state"] == "RUNNING",
                60,
            )
        finally:
            frozen.signal(signal.SIGCONT)
        cluster.wait_for_executors(2)
        # The thawed executor had the first attempt's calls queued: let them reach the leader, until
        # one is refused or the first attempt stops (its executor ends it).
        log = tmp_path / "first.log"
        seen = [-1, time.monotonic()]

        def settled() -> bool:
            text = log.read_text()
            if "refused" in text:
                return True
            if len(text) != seen[0]:
                seen[:] = [len(text), time.monotonic()]
            return time.monotonic() - seen[1] > 1.0

        wait_until("the first attempt's calls answered or stopped", settled, 30)
        (tmp_path / "go").touch()
        doc = c.wait_job(job_id, timeout=60)
    task = doc["tasks"][0]
    assert doc["state"] == "SUCCEEDED", task
    assert task["result"]["stdout"].strip() == "attempt 2", task


def test_the_sample_service_pair_runs(local_cluster):
    cluster = local_cluster(executors=2)
    with cluster.client(timeout=30) as c:
        doc = c.run_job(str(SAMPLE), timeout=120)
    echo, client = doc["tasks"]
    assert doc["state"] == "SUCCEEDED", doc
    assert client["result"]["stdout"].splitlines() == ["echo: one", "echo: two", "echo: three"]
    assert echo["result"]["stdout"].strip() == "echo server done"

"""``make demo``: a real local cluster runs sample jobs, survives a leader kill, and stops.

Starts three masters (each with its embedded etcd member) and two executors on free
loopback ports, secured as a cluster beyond loopback must be: mutual TLS on every link (a fresh CA
in ./demo-logs/tls/) and tokens (the admin token in ./demo-logs/admin.token). It prints
``cluster-status``, shows a read token refused a submission, submits ``sample/jobs/hello.toml``, the
split job ``sample/jobs/split.toml``, the task graph ``sample/jobs/etl.toml``, the service pair ``sample/jobs/echo-service.toml``, and
prints their results, SIGKILLs the leader,
runs one more job on the new leader, then the dataflow bench at a small size with an executor
SIGKILLed mid-flow and its report, and stops everything. Logs stay in ./demo-logs/.
On the way it lists the masters' dashboard URLs and a few of the leader's metrics;
``ROTA_DEMO_HOLD=60 make demo`` keeps the cluster up a minute to look at them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rota.devtools.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]


#: What master-client is given to reach the demo cluster: set once, as a user would export them.
CLIENT_ENV: dict[str, str] = {}


def master_client(addresses: str, *args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "rota.client.cli", "--master-addr", addresses, *args]
    print(f"\n$ bin/master-client {' '.join(args)}", flush=True)
    subprocess.run(cmd, check=False, env={**os.environ, **CLIENT_ENV, **(env or {})})


def client_env(cluster: LocalCluster) -> dict[str, str]:
    assert cluster.tls is not None and cluster.admin_token is not None
    return {
        "ROTA_TLS_CA": cluster.tls.ca,
        "ROTA_TLS_CERT": cluster.tls.cert,
        "ROTA_TLS_KEY": cluster.tls.key,
        "ROTA_TOKEN_FILE": str(cluster.base_dir / "admin.token"),
    }


def show_http(cluster: LocalCluster, leader_url: str) -> None:
    """Point at the dashboards and show a few of the leader's metrics, as curl would."""
    print("\nDashboard, HTTP API (/api/v1) and /metrics on every master:", flush=True)
    for m in cluster.masters:
        print(f"  {m.name}: {m.http_url}/")
    print(
        f"\n$ curl -s --cacert {cluster.tls.ca if cluster.tls else ''} {leader_url}/metrics | grep -E '^rota_(leader|executors|tasks|jobs)\\b'"
    )
    assert cluster.tls is not None
    https = ssl.create_default_context(cafile=cluster.tls.ca)
    with urllib.request.urlopen(leader_url + "/metrics", timeout=10, context=https) as resp:
        for line in resp.read().decode().splitlines():
            if re.match(r"rota_(leader|executors|tasks|jobs)\b", line) and not line.endswith(" 0.0"):
                print(line)
    hold = float(os.environ.get("ROTA_DEMO_HOLD") or 0)
    if hold > 0:
        print(f"\nROTA_DEMO_HOLD: the cluster stays up {hold:g}s; open a dashboard above.", flush=True)
        time.sleep(hold)


DATAFLOW = """\
# The dataflow bench at a small size: the original's five keys (claimed by the dataflow job type),
# paced so that the flow is still running when an executor is killed.
flow-id = "demo"
table-num = 4
servers = ["binlog-a", "binlog-b"]
rcd-cnt = 20000
ddl-freq = 5000
pace = 5000
out-dir = "{out}"
"""


def dataflow(cluster: LocalCluster, addresses: str, logs: Path) -> None:
    """The seed's demonstration: submit the bench job, kill an executor mid-flow, and the tasks are
    scheduled again by themselves; the job's report checks every sink file."""
    from rota.common.jobspec import load_job

    config = logs / "dataflow.toml"
    out = logs / "dataflow"
    config.write_text(DATAFLOW.format(out=out))
    print(f"\nThe dataflow bench (docs/dataflow.md), small: {config}", flush=True)
    print(f"$ bin/master-client submit-job --config {config}", flush=True)
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(load_job(str(config)).to_dict())["id"]
        print(f"submitted {job_id}", flush=True)
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in out.glob("demo/chain_*/table_*")):
            if time.monotonic() > deadline:
                raise SystemExit("the dataflow never started writing")
            time.sleep(0.05)
        binlog = next(t for t in c.get_job(job_id)["tasks"] if t["name"] == "binlog-shard0")
        name = next(e["name"] for e in c.list_executors() if e["id"] == binlog["executor"])
    victim = next(p for p in cluster.executors if p.name == name)
    print(
        f"\nThe sinks are writing. SIGKILL executor {name} (pid {victim.pid}), which runs binlog-shard0 ..."
    )
    victim.signal(signal.SIGKILL)
    print("Its tasks move to the other executor and resume from their checkpoints:", flush=True)
    master_client(addresses, "wait-job", job_id)


def main() -> int:
    logs = ROOT / "demo-logs"
    shutil.rmtree(logs, ignore_errors=True)
    print(f"Starting three masters with embedded etcd and two executors (logs in {logs}/) ...", flush=True)
    t0 = time.monotonic()
    with LocalCluster(
        logs, etcd_tuning=("50ms", "500ms"), executors=2, executor_slots=10, tls=True, tokens=True
    ) as cluster:
        CLIENT_ENV.update(client_env(cluster))
        print(
            f"Cluster ready in {time.monotonic() - t0:.1f}s (mutual TLS and tokens on); "
            f"ROTA_MASTER_ADDR={cluster.addresses}",
            flush=True,
        )
        print("The client's environment:", " ".join(f"{k}={v}" for k, v in CLIENT_ENV.items()), flush=True)
        addrs = cluster.addresses
        master_client(addrs, "cluster-status")
        master_client(addrs, "list-executors")
        with cluster.client() as c:
            reader, _ = c.create_token("read", "demo-reader")
        master_client(addrs, "token", "list")
        print("\nA read token may look but not submit (exit 5):", flush=True)
        master_client(
            addrs,
            "submit-job",
            "--config",
            "sample/jobs/hello.toml",
            env={"ROTA_TOKEN_FILE": "", "ROTA_TOKEN": reader},
        )
        master_client(addrs, "submit-job", "--config", "sample/jobs/hello.toml", "--wait")
        master_client(addrs, "submit-job", "--config", "sample/jobs/split.toml", "--wait")
        print("\nA graph of tasks, each run after those it names (after = [...]):", flush=True)
        master_client(addrs, "submit-job", "--config", "sample/jobs/etl.toml", "--wait")
        print("\nA service and its client, which finds it by name (rota.task.endpoint):", flush=True)
        master_client(addrs, "submit-job", "--config", "sample/jobs/echo-service.toml", "--wait")
        leader = cluster.leader()
        show_http(cluster, leader.http_url)
        print(f"\nSIGKILL the leader {leader.name} (pid {leader.pid}) ...", flush=True)
        t1 = time.monotonic()
        leader.signal(signal.SIGKILL)
        new = cluster.wait_for_leader(exclude=leader.name, timeout=30)
        print(f"{new} leads {time.monotonic() - t1:.2f}s later.", flush=True)
        survivors = ",".join(m.addr for m in cluster.masters if m is not leader)
        master_client(survivors, "cluster-status")
        master_client(survivors, "submit-job", "--config", "sample/jobs/batch.toml", "--wait")
        dataflow(cluster, survivors, logs)
        print("\nStopping the cluster.", flush=True)
    print(f"Demo done in {time.monotonic() - t0:.1f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make demo``: a real local cluster runs sample jobs, survives a leader kill, and stops.

Starts three masters (each with its embedded etcd member) and two executors on free
loopback ports, prints ``cluster-status``, submits ``sample/jobs/hello.toml`` and the
split job ``sample/jobs/split.toml`` and prints their results, SIGKILLs the leader,
runs one more job on the new leader, and stops everything. Logs stay in ./demo-logs/.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from scheduler.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]


def master_client(addresses: str, *args: str) -> None:
    cmd = [sys.executable, "-m", "scheduler.client_cli", "--master-addr", addresses, *args]
    print(f"\n$ bin/master-client {' '.join(args)}", flush=True)
    subprocess.run(cmd, check=False)


def main() -> int:
    logs = ROOT / "demo-logs"
    shutil.rmtree(logs, ignore_errors=True)
    print(f"Starting three masters with embedded etcd and two executors (logs in {logs}/) ...", flush=True)
    t0 = time.monotonic()
    with LocalCluster(logs, etcd_tuning=("50ms", "500ms"), executors=2, executor_slots=2) as cluster:
        print(
            f"Cluster ready in {time.monotonic() - t0:.1f}s; ROTA_MASTER_ADDR={cluster.addresses}", flush=True
        )
        addrs = cluster.addresses
        master_client(addrs, "cluster-status")
        master_client(addrs, "list-executors")
        master_client(addrs, "submit-job", "--config", "sample/jobs/hello.toml", "--wait")
        master_client(addrs, "submit-job", "--config", "sample/jobs/split.toml", "--wait")
        leader = cluster.leader()
        print(f"\nSIGKILL the leader {leader.name} (pid {leader.pid}) ...", flush=True)
        t1 = time.monotonic()
        leader.signal(signal.SIGKILL)
        new = cluster.wait_for_leader(exclude=leader.name, timeout=30)
        print(f"{new} leads {time.monotonic() - t1:.2f}s later.", flush=True)
        survivors = ",".join(m.addr for m in cluster.masters if m is not leader)
        master_client(survivors, "cluster-status")
        master_client(survivors, "submit-job", "--config", "sample/jobs/batch.toml", "--wait")
        print("\nStopping the cluster.", flush=True)
    print(f"Demo done in {time.monotonic() - t0:.1f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

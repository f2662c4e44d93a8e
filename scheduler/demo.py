"""``make demo``: a real local cluster, shown working and failing over, then stopped.

Starts three masters (each with its embedded etcd member) on free loopback ports,
prints ``master-client cluster-status``, SIGKILLs the leader, prints the status
again as a survivor sees it, and stops everything. Logs stay in ./demo-logs/.
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
    print(f"\n$ bin/master-client --master-addr {addresses} {' '.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    logs = ROOT / "demo-logs"
    shutil.rmtree(logs, ignore_errors=True)
    print(f"Starting three masters with embedded etcd (logs in {logs}/) ...", flush=True)
    t0 = time.monotonic()
    with LocalCluster(logs, etcd_tuning=("50ms", "500ms")) as cluster:
        print(f"Cluster ready in {time.monotonic() - t0:.1f}s.", flush=True)
        master_client(cluster.addresses, "cluster-status")
        leader = cluster.leader()
        print(f"\nSIGKILL the leader {leader.name} (pid {leader.pid}) ...", flush=True)
        t1 = time.monotonic()
        leader.signal(signal.SIGKILL)
        new = cluster.wait_for_leader(exclude=leader.name, timeout=30)
        print(f"{new} leads {time.monotonic() - t1:.2f}s later.", flush=True)
        survivors = ",".join(m.addr for m in cluster.masters if m is not leader)
        master_client(survivors, "cluster-status")
        print("\nStopping the cluster.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Leader failover time: signal the leader, time until a survivor's cluster-status names a new one.

Runs a local three-master cluster (embedded etcd, default 3 s leader lease) and, for
SIGKILL and for SIGTERM, repeats: find the leader, signal it, poll cluster-status through
the survivors until it names another leader, restart the signalled master. Prints the
median and worst of the trials and writes them to bench/results/failover.json.

    .venv/bin/python bench/failover.py [--trials 10]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rota.client.api import Client, NoMasterReachable
from rota.devtools.localcluster import LocalCluster


def one_trial(cluster: LocalCluster, sig: signal.Signals) -> float:
    leader = cluster.leader()
    survivors = ",".join(m.addr for m in cluster.masters if m is not leader)
    with Client(survivors, timeout=2.0, token=cluster.admin_token or "", tls=cluster.tls) as c:
        c.cluster_status()  # warm the channels so the timing is the failover alone
        t0 = time.monotonic()
        leader.signal(sig)
        while True:
            try:
                s = c.cluster_status()
                if s["leader"] and s["leader"]["name"] != leader.name:
                    elapsed = time.monotonic() - t0
                    break
            except NoMasterReachable:
                pass
            if time.monotonic() - t0 > 30:
                raise TimeoutError(f"no new leader 30 s after {sig.name}")
            time.sleep(0.005)
    leader.wait(10)
    leader.start()
    cluster.wait_for_leader(timeout=60, all_reachable=True)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "failover.json"))
    args = ap.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="rota-failover-") as tmp, LocalCluster(tmp) as cluster:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            times = [one_trial(cluster, sig) for _ in range(args.trials)]
            results[sig.name] = {
                "trials": len(times),
                "median_s": round(statistics.median(times), 3),
                "worst_s": round(max(times), 3),
                "all_s": [round(t, 3) for t in times],
            }
    print(f"{'signal':<8} {'trials':>6} {'median':>9} {'worst':>9}   (leader lease TTL 3 s)")
    for name, r in results.items():
        print(f"{name:<8} {r['trials']:>6} {r['median_s']:>8.3f}s {r['worst_s']:>8.3f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"failover": results, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

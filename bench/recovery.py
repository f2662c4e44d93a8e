"""Recovery times under real faults, median and worst of N trials (issue 4).

- leader SIGKILL until a new leader accepts a submission (client on the survivors);
- executor SIGKILL until its running task is dispatched to the other executor;
- executor SIGSTOP until the same (bounded below by --keepalive-ttl, 5 s by default).

    .venv/bin/python bench/recovery.py [--trials 10]
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

LONG = {
    "name": "long",
    "max-attempts": 100,
    "task": [{"name": "s", "kind": "sleep", "seconds": 600, "count": 2}],
}


def leader_kill(cluster: LocalCluster) -> float:
    leader = cluster.leader()
    survivors = ",".join(m.addr for m in cluster.masters if m is not leader)
    with Client(survivors, timeout=30) as c:
        c.cluster_status()
        t0 = time.monotonic()
        leader.signal(signal.SIGKILL)
        c.submit_job({"name": "probe", "task": [{"name": "t", "kind": "noop"}]})
        elapsed = time.monotonic() - t0
    leader.wait(10)
    leader.start()
    cluster.wait_for_leader(timeout=60, all_reachable=True)
    return elapsed


def executor_fault(cluster: LocalCluster, sig: signal.Signals) -> float:
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(LONG)["id"]
        while True:
            tasks = c.get_job(job_id)["tasks"]
            if all(t["state"] == "RUNNING" for t in tasks) and len({t["executor"] for t in tasks}) == 2:
                break
            time.sleep(0.01)
        victim = cluster.executors[0]
        victim_id = next(e["id"] for e in c.list_executors() if e["name"] == victim.name)
        task = next(t for t in tasks if t["executor"] == victim_id)
        t0 = time.monotonic()
        victim.signal(sig)
        while True:
            t = next(x for x in c.get_job(job_id)["tasks"] if x["id"] == task["id"])
            if t["attempt"] > task["attempt"] and t["state"] in ("ASSIGNED", "RUNNING"):
                elapsed = time.monotonic() - t0
                break
            time.sleep(0.005)
        c.cancel_job(job_id)
        if sig == signal.SIGSTOP:
            victim.signal(signal.SIGCONT)
        else:
            victim.wait(10)
            victim.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = [e for e in c.list_executors() if e["state"] == "ready" and e["running"] == 0]
                if len(ready) == 2:
                    break
            except NoMasterReachable:
                pass
            assert time.monotonic() < deadline, (
                f"executors did not settle: {c.list_executors()}\n{victim.log_tail()}"
            )
            time.sleep(0.05)
    return elapsed


def summary(times: list[float]) -> dict[str, object]:
    return {
        "trials": len(times),
        "median_s": round(statistics.median(times), 3),
        "worst_s": round(max(times), 3),
        "all_s": [round(t, 3) for t in times],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recovery.json"))
    args = ap.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="rota-recovery-") as tmp:
        with LocalCluster(tmp, executors=2, executor_slots=2) as cluster:
            results["leader SIGKILL -> submission accepted"] = summary(
                [leader_kill(cluster) for _ in range(args.trials)]
            )
            results["executor SIGKILL -> task runs elsewhere"] = summary(
                [executor_fault(cluster, signal.SIGKILL) for _ in range(args.trials)]
            )
            results["executor SIGSTOP -> task runs elsewhere (ttl 5s)"] = summary(
                [executor_fault(cluster, signal.SIGSTOP) for _ in range(args.trials)]
            )
    width = max(len(k) for k in results)
    print(f"{'fault':<{width}}  trials   median    worst")
    for name, r in results.items():
        print(f"{name:<{width}}  {r['trials']:>6} {r['median_s']:>7.3f}s {r['worst_s']:>7.3f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

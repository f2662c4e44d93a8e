"""What security costs: the same workloads on a plain cluster and on one with mutual TLS and tokens.

Three masters (embedded etcd) and two executors of one slot, started plain and secure in turn
(A B A B ...: this machine's speed drifts, so only alternating runs compare). Each run times
``--tasks`` ``call`` tasks submitted at once then waited for, ``--jobs`` sequential one-task round
trips, and ``--failovers`` leader SIGKILLs (until a survivor names a new leader). Prints medians
of the runs and the secure/plain ratios; writes bench/results/secure.json.

    .venv/bin/python -m bench.secure [--rounds 3] [--tasks 10000] [--jobs 300] [--failovers 3]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.failover import one_trial
from bench.results import CALL_TASK, percentiles_ms, round_trips, save
from rota.devtools.localcluster import LocalCluster


def one_run(secure: bool, tasks: int, jobs: int, failovers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rota-secure-") as tmp:
        cluster = LocalCluster(tmp, executors=2, executor_slots=1, tls=secure, tokens=secure)
        with cluster, cluster.client(60) as c:
            c.wait_job(
                c.submit_job({"name": "warm", "task": [{"name": "t", **CALL_TASK, "count": 500}]})["id"], 600
            )
            t0 = time.perf_counter()
            job = c.submit_job({"name": "tp", "task": [{"name": "t", **CALL_TASK, "count": tasks}]})
            doc = c.wait_job(job["id"], timeout=3600)
            rate = tasks / (time.perf_counter() - t0)
            assert doc["counts"] == {"SUCCEEDED": tasks}, doc["counts"]
            lat = percentiles_ms(round_trips(c, CALL_TASK, jobs))
            fo = [one_trial(cluster, signal.SIGKILL) for _ in range(failovers)]
    return {"call_tasks_per_s": round(rate), **lat, "failover_s": round(statistics.median(fo), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "secure.json"))
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "secure": []}
    for r in range(args.rounds):
        for mode in ("plain", "secure"):
            out = one_run(mode == "secure", args.tasks, args.jobs, args.failovers)
            runs[mode].append(out)
            print(f"round {r + 1} {mode:6s}: {out}", flush=True)
    medians: dict[str, dict[str, float]] = {
        mode: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for mode, rs in runs.items()
    }
    print(
        f"\nmedians of {args.rounds} alternating runs; secure = mutual TLS on every link and tokens on every call"
    )
    print(f"{'figure':22s} {'plain':>10s} {'secure':>10s} {'secure/plain':>13s}")
    for k in medians["plain"]:
        p, s = medians["plain"][k], medians["secure"][k]
        print(f"{k:22s} {p:10g} {s:10g} {s / p if p else float('nan'):13.2f}")
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "args": vars(args),
        "runs": runs,
        "medians": medians,
    }
    save(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

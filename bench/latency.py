"""Round-trip latency: sequential one-task jobs (a Python function by default), submit-and-wait, p50/p99.

.venv/bin/python -m bench.latency [--jobs 500] [--kind noop]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rota.devtools.localcluster import LocalCluster


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--kind", default="call", choices=["call", "noop"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency.json"))
    args = ap.parse_args()
    task = {"name": "t", "kind": "noop"}
    if args.kind == "call":
        task = {"name": "t", "kind": "call", "function": "operator:mul", "args": [6, 7]}
    job = {"name": "rt", "task": [task]}
    times = []
    with tempfile.TemporaryDirectory(prefix="rota-latency-") as tmp:
        with LocalCluster(tmp, executors=2, executor_slots=1) as cluster, cluster.client(30) as c:
            for _ in range(20):  # warm up channels and the leader
                c.wait_job(c.submit_job(job)["id"], timeout=30)
            for _ in range(args.jobs):
                t0 = time.perf_counter()
                doc = c.wait_job(c.submit_job(job)["id"], timeout=30)
                times.append(time.perf_counter() - t0)
                assert doc["state"] == "SUCCEEDED"
    q = statistics.quantiles(times, n=100)
    result = {
        "jobs": args.jobs,
        "kind": args.kind,
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }
    print(f"{args.jobs} sequential one-task {args.kind} jobs, submit and wait: "
          f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

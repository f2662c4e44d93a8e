"""Round-trip latency: sequential one-task no-op jobs, submit-and-wait, p50/p99.

.venv/bin/python bench/latency.py [--jobs 500]
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
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency.json"))
    args = ap.parse_args()
    job = {"name": "rt", "task": [{"name": "t", "kind": "noop"}]}
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
    result = {"jobs": args.jobs, "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}
    print(
        f"{args.jobs} sequential one-task jobs, submit and wait: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

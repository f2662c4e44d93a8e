"""Throughput baseline: one job of N no-op tasks on a demo-like cluster, submit to all SUCCEEDED.

Three masters with embedded etcd and two executors on this machine; prints tasks/s for
each run and the median, and writes bench/results/throughput.json.

    .venv/bin/python bench/throughput.py [--tasks 20000] [--runs 3] [--slots 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.localcluster import LocalCluster  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--slots", type=int, default=2, help="slots per executor (two executors)")
    ap.add_argument("--prefetch", type=int, default=0, help="executor --prefetch (tasks queued beyond slots)")
    ap.add_argument("--kind", default="noop", choices=["noop", "call"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    args = ap.parse_args()
    task = {"name": "t", "kind": "noop", "count": args.tasks}
    if args.kind == "call":
        task = {"name": "t", "kind": "call", "function": "operator:mul", "args": [6, 7], "count": args.tasks}
    rates = []
    with tempfile.TemporaryDirectory(prefix="rota-throughput-") as tmp:
        cluster = LocalCluster(
            tmp, executors=2, executor_slots=args.slots, executor_args=["--prefetch", str(args.prefetch)]
        )
        with cluster, cluster.client(30) as c:
            for run in range(args.runs):
                t0 = time.monotonic()
                job = c.submit_job({"name": f"bench-{run}", "task": [task]})
                submitted = time.monotonic() - t0
                doc = c.wait_job(job["id"], timeout=3600)
                elapsed = time.monotonic() - t0
                assert doc["counts"] == {"SUCCEEDED": args.tasks}, doc["counts"]
                rates.append(args.tasks / elapsed)
                print(f"run {run + 1}: {args.tasks} {args.kind} tasks in {elapsed:.2f}s "
                      f"(submit {submitted:.2f}s) = {rates[-1]:.0f} tasks/s", flush=True)  # fmt: skip
    result = {
        "tasks": args.tasks, "kind": args.kind, "executors": 2, "slots_per_executor": args.slots,
        "prefetch": args.prefetch,
        "runs_tasks_per_s": [round(r) for r in rates], "median_tasks_per_s": round(statistics.median(rates)),
    }  # fmt: skip
    print(f"median {result['median_tasks_per_s']} tasks/s over {args.runs} runs")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

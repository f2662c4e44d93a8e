"""Task calls (the task SDK, issue 14): round trips of checkpoint.save, checkpoint.load and progress
as a running task sees them (task -> executor socket -> leader -> etcd commit -> back).

One ``python`` task on a local cluster (three masters, one executor) makes ``--calls`` of each in
turn and prints its own timings; this script prints p50 and p99 of each.

    .venv/bin/python -m bench.task_calls [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.results import save
from rota.devtools.localcluster import LocalCluster

CODE = """
import json, statistics, time
from rota import task
n = {calls}
out = {{}}
for name, call in (("checkpoint.save", lambda i: task.checkpoint.save(b"x" * 1024)),
                   ("checkpoint.load", lambda i: task.checkpoint.load()),
                   ("progress", lambda i: task.progress(i / n, "bench"))):
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=100)
    out[name] = {{"p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}}
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "task_calls.json"))
    args = ap.parse_args()
    job = {
        "name": "task-calls",
        "task": [{"name": "b", "kind": "python", "code": CODE.format(calls=args.calls)}],
    }
    with tempfile.TemporaryDirectory(prefix="rota-task-calls-") as tmp:
        with LocalCluster(tmp, executors=1) as cluster, cluster.client(60) as c:
            doc = c.run_job(job, timeout=600)
    result = doc["tasks"][0]["result"]
    if doc["state"] != "SUCCEEDED":
        raise SystemExit(f"the bench task failed: {result}")
    figures = json.loads(result["stdout"].strip().splitlines()[-1])
    for name, f in figures.items():
        print(f"{name:16s} p50 {f['p50_ms']:6.2f} ms   p99 {f['p99_ms']:6.2f} ms   ({args.calls} calls)")
    save(args.out, {"calls": args.calls, **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())

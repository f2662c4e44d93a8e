"""Round-trip latency: sequential one-task jobs (a Python function by default), submit-and-wait, p50/p99.

With ``--after-burst N`` a job of N tasks runs first, then round trips go on for ``--settle`` seconds
and each 10 s window is printed with the etcd compactions that fell in it: the tail right after a
burst lasts until the leader compacts the burst's revisions (docs/benchmarks.md).

.venv/bin/python -m bench.latency [--jobs 500] [--kind noop] [--tls] [--after-burst 120000 --settle 150]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.results import CALL_TASK, NOOP_TASK, percentiles_ms, round_trips, save
from rota.devtools.localcluster import LocalCluster


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--kind", default="call", choices=["call", "noop"])
    ap.add_argument("--tls", action="store_true", help="every link over mutual TLS (a fresh CA)")
    ap.add_argument(
        "--out", default=None, help="[default: results/latency.json, latency-tls.json with --tls]"
    )
    ap.add_argument("--after-burst", type=int, default=0, metavar="N", help="first run a job of N tasks")
    ap.add_argument("--settle", type=float, default=150.0, help="seconds of round trips after the burst")
    args = ap.parse_args()
    out = args.out or str(
        Path(__file__).parent
        / "results"
        / f"latency{'-tls' if args.tls else ''}{'-burst' if args.after_burst else ''}.json"
    )
    with tempfile.TemporaryDirectory(prefix="rota-latency-") as tmp:
        with (
            LocalCluster(tmp, executors=2, executor_slots=1, tls=args.tls) as cluster,
            cluster.client(30) as c,
        ):
            task = CALL_TASK if args.kind == "call" else NOOP_TASK
            if args.after_burst:
                round_trips(c, task, 20, warm_up=0)
                return _after_burst(cluster.etcd_endpoints[0], c, task, args, out)
            times = round_trips(c, task, args.jobs)
    result = {"jobs": args.jobs, "kind": args.kind, "tls": args.tls, **percentiles_ms(times)}
    print(f"{args.jobs} sequential one-task {args.kind} jobs{' over TLS' if args.tls else ''}, submit and wait: "
          f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")  # fmt: skip
    save(out, result)
    return 0


_COMPACTIONS = "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count"


def _compactions(endpoint: str) -> float | None:
    """etcd's count of compactions so far; None where its metrics cannot be read (over TLS)."""
    try:
        with urllib.request.urlopen(endpoint + "/metrics", timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(_COMPACTIONS + " "):
                    return float(line.split()[-1])
    except OSError:
        pass
    return None


def _after_burst(endpoint: str, c: Any, task: dict[str, Any], args: argparse.Namespace, out: str) -> int:
    t0 = time.perf_counter()
    burst = c.submit_job({"name": "burst", "task": [{"name": "t", **task, "count": args.after_burst}]})
    doc = c.wait_job(burst["id"], timeout=3600)
    if doc["state"] != "SUCCEEDED":
        print(f"the burst ended {doc['state']}: {doc.get('counts')}", file=sys.stderr)
        return 1
    print(f"a burst of {args.after_burst:,} {args.kind} tasks took {time.perf_counter() - t0:.1f} s; then:")
    windows = []
    start = time.perf_counter()
    while time.perf_counter() - start < args.settle:
        at, before, times = time.perf_counter() - start, _compactions(endpoint), []
        while time.perf_counter() - start < at + 10:
            times += round_trips(c, task, 25, warm_up=0)
        p = percentiles_ms(times)
        after = _compactions(endpoint)
        seen = None if before is None or after is None else round(after - before)
        w = {"at": round(at), "jobs": len(times), **p, "compactions": seen}
        windows.append(w)
        print(f"  {w['at']:4d} s: {len(times)} round trips, p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms "
              f"({p['p99_ms'] / p['p50_ms']:.2f}x), etcd compactions {'?' if seen is None else seen}")  # fmt: skip
    save(out, {"kind": args.kind, "tls": args.tls, "after_burst": args.after_burst, "windows": windows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

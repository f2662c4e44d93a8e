"""Round-trip latency: sequential one-task jobs (a Python function by default), submit-and-wait, p50/p99.

.venv/bin/python -m bench.latency [--jobs 500] [--kind noop] [--tls]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

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
    args = ap.parse_args()
    out = args.out or str(Path(__file__).parent / "results" / f"latency{'-tls' if args.tls else ''}.json")
    with tempfile.TemporaryDirectory(prefix="rota-latency-") as tmp:
        with (
            LocalCluster(tmp, executors=2, executor_slots=1, tls=args.tls) as cluster,
            cluster.client(30) as c,
        ):
            times = round_trips(c, CALL_TASK if args.kind == "call" else NOOP_TASK, args.jobs)
    result = {"jobs": args.jobs, "kind": args.kind, "tls": args.tls, **percentiles_ms(times)}
    print(f"{args.jobs} sequential one-task {args.kind} jobs{' over TLS' if args.tls else ''}, submit and wait: "
          f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")  # fmt: skip
    save(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

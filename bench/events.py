"""Event stream delivery latency: from a submission's acknowledgement (the job is committed) to
the moment a client watching from another master receives the job's "submitted" change, and to
the "ended" change after the job's own end is acknowledged by wait-job.

A local cluster of three masters and one executor, default flags; ``--trials`` one-task noop jobs.

    .venv/bin/python -m bench.events [--trials 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.results import save
from rota.client.api import Client
from rota.devtools.localcluster import LocalCluster


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "events.json"))
    args = ap.parse_args()
    seen: dict[tuple[str, str], float] = {}
    ready = threading.Event()
    with tempfile.TemporaryDirectory(prefix="rota-events-") as tmp, LocalCluster(tmp, executors=1) as cluster:
        leader = cluster.leader()
        follower = next(m for m in cluster.masters if m is not leader)

        def watch() -> None:
            with Client(follower.addr, timeout=30) as c:
                for _, changes in c.watch_events(cursor=True):
                    ready.set()
                    now = time.monotonic()
                    for ch in changes:
                        if ch["event"] in ("submitted", "ended"):
                            seen[(ch["job"], ch["event"])] = now
                    if ("t-last", "ended") in seen:
                        return

        threading.Thread(target=watch, daemon=True).start()
        ready.wait(30)
        acked: dict[tuple[str, str], float] = {}
        with cluster.client(timeout=30) as c:
            for i in range(args.trials):
                job_id = "t-last" if i == args.trials - 1 else f"t-{i}"
                c.submit_job({"name": "e", "id": job_id, "task": [{"name": "n", "kind": "noop"}]})
                acked[(job_id, "submitted")] = time.monotonic()
                c.wait_job(job_id, timeout=30)
                acked[(job_id, "ended")] = time.monotonic()
        deadline = time.monotonic() + 10
        while ("t-last", "ended") not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
    result: dict[str, object] = {"trials": args.trials}
    for kind in ("submitted", "ended"):
        lat = [1000 * (seen[k] - acked[k]) for k in acked if k[1] == kind and k in seen]
        lat.sort()
        result[kind] = {
            "received": len(lat), "p50_ms": round(statistics.median(lat), 2),
            "p99_ms": round(lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))], 2), "max_ms": round(lat[-1], 2),
        }  # fmt: skip
        print(f"{kind}: received {len(lat)}/{args.trials}; after the acknowledgement p50 "
              f"{result[kind]['p50_ms']} ms, p99 {result[kind]['p99_ms']} ms (negative: the event came first)")  # type: ignore[index]  # fmt: skip
    save(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

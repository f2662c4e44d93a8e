"""A big job must not make the masters slow to answer anything else.

Submits one job of N ``call`` tasks with ``master-client submit-job --wait`` on a cluster with the
default settings (three masters, 2 executors of 1 slot) and, until it ends, asks every master in turn
for cluster-status and list-jobs every 50 ms. Prints the answer times (p50, p99, max) and how long
the job took; the target is every answer within 100 ms.

    .venv/bin/python -m bench.responsive [--tasks 200000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.results import percentiles_ms, save
from rota.client.api import Client
from rota.devtools.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "responsive.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rota-responsive-") as tmp:
        job_file = Path(tmp) / "big.toml"
        job_file.write_text(
            f'name = "big"\n[[task]]\nname = "mul"\nkind = "call"\nfunction = "operator:mul"\n'
            f"args = [6, 7]\ncount = {args.tasks}\n"
        )
        with LocalCluster(Path(tmp) / "c", executors=2, executor_slots=1) as cluster:
            times: dict[str, list[float]] = {"cluster-status": [], "list-jobs": []}
            failures: list[str] = []
            done = threading.Event()

            def poll() -> None:
                clients = [Client(m.addr, timeout=5) for m in cluster.masters]
                i = 0
                try:
                    while not done.is_set():
                        c = clients[i % len(clients)]
                        for name, call in (("cluster-status", c.cluster_status), ("list-jobs", c.list_jobs)):
                            t0 = time.perf_counter()
                            try:
                                call()
                            except Exception as e:  # counted, not fatal: the figure is the point
                                failures.append(f"{name}: {e}")
                            times[name].append(time.perf_counter() - t0)
                        i += 1
                        time.sleep(0.05)
                finally:
                    for c in clients:
                        c.close()

            poller = threading.Thread(target=poll)
            poller.start()
            t0 = time.monotonic()
            p = subprocess.run(
                [sys.executable, "-m", "rota.client.cli", "--master-addr", cluster.addresses, "--json",
                 "submit-job", "--config", str(job_file), "--wait"],
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
            elapsed = time.monotonic() - t0
            done.set()
            poller.join()
    if p.returncode != 0:
        print(p.stderr[-2000:], file=sys.stderr)
        return 1
    doc = json.loads(p.stdout)
    assert doc["counts"] == {"SUCCEEDED": args.tasks}, doc["counts"]
    result: dict[str, object] = {"tasks": args.tasks, "seconds": round(elapsed, 1), "failures": len(failures)}
    print(f"{args.tasks:,} call tasks through submit-job --wait in {elapsed:.1f}s "
          f"({args.tasks / elapsed:,.0f} tasks/s); while it ran:")  # fmt: skip
    for name, ts in times.items():
        doc = result[name] = {"calls": len(ts), **percentiles_ms(ts, 1), "max_ms": round(max(ts) * 1000, 1)}
        print(f"  {name}: {len(ts)} calls, p50 {doc['p50_ms']} ms, p99 {doc['p99_ms']} ms, "
              f"max {doc['max_ms']} ms")  # fmt: skip
    if failures:
        print(f"  {len(failures)} calls failed, first: {failures[0]}")
    save(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

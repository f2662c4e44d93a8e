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
            #: (seconds into the run, master, call, seconds) of every answer, and when the job ended.
            answers: list[tuple[float, str, str, float]] = []
            ended: list[float] = []
            done = threading.Event()

            def poll() -> None:
                clients = [Client(m.addr, timeout=5) for m in cluster.masters]
                i = 0
                try:
                    while not done.is_set():
                        c = clients[i % len(clients)]
                        master = cluster.masters[i % len(clients)].name
                        for name, call in (("cluster-status", c.cluster_status), ("list-jobs", c.list_jobs)):
                            t0 = time.perf_counter()
                            try:
                                reply = call()
                            except Exception as e:  # counted, not fatal: the figure is the point
                                failures.append(f"{name}: {e}")
                                reply = None
                            took = time.perf_counter() - t0
                            times[name].append(took)
                            answers.append((t0 - start, master, name, took))
                            if (
                                name == "list-jobs"
                                and not ended
                                and reply
                                and reply[-1].get("state") == "SUCCEEDED"
                            ):
                                ended.append(t0 - start)
                        i += 1
                        time.sleep(0.05)
                finally:
                    for c in clients:
                        c.close()

            start = time.perf_counter()
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
            leader = cluster.leader().name
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
    # Where the slowest answers fall: while tasks ran, or while the client read the ended job's
    # document (the job ended when list-jobs first showed it SUCCEEDED), and on which master.
    end = f", the job ended at {ended[0]:.1f} s" if ended else ""
    print(f"  slowest answers (s into the run{end}; {leader} led):")
    slowest = sorted(answers, key=lambda a: -a[3])[:5]
    for at, master, name, took in slowest:
        print(f"    {took * 1000:.1f} ms at {at:.1f} s: {name} from {master}")
    result["leader"], result["ended_at"] = leader, ended[0] if ended else None
    result["slowest"] = [
        {"at": round(a, 1), "master": m, "call": n, "ms": round(t * 1000, 1)} for a, m, n, t in slowest
    ]
    save(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

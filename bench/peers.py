"""Rota against Ray, Dask and Celery (with Redis), side by side in one run: ``make bench-peers``.

The same two workloads on each, all with 2 workers of 1 slot and default settings; Rota with three
masters, embedded etcd and 2 executors of 1 slot:

- throughput: N tasks of a Python function (``mul(6, 7)``; Rota's ``call`` kind, and its ``noop`` kind
  for reference) submitted at once, then waited for; tasks/s, median of ``--runs``;
- round trip: sequential one-task submissions, each waited for; p50 and p99.

Rota also runs with ``--prefetch 512`` (tuned). The floor for a durable round trip, two sequential etcd
commits, is measured on the same etcd cluster. Prints one table with each figure's ratio to Ray's and
writes bench/results/peers.json. The peers run in their own virtualenv (``build/peers``, made by
``make bench-peers``).

    .venv/bin/python -m bench.peers [--tasks 20000] [--runs 3] [--jobs 500] [--only ray,dask,celery]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import CALL_TASK, NOOP_TASK, percentiles_ms, round_trips, save
from rota.common.procs import free_port
from rota.devtools.localcluster import LocalCluster
from rota.metastore.client import EtcdClient, delete_op, put_op

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / "build" / "peers" / "bin" / "python"


def run_peer(system: str, tasks: int, jobs: int, runs: int) -> dict[str, Any]:
    p = subprocess.run(
        [str(PEERS_PYTHON), "-m", "bench.peer_workloads", system, "--tasks", str(tasks), "--jobs", str(jobs),
         "--runs", str(runs), "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if p.returncode != 0:
        raise SystemExit(f"{system} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def etcd_commit_ms(endpoints: list[str], n: int = 300) -> float:
    """Median time of one durable etcd commit (a single put, sequentially)."""
    async with EtcdClient(endpoints, timeout=30, call_timeout=30) as client:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            await client.txn([], [put_op(f"/bench/floor/{i % 10}".encode(), b"x" * 48)])
            times.append(time.perf_counter() - t0)
        await client.txn([], [delete_op(b"/bench/", prefix=True)])
    return statistics.median(times) * 1000


def run_rota(tmp: str, tasks: int, jobs: int, runs: int, executor_args: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cluster = LocalCluster(tmp, executors=2, executor_slots=1, executor_args=executor_args)
    with cluster, cluster.client(60) as c:
        for kind, task in (("noop", NOOP_TASK), ("call", CALL_TASK)):
            c.wait_job(
                c.submit_job({"name": "warm", "task": [{"name": "t", **task, "count": 500}]})["id"], 600
            )
            rates = []
            for run in range(runs):
                t0 = time.perf_counter()
                job = c.submit_job({"name": f"{kind}-{run}", "task": [{"name": "t", **task, "count": tasks}]})
                doc = c.wait_job(job["id"], timeout=3600)
                rates.append(tasks / (time.perf_counter() - t0))
                assert doc["counts"] == {"SUCCEEDED": tasks}, doc["counts"]
            out[f"{kind}_tasks_per_s"] = [round(r) for r in rates]
        out.update(percentiles_ms(round_trips(c, CALL_TASK, jobs)))
        out["etcd_commit_ms"] = round(asyncio.run(etcd_commit_ms(cluster.etcd_endpoints)), 2)
    return out


def ratio(x: float, ray: float | None) -> str:
    return f"{x / ray:.2f}x" if ray else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=500, help="sequential round trips")
    ap.add_argument("--only", default="ray,dask,celery", help="which peers to run (comma-separated)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "peers.json"))
    args = ap.parse_args()
    peers = [p for p in args.only.split(",") if p]
    if peers and not PEERS_PYTHON.exists():
        raise SystemExit(f"{PEERS_PYTHON} is missing: run 'make bench-peers', which installs the peers")
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "tasks": args.tasks, "runs": args.runs,
                               "jobs": args.jobs}  # fmt: skip
    for system in peers:
        print(f"running {system} ...", file=sys.stderr, flush=True)
        results[system] = run_peer(system, args.tasks, args.jobs, args.runs)
    for name, flags in (("rota", []), ("rota_tuned", ["--prefetch", "512"])):
        print(f"running {name} {' '.join(flags)} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="rota-peers-") as tmp:
            results[name] = run_rota(tmp, args.tasks, args.jobs, args.runs, flags)
    save(args.out, results)
    print_tables(results, peers)
    return 0


def print_tables(r: dict[str, Any], peers: list[str]) -> None:
    med = statistics.median
    ray = r.get("ray")
    ray_rate = med(ray["tasks_per_s"]) if ray else None
    print(
        f"\n{r['tasks']:,} tasks submitted at once, then waited for; 2 workers of 1 slot; median of {r['runs']} runs"
    )
    print("| system | task | tasks/s | vs Ray |\n|---|---|---:|---:|")
    for p in peers:
        rate = med(r[p]["tasks_per_s"])
        print(f"| {p.capitalize()} | Python function | {rate:,.0f} | {ratio(rate, ray_rate)} |")
    for name, label in (("rota", "Rota, defaults"), ("rota_tuned", "Rota, --prefetch 512")):
        for kind, what in (("noop", "`noop` kind"), ("call", "Python function (`call`)")):
            rate = med(r[name][f"{kind}_tasks_per_s"])
            print(f"| {label} | {what} | {rate:,.0f} | {ratio(rate, ray_rate)} |")
    ray_p50 = ray["p50_ms"] if ray else None
    print(f"\n{r['jobs']} sequential one-task round trips (submit, wait for the result)")
    print("| system | p50 ms | p99 ms | p50 vs Ray | p99 / p50 |\n|---|---:|---:|---:|---:|")
    for p, label in [*((p, p.capitalize()) for p in peers), ("rota", "Rota, defaults"),
                     ("rota_tuned", "Rota, --prefetch 512")]:  # fmt: skip
        d = r[p]
        print(f"| {label} | {d['p50_ms']} | {d['p99_ms']} | {ratio(d['p50_ms'], ray_p50)} "
              f"| {d['p99_ms'] / d['p50_ms']:.2f} |")  # fmt: skip
    floor = 2 * r["rota"]["etcd_commit_ms"]
    print(f"\nTwo sequential etcd commits on the same cluster: {floor:.2f} ms; "
          f"Rota's p50 is {r['rota']['p50_ms'] / floor:.2f}x that floor.")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

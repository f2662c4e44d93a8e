"""Throughput: one job of N tasks (``noop``, or ``call``: a Python function) submitted, then waited for.

Three masters with embedded etcd and two executors on this machine, with the executors' default
flow control unless ``--prefetch N`` fixes it; prints tasks/s for each run and the median, and
writes bench/results/throughput.json.

    .venv/bin/python -m bench.throughput [--tasks 20000] [--runs 3] [--slots 1] [--kind call] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.results import CALL_TASK, NOOP_TASK, save
from rota.common.tls import TlsFiles
from rota.devtools.localcluster import LocalCluster
from rota.metastore.client import EtcdClient, delete_op, put_op


async def etcd_ceiling(
    endpoints: list[str], txns: int = 40, ops: int = 1000, in_flight: int = 4, tls: TlsFiles | None = None
) -> float:
    """Keys/s that this etcd cluster commits in transactions of ``ops`` puts."""
    value = b"x" * 48
    async with EtcdClient(endpoints, timeout=30, call_timeout=30, tls=tls) as client:
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                await client.txn(
                    [], [put_op(f"/bench/ceiling/{i:04d}/{j:04d}".encode(), value) for j in range(ops)]
                )

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(txns)))
        elapsed = time.monotonic() - t0
        await client.txn([], [delete_op(b"/bench/", prefix=True)])
    return txns * ops / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--slots", type=int, default=1, help="slots per executor (two executors)")
    ap.add_argument("--prefetch", default="auto", help="executor --prefetch: auto (the default) or N")
    ap.add_argument("--kind", default="noop", choices=["noop", "call"])
    ap.add_argument(
        "--no-ceiling", dest="ceiling", action="store_false", help="skip the etcd ceiling measurement"
    )
    ap.add_argument("--tls", action="store_true", help="every link over mutual TLS (a fresh CA)")
    ap.add_argument("--out", default=None, help="[default: results/throughput.json, -tls.json with --tls]")
    args = ap.parse_args()
    out = args.out or str(Path(__file__).parent / "results" / f"throughput{'-tls' if args.tls else ''}.json")
    task = {"name": "t", **(CALL_TASK if args.kind == "call" else NOOP_TASK), "count": args.tasks}
    rates = []
    with tempfile.TemporaryDirectory(prefix="rota-throughput-") as tmp:
        cluster = LocalCluster(
            tmp,
            executors=2,
            executor_slots=args.slots,
            executor_args=["--prefetch", str(args.prefetch)],
            tls=args.tls,
        )
        with cluster, cluster.client(30) as c:
            writes_per_task = []
            for run in range(args.runs):
                leader = cluster.leader()
                before = c.master_info(leader.addr)
                t0 = time.monotonic()
                job = c.submit_job({"name": f"bench-{run}", "task": [task]})
                submitted = time.monotonic() - t0
                doc = c.wait_job(job["id"], timeout=3600)
                elapsed = time.monotonic() - t0
                assert doc["counts"] == {"SUCCEEDED": args.tasks}, doc["counts"]
                rates.append(args.tasks / elapsed)
                after = c.master_info(leader.addr)
                if after["term"] == before["term"]:
                    writes_per_task.append((after["etcd_writes"] - before["etcd_writes"]) / args.tasks)
                print(f"run {run + 1}: {args.tasks} {args.kind} tasks in {elapsed:.2f}s "
                      f"(submit {submitted:.2f}s) = {rates[-1]:.0f} tasks/s", flush=True)  # fmt: skip
            ceiling = (
                asyncio.run(etcd_ceiling(cluster.etcd_endpoints, tls=cluster.tls)) if args.ceiling else None
            )
    result = {
        "tasks": args.tasks, "kind": args.kind, "executors": 2, "slots_per_executor": args.slots,
        "prefetch": args.prefetch, "tls": args.tls,
        "runs_tasks_per_s": [round(r) for r in rates], "median_tasks_per_s": round(statistics.median(rates)),
        "etcd_writes_per_task": round(statistics.median(writes_per_task), 3) if writes_per_task else None,
    }  # fmt: skip
    print(f"median {result['median_tasks_per_s']} tasks/s over {args.runs} runs; "
          f"{result['etcd_writes_per_task']} etcd writes per task")  # fmt: skip
    if ceiling:
        used = result["median_tasks_per_s"] * (result["etcd_writes_per_task"] or 0)
        result["etcd_ceiling_keys_per_s"] = round(ceiling)
        result["fraction_of_ceiling"] = round(used / ceiling, 3)
        print(f"etcd ceiling (1000-put transactions, 4 in flight, same cluster): {ceiling:.0f} keys/s; "
              f"Rota used {used:.0f} writes/s = {used / ceiling:.0%} of it")  # fmt: skip
    save(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

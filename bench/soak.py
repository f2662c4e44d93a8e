"""Months in minutes: many jobs through the HA cluster with a short retention, watching what must stay flat.

Runs ``--jobs`` jobs of ``--tasks`` tasks each (Python-function ``call`` tasks by default), at most
``--in-flight`` at a time and ``--rate`` a second (a steady load, so that what is held is steady), on
three masters (embedded etcd) and 2 executors of 1 slot, with the masters' ``--job-retention``
short. Every ``--every`` seconds it samples the leader's RSS, the bytes of etcd's database in use,
how many jobs ``list-jobs`` returns and how long it takes (the median of three calls). At the end it
kills the leader and reads how long the next one took to rebuild. Each figure should stay within
20 % (the median of the last quarter of the samples) of its reference: the median of the samples
in the 25 s after the first 10 % of the run (or after one retention and two compaction periods, if
that is later: until then history fills up by design). Every job must succeed with every task on
its first attempt (nothing lost, nothing run twice).

    .venv/bin/python -m bench.soak [--jobs 5000] [--tasks 100] [--retention 30s] [--kind call] [--rate 16]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.results import CALL_TASK, NOOP_TASK, save
from rota.client.api import Client
from rota.common.config import parse_duration
from rota.devtools.localcluster import LocalCluster
from rota.metastore.client import EtcdClient
from rota.scheduler.upkeep import COMPACT_EVERY

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("leader_rss_mb", "etcd_in_use_mb", "list_jobs_ms", "jobs_listed")
#: Seconds of samples whose median is the reference value of each figure.
REF_WINDOW = 25.0
#: list-jobs calls per sample; the sample is their median.
LIST_CALLS = 3


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def etcd_in_use_mb(endpoints: list[str]) -> float:
    async with EtcdClient(endpoints, timeout=10) as client:
        return (await client.db_size())[1] / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--tasks", type=int, default=100, help="tasks per job")
    ap.add_argument("--retention", default="30s")
    ap.add_argument("--kind", default="call", choices=["call", "noop"])
    ap.add_argument("--in-flight", type=int, default=8, help="jobs submitted and not yet ended, at most")
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument(
        "--rate",
        type=float,
        default=16.0,
        help="jobs started per second at most (0: as fast as --in-flight allows). Steady, below what the "
        "cluster can do: the jobs held are the rate times the retention, so a rate that drifts would "
        "move them whatever the leader does",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    args = ap.parse_args()
    task = CALL_TASK if args.kind == "call" else NOOP_TASK
    job = {"name": "soak", "task": [{"name": "t", **task, "count": args.tasks}]}
    with tempfile.TemporaryDirectory(prefix="rota-soak-") as tmp:
        cluster = LocalCluster(
            tmp, executors=2, executor_slots=1, master_args=["--job-retention", args.retention]
        )
        with cluster:
            next_job = iter(range(args.jobs))
            lock = threading.Lock()
            done, bad, errors = [0], [], []
            samples: list[dict[str, Any]] = []
            finished = threading.Event()

            def submitter() -> None:
                with Client(cluster.addresses, timeout=30) as c:
                    while True:
                        with lock:
                            i = next(next_job, None)
                        if i is None:
                            return
                        if args.rate > 0:
                            time.sleep(max(0.0, start + i / args.rate - time.perf_counter()))
                        try:
                            doc = c.run_job(job, timeout=600)
                        except Exception as e:  # counted: a lost job is the figure
                            errors.append(f"job {i}: {e}")
                            continue
                        with lock:
                            done[0] += 1
                        if doc["state"] != "SUCCEEDED" or any(t["attempt"] != 1 for t in doc["tasks"]):
                            bad.append(doc["id"])

            def sampler() -> None:
                with Client(cluster.addresses, timeout=30) as c:
                    t0 = time.monotonic()
                    while not finished.wait(args.every):
                        leader = cluster.leader()
                        times = []
                        for _ in range(LIST_CALLS):
                            q0 = time.perf_counter()
                            listed = len(c.list_jobs())
                            times.append(time.perf_counter() - q0)
                        samples.append({
                            "t": round(time.monotonic() - t0, 1),
                            "jobs_done": done[0],
                            "leader_rss_mb": round(rss_mb(leader.pid), 1),
                            "etcd_in_use_mb": round(asyncio.run(etcd_in_use_mb(cluster.etcd_endpoints)), 2),
                            "list_jobs_ms": round(statistics.median(times) * 1000, 1),
                            "jobs_listed": listed,
                        })  # fmt: skip
                        print(samples[-1], flush=True)

            t0 = start = time.perf_counter()
            threads = [threading.Thread(target=submitter) for _ in range(args.in_flight)]
            watcher = threading.Thread(target=sampler)
            watcher.start()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            finished.set()
            watcher.join()
            old = cluster.leader()
            old.signal(signal.SIGKILL)
            new = cluster.master(cluster.wait_for_leader(exclude=old.name, timeout=60))
            deadline = time.monotonic() + 30
            rebuilt = None
            while rebuilt is None and time.monotonic() < deadline:
                m = re.findall(
                    r"leader state rebuilt from etcd in ([\d.]+)s: (\d+) jobs", new.log_path.read_text()
                )
                rebuilt = (float(m[-1][0]), int(m[-1][1])) if m else None
                time.sleep(0.2)
    result = report(args, samples, wall, done[0], bad, errors, rebuilt)
    save(args.out, result)
    return 0 if result["flat"] and not bad and not errors else 1


def report(args: Any, samples: list[dict[str, Any]], wall: float, done: int, bad: list[str],
           errors: list[str], rebuilt: tuple[float, int] | None) -> dict[str, Any]:  # fmt: skip
    tasks = done * args.tasks
    print(f"\n{done} of {args.jobs} jobs ({tasks} {args.kind} tasks) in {wall:.0f} s: {tasks / wall:.0f} tasks/s; "
          f"retention {args.retention}, {args.in_flight} jobs in flight, at most {args.rate:g} jobs/s")  # fmt: skip
    print(f"not succeeded on first attempts: {len(bad)}; lost (submit or wait failed): {len(errors)}")
    for e in errors[:5]:
        print("  ", e)
    out: dict[str, Any] = {"jobs": done, "tasks": tasks, "wall_s": round(wall, 1),
                           "tasks_per_s": round(tasks / wall), "bad": len(bad), "lost": len(errors),
                           "samples": samples, "flat": True}  # fmt: skip
    if len(samples) >= 3:
        # The reference: after the first 10 % of the run, or after one retention and two compaction
        # periods if that is later (before then, history is still filling up by design).
        settled = parse_duration(args.retention) + 2 * COMPACT_EVERY
        first = max(
            len(samples) // 10,
            next((i for i, s in enumerate(samples) if s["t"] >= settled), len(samples) - 1),
        )
        ref = samples[first]
        # Each figure's reference is the median of the samples in the REF_WINDOW after that point,
        # as its end value is the median of the last quarter: one sample on a busy 2-core machine
        # is noise (a list-jobs call of 10 ms or 40 ms, either way).
        window = [x for x in samples[first:] if x["t"] < ref["t"] + REF_WINDOW] or [ref]
        reference = {f: statistics.median(x[f] for x in window) for f in FIGURES}
        print(
            f"reference: the {len(window)} samples from {ref['t']} s (10 % of the run, or {settled:g} s once "
            "history has settled)"
        )
        picks = {"reference": reference, "middle": samples[len(samples) // 2], "last": samples[-1]}
        print(
            "\n| figure | " + " | ".join(picks) + " | last quarter, median vs reference | peak vs reference |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        tail = samples[-max(1, len(samples) // 4) :]
        for f in FIGURES:
            base = reference[f] or 1e-9
            trend = statistics.median(s[f] for s in tail) / base
            peak = max(s[f] for s in samples[first:]) / base
            flat = trend <= 1.2
            out["flat"] = out["flat"] and flat
            cells = " | ".join(f"{p[f]:g}" for p in picks.values())
            print(f"| {f} | {cells} | {trend:.2f}x{'' if flat else ' (grew)'} | {peak:.2f}x |")
    if rebuilt:
        print(f"\nrebuild after killing the leader: {rebuilt[0]:.3f} s for {rebuilt[1]} jobs")
        out["rebuild_s"], out["rebuild_jobs"] = rebuilt
    return out


if __name__ == "__main__":
    sys.exit(main())

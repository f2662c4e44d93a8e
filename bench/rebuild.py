"""Rebuild against history: how long a new leader takes when etcd holds 1,000 or 100,000 ended jobs.

Retention keeps ended jobs for a while (a day by default), so a busy cluster's etcd holds many of
them, and a new leader reads every one. For each ``--sizes`` figure: a fresh cluster of three masters
(embedded etcd, ``--job-retention 24h``, no executors) gets that many ended jobs of one ``call`` task
each, written straight into etcd as the leader writes them (record with its summary, spec, task
result; ``--records whole`` leaves the summary out, as records were before, so that the leader
reads every spec and task record too). Then, ``--trials``
times: SIGKILL the leader and time until a survivor answers ``list-jobs``, read the rebuild time the new
leader logs, check that it still leads a few seconds later (a rebuild that starved its own lease would
have lost it), and note its RSS. bench/results/rebuild.json keeps the figures.

    .venv/bin/python -m bench.rebuild [--sizes 1000,100000] [--trials 3] [--records summary|whole|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import save
from rota.client.api import Client
from rota.common.jobspec import JobSpec
from rota.devtools.localcluster import LocalCluster, MasterProcess
from rota.metastore import keys
from rota.metastore.client import EtcdClient, put_op
from rota.scheduler.core import Job, restore_task

ROOT = Path(__file__).resolve().parent.parent
REBUILT_RE = re.compile(r"leader state rebuilt from etcd in ([0-9.]+)s: (\d+) jobs")
#: Jobs per transaction: three keys each, under etcd's --max-txn-ops.
JOBS_PER_TXN = 300


async def populate(endpoints: list[str], n: int, summaries: bool) -> float:
    """Write ``n`` ended jobs the way the leader leaves them (with ``summaries``, as it does now;
    without, as it did before job records carried them); returns the seconds it took."""
    job_spec = JobSpec.from_dict(
        {"name": "done", "task": [{"name": "square", "kind": "call", "function": "math:pow", "args": [3, 2]}]}
    )
    spec = json.dumps(job_spec.to_dict(), separators=(",", ":")).encode()
    task = {"s": "SUCCEEDED", "a": 1, "e": "gone-000001", "f": 0, "r": {"value": 9.0}}
    now = time.time()
    t0 = time.monotonic()
    async with EtcdClient(endpoints, timeout=30) as client:
        for start in range(0, n, JOBS_PER_TXN):
            ops = []
            for i in range(start, min(n, start + JOBS_PER_TXN)):
                job = Job(f"old-{i:07d}", job_spec, 0, now - 60)
                restore_task(job, 0, task)
                job.state, job.ended = "SUCCEEDED", now
                record = job.record() if summaries else {"id": job.id, "created": job.created,
                                                         "state": job.state, "ended": job.ended}  # fmt: skip
                ops += [
                    put_op(keys.job_spec(job.id, 0), spec),
                    put_op(keys.task(job.id, 0), json.dumps(task).encode()),
                    put_op(keys.job(job.id), json.dumps(record).encode()),
                ]
            await client.txn([], ops)
    return time.monotonic() - t0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rebuilt(m: MasterProcess, offset: int) -> tuple[float, int] | None:
    with open(m.log_path, "rb") as f:
        f.seek(offset)
        hits = REBUILT_RE.findall(f.read().decode(errors="replace"))
    return (float(hits[-1][0]), int(hits[-1][1])) if hits else None


def until_answered(cluster: LocalCluster, exclude: str, limit: float = 120.0) -> float:
    """Seconds until a survivor answers list-jobs (one job: the answer, not the listing, is timed)."""
    addrs = ",".join(m.addr for m in cluster.masters if m.name != exclude)
    t0 = time.monotonic()
    with Client(addrs, timeout=limit) as c:
        c.list_jobs(limit=1)
    return time.monotonic() - t0


def run_size(n: int, trials: int, tmp: Path, summaries: bool) -> dict[str, Any]:
    cluster = LocalCluster(tmp / f"rebuild-{n}-{summaries}", master_args=["--job-retention", "24h"])
    rows: list[dict[str, Any]] = []
    with cluster:
        wrote = asyncio.run(populate(cluster.etcd_endpoints, n, summaries))
        what = "with" if summaries else "without"
        print(f"{n:,} ended jobs ({what} summaries) written to etcd in {wrote:.1f}s", flush=True)
        for trial in range(trials):
            leader = cluster.leader()
            offsets = {m.name: m.log_path.stat().st_size for m in cluster.masters}
            leader.signal(signal.SIGKILL)
            try:
                answered = until_answered(cluster, leader.name)
            except Exception:
                for m in cluster.masters:
                    print(f"--- {m.name}\n{m.log_tail(15)}")
                raise
            leader.wait(10)
            new = cluster.master(cluster.wait_for_leader(exclude=leader.name))
            line = rebuilt(new, offsets[new.name])
            time.sleep(5)
            still = cluster.wait_for_leader(exclude=leader.name)
            row = {
                "trial": trial + 1,
                "until_answer_s": round(answered, 3),
                "rebuild_logged_s": line[0] if line else None,
                "jobs_rebuilt": line[1] if line else None,
                "still_leader_5s_later": still == new.name,
                "new_leader_rss_mb": round(rss_mb(new.pid), 1),
            }
            rows.append(row)
            print(
                f"  trial {trial + 1}: answered after {answered:.3f}s; rebuild logged {row['rebuild_logged_s']}s "
                f"for {row['jobs_rebuilt']} jobs; still leading 5 s later: {row['still_leader_5s_later']}; "
                f"RSS {row['new_leader_rss_mb']} MB",
                flush=True,
            )
            leader.start()
            cluster.wait_for_leader(timeout=120, all_reachable=True)
    rebuilds = [r["rebuild_logged_s"] for r in rows if r["rebuild_logged_s"] is not None]
    return {
        "ended_jobs": n,
        "summaries": summaries,
        "trials": rows,
        "until_answer_median_s": round(statistics.median(r["until_answer_s"] for r in rows), 3),
        "rebuild_logged_median_s": round(statistics.median(rebuilds), 3) if rebuilds else None,
        "leader_kept_every_time": all(r["still_leader_5s_later"] for r in rows),
        "rss_median_mb": round(statistics.median(r["new_leader_rss_mb"] for r in rows), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000", help="ended jobs in etcd, comma-separated")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument(
        "--records",
        default="summary",
        choices=["summary", "whole", "both"],
        help="ended jobs as the leader writes them now (their record carries a summary) or as it did "
        "before (read whole: record, spec, tasks)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rebuild.json"))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict[str, Any] = {"sizes": []}
    with tempfile.TemporaryDirectory(prefix="rota-rebuild-") as tmp:
        for summaries in {"summary": [True], "whole": [False], "both": [True, False]}[args.records]:
            for n in sizes:
                out["sizes"].append(run_size(n, args.trials, Path(tmp), summaries))
    print("\nended jobs   records   until a survivor answers   rebuild (logged)   leader kept   RSS")
    for s in out["sizes"]:
        print(
            f"{s['ended_jobs']:>10,}   {'summary' if s['summaries'] else 'whole':>7}"
            f"   {s['until_answer_median_s']:>22.3f} s   {s['rebuild_logged_median_s']:>14} s"
            f"   {str(s['leader_kept_every_time']):>11}   {s['rss_median_mb']} MB"
        )
    save(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

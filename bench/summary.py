"""One table of the latest `make bench` figures, from bench/results/*.json (`make bench-peers` has the peers).

.venv/bin/python bench/summary.py      # also writes bench/results/summary.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    if t := load("throughput-call"):
        out.append((f"20,000 call (Python function), 2 x {t['slots_per_executor']} slot, defaults",
                    f"{t['median_tasks_per_s']:,} tasks/s (runs {t['runs_tasks_per_s']})", "3x Ray (bench-peers)"))  # fmt: skip
    if t := load("throughput"):
        out.append((f"20,000 noop, 2 x {t['slots_per_executor']} slot, defaults",
                    f"{t['median_tasks_per_s']:,} tasks/s (runs {t['runs_tasks_per_s']})", "6x Ray (bench-peers)"))  # fmt: skip
        if t.get("etcd_ceiling_keys_per_s"):
            out.append(("etcd writes per task / ceiling used",
                        f"{t['etcd_writes_per_task']} / {t['fraction_of_ceiling']:.0%} of "
                        f"{t['etcd_ceiling_keys_per_s']:,} keys/s", ""))  # fmt: skip
    if t := load("throughput-tuned"):
        out.append(("20,000 noop, --prefetch 512", f"{t['median_tasks_per_s']:,} tasks/s", ""))
    if t := load("latency"):
        out.append((f"round trip p50 / p99 ({t.get('kind', 'noop')})", f"{t['p50_ms']} / {t['p99_ms']} ms",
                     "p50 <= 1.5 x two etcd commits, p99 <= 2 x p50"))  # fmt: skip
    if t := load("responsive"):
        worst = max(t["cluster-status"]["max_ms"], t["list-jobs"]["max_ms"])
        out.append((f"other calls during a {t['tasks']:,}-task call job (worst)", f"{worst} ms", "<= 100 ms"))
    if t := load("scale"):
        subs = {s["job"]: s for s in t["jobs"]["submissions"]}
        mem = t["jobs"]["memory"]
        big = subs.get("count=200,000")
        if big:
            out.append(("200,000-task job accepted", f"{big['submit_s']} s", "accepted"))
        out.append(
            ("leader memory per pending task", " / ".join(f"{m['bytes_per_task']} B" for m in mem), "< 1 KiB")
        )
        out.append(
            ("rebuild of 100,000 pending tasks", f"{t['rebuild']['rebuild_logged_median_s']} s", "< 3 s")
        )
    if t := load("executors"):
        out.append((f"{t['executors']:,} simulated executors: leader CPU",
                    f"{t['steady']['cpu_share']['leader']} core", "< 0.5 core"))  # fmt: skip
    if t := load("failover"):
        f = t["failover"]
        out.append(("leader failover SIGTERM / SIGKILL (median)", f"{f['SIGTERM']['median_s']} / {f['SIGKILL']['median_s']} s",
                    "< 0.5 / < 4 s"))  # fmt: skip
    if t := load("recovery"):
        for name, r in t.items():
            out.append((name, f"median {r['median_s']} s, worst {r['worst_s']} s", ""))
    if t := load("task_calls"):
        for op in ("checkpoint.save", "checkpoint.load", "progress"):
            if op in t:
                out.append((f"task call {op} p50 / p99", f"{t[op]['p50_ms']} / {t[op]['p99_ms']} ms", ""))
    if t := load("barriers"):
        out.append((f"barrier release, {t['parties']} parties (first / median / last party)",
                    f"{t['fastest_ms']} / {t['median_ms']} / {t['slowest_ms']} ms", ""))  # fmt: skip
    if t := load("services"):
        for ttl, r in t.items():
            out.append((f"service's executor SIGKILL to new endpoint, {ttl}",
                        f"median {r['median_s']} s, worst {r['worst_s']} s", ""))  # fmt: skip
    return out


def main() -> int:
    table = rows()
    if not table:
        print("no results yet: run `make bench`")
        return 1
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    print(f"{'measure':<{widths[0]}}  {'figure':<{widths[1]}}  target")
    for a, b, c in table:
        print(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}")
    (RESULTS / "summary.json").write_text(
        json.dumps([dict(zip(("measure", "figure", "target"), r, strict=True)) for r in table], indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Leader stalls: what a leader frozen with SIGSTOP costs the running work, over N trials (issue 10).

Each trial starts three masters and two executors of two slots, submits 40 half-second shell
tasks whose side effect (a line in a file) counts every completion, freezes the leader for
``--freeze`` seconds once four tasks are done, and lets it go on. Per trial it prints the tasks
killed by fencing (from the executors' logs), the tasks completed twice (from the side effects),
the executors that registered anew, and the time from the first moment a new leader was named
until every executor was attached to it again.

    .venv/bin/python -m bench.stall [--trials 10] [--freeze 6]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rota.client.api import Client, NoMasterReachable
from rota.devtools.localcluster import LocalCluster

TASKS = 40


def _completions(out: Path) -> collections.Counter[str]:
    lines = out.read_text().split("\n") if out.exists() else []
    return collections.Counter(line.split()[0] for line in lines if line.strip())


def _attached(c: Client, count: int) -> list[str] | None:
    try:
        docs = c.list_executors()
    except NoMasterReachable:
        return None
    ready = sorted(e["id"] for e in docs if e["state"] == "ready")
    return ready if len(ready) >= count else None


def trial(base: Path, freeze: float) -> dict[str, Any]:
    out = base / "done.txt"
    cmd = f'sleep 0.5; echo "$ROTA_TASK_ID $ROTA_ATTEMPT" >> {out}'
    job = {
        "name": "stall",
        "max-attempts": 5,
        "task": [{"name": "s", "kind": "shell", "command": cmd, "count": TASKS}],
    }
    with LocalCluster(base / "cluster", executors=2, executor_slots=2) as cluster:
        leader = cluster.leader()
        others = ",".join(m.addr for m in cluster.masters if m is not leader)
        with cluster.client(timeout=30) as c, Client(others, timeout=2) as watch:
            before = _attached(c, 2)
            job_id = c.submit_job(job)["id"]
            while len(_completions(out)) < 4:
                time.sleep(0.02)
            leader.signal(signal.SIGSTOP)
            t_stop = time.monotonic()
            elected = reattached = None
            try:
                while time.monotonic() - t_stop < freeze:
                    if elected is None:
                        with_leader = _leader(watch)
                        if with_leader and with_leader != leader.name:
                            elected = time.monotonic()
                    if elected is not None and reattached is None and _attached(watch, 2):
                        reattached = time.monotonic()
                    time.sleep(0.02)
            finally:
                leader.signal(signal.SIGCONT)
            deadline = time.monotonic() + 60
            while elected is not None and reattached is None and time.monotonic() < deadline:
                if _attached(c, 2):
                    reattached = time.monotonic()
                time.sleep(0.02)
            doc = c.wait_job(job_id, timeout=120)
            after = _attached(c, 2)
        logs = "\n".join(e.log_path.read_text() for e in cluster.executors)
    done = _completions(out)
    return {
        "state": doc["state"],
        "killed": sum(int(n) for n in re.findall(r"killing (\d+) running tasks", logs)),
        "twice": sum(1 for n in done.values() if n > 1),
        "registered_anew": len(set(after or []) - set(before or [])),
        "elected_after": round(elected - t_stop, 3) if elected else None,
        "reattach_after_election": round(reattached - elected, 3) if elected and reattached else None,
    }


def _leader(c: Client) -> str | None:
    try:
        lead = c.cluster_status()["leader"]
    except NoMasterReachable:
        return None
    return lead["name"] if lead else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--freeze", type=float, default=6.0, help="seconds the leader stays frozen (lease: 3 s)")
    ap.add_argument("--out", default="bench/results/stall.json")
    args = ap.parse_args()
    rows = []
    for i in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="rota-stall-") as tmp:
            row = trial(Path(tmp), args.freeze)
        rows.append(row)
        print(f"trial {i + 1}: {json.dumps(row)}", flush=True)
    waits = [r["reattach_after_election"] for r in rows if r["reattach_after_election"] is not None]
    summary = {
        "freeze_s": args.freeze,
        "trials": len(rows),
        "killed_per_stall": [r["killed"] for r in rows],
        "twice_per_stall": [r["twice"] for r in rows],
        "registered_anew": sum(r["registered_anew"] for r in rows),
        "reattach_median_s": statistics.median(waits) if waits else None,
        "reattach_worst_s": max(waits) if waits else None,
    }
    print(json.dumps(summary))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "trials": rows}, indent=1))


if __name__ == "__main__":
    main()

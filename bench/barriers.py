"""Barrier release latency (the task SDK, issue 14): how long after the last party's call each
party of a barrier returns (task -> executor socket -> leader -> the release committed to etcd
-> every parked call answered -> back to each task).

``--parties`` python tasks of one job, spread over two executors on a local cluster (three
masters), meet at ``--rounds`` barriers in turn; each task prints when it called and when it
returned. Per round, the latency of each party is its return minus the last party's call; this
script prints the median over the rounds of each round's fastest, median and slowest party.

    .venv/bin/python -m bench.barriers [--parties 10] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.results import save
from rota.devtools.localcluster import LocalCluster

CODE = """
import json, time
from rota import task
times = []
task.barrier("warm", {parties})
for r in range({rounds}):
    t0 = time.time()
    task.barrier(f"r{{r}}", {parties})
    times.append((t0, time.time()))
print(json.dumps(times))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parties", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=20, help="at most 63 (a job has at most 64 barriers)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "barriers.json"))
    args = ap.parse_args()
    if not 1 <= args.rounds <= 63:
        ap.error("--rounds must be from 1 to 63")
    code = CODE.format(parties=args.parties, rounds=args.rounds)
    job = {"name": "barriers", "task": [{"name": "b", "kind": "python", "count": args.parties, "code": code}]}
    slots = (args.parties + 1) // 2
    with tempfile.TemporaryDirectory(prefix="rota-barriers-") as tmp:
        with LocalCluster(tmp, executors=2, executor_slots=slots) as cluster, cluster.client(60) as c:
            doc = c.run_job(job, timeout=600)
    if doc["state"] != "SUCCEEDED":
        raise SystemExit(f"the bench job failed: {[t['result'] for t in doc['tasks']]}")
    per_task = [json.loads(t["result"]["stdout"].strip().splitlines()[-1]) for t in doc["tasks"]]
    fastest, medians, slowest = [], [], []
    for r in range(args.rounds):
        last_call = max(times[r][0] for times in per_task)
        waits = [times[r][1] - last_call for times in per_task]
        fastest.append(min(waits))
        medians.append(statistics.median(waits))
        slowest.append(max(waits))
    figures = {
        "parties": args.parties,
        "rounds": args.rounds,
        "fastest_ms": round(statistics.median(fastest) * 1000, 2),
        "median_ms": round(statistics.median(medians) * 1000, 2),
        "slowest_ms": round(statistics.median(slowest) * 1000, 2),
    }
    print(
        f"barrier of {args.parties} parties, {args.rounds} rounds, after the last party's call "
        f"(medians over the rounds): the first party returns in {figures['fastest_ms']:.2f} ms, "
        f"the median one in {figures['median_ms']:.2f} ms, the last in {figures['slowest_ms']:.2f} ms"
    )
    save(args.out, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

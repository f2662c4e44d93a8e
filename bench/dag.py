"""A task graph against the same tasks without edges: one job of N tasks where a source task runs
first, N - 2 copies run after it (fan-out) and a sink runs after all of them (fan-in), timed
against a flat job of N copies, alternately, on one cluster.

Three masters with embedded etcd and two executors of one slot, default flags. The ratio (graph
over flat, tasks/s) is what the graph's bookkeeping costs; the graph also has two barriers in it
by design (the source before anything else, the sink after everything), which a flat job has not.

    .venv/bin/python -m bench.dag [--tasks 100000] [--runs 3] [--kind noop|call]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import CALL_TASK, NOOP_TASK, save
from rota.devtools.localcluster import LocalCluster


def jobs(n: int, kind: str) -> dict[str, dict[str, Any]]:
    body = CALL_TASK if kind == "call" else NOOP_TASK
    return {
        "flat": {"name": "flat", "task": [{"name": "t", **body, "count": n}]},
        "graph": {
            "name": "graph",
            "task": [
                {"name": "source", **body},
                {"name": "fan", **body, "count": n - 2, "after": ["source"]},
                {"name": "sink", **body, "after": ["fan"]},
            ],
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kind", default="noop", choices=["noop", "call"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dag.json"))
    args = ap.parse_args()
    rates: dict[str, list[float]] = {"flat": [], "graph": []}
    with tempfile.TemporaryDirectory(prefix="rota-dag-") as tmp:
        cluster = LocalCluster(tmp, executors=2, executor_slots=1)
        with cluster, cluster.client(30) as c:
            for run in range(args.runs):
                for shape, job in jobs(args.tasks, args.kind).items():
                    t0 = time.monotonic()
                    job_id = c.submit_job({**job, "name": f"{shape}-{run}"})["id"]
                    doc = c.wait_job(job_id, timeout=3600)
                    elapsed = time.monotonic() - t0
                    assert doc["counts"] == {"SUCCEEDED": args.tasks}, doc["counts"]
                    rates[shape].append(args.tasks / elapsed)
                    print(f"run {run + 1} {shape}: {args.tasks} {args.kind} tasks in {elapsed:.2f}s "
                          f"= {rates[shape][-1]:.0f} tasks/s", flush=True)  # fmt: skip
    flat, graph = statistics.median(rates["flat"]), statistics.median(rates["graph"])
    ratios = [g / f for f, g in zip(rates["flat"], rates["graph"], strict=True)]
    result = {
        "tasks": args.tasks, "kind": args.kind, "executors": 2, "slots_per_executor": 1,
        "flat_tasks_per_s": [round(r) for r in rates["flat"]],
        "graph_tasks_per_s": [round(r) for r in rates["graph"]],
        "median_flat": round(flat), "median_graph": round(graph),
        "median_graph_over_flat": round(statistics.median(ratios), 3),
    }  # fmt: skip
    print(f"median: flat {flat:.0f} tasks/s, graph {graph:.0f} tasks/s; graph/flat "
          f"{result['median_graph_over_flat']} (median of per-run ratios)")  # fmt: skip
    save(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

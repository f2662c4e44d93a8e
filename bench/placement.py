"""Placement throughput in the leader's core with 100 simulated executors: the same 100,000
tasks placed and ended with no needs, with resources (cpu, memory), and with resources and a
label constraint. No I/O: the core alone, as the leader runs it, so the figure is the cost of
placement itself (each executor reports its batch ended, the core places the next).

    .venv/bin/python -m bench.placement [--tasks 100000] [--executors 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.results import save
from rota.common.jobspec import JobSpec
from rota.common.states import SUCCEEDED
from rota.scheduler.core import Core, Dispatch, Job, Report
from rota.scheduler.placement import ExecutorSlot

SHAPES: dict[str, dict[str, Any]] = {
    "plain": {},
    "resources": {"resources": {"cpu": 1, "memory": "2GiB"}},
    "resources+constraint": {"resources": {"cpu": 1, "memory": "2GiB"}, "constraints": {"zone": "b"}},
}


def one_run(shape: str, tasks: int, executors: int) -> float:
    core = Core()
    for i in range(executors):
        ex = ExecutorSlot(
            id=f"e{i}", name=f"e{i}", addr="", slots=8, kinds=frozenset(["shell"]),
            labels={"zone": "ab"[i % 2]}, resources={"cpu": 8.0, "memory": 32.0 * 2**30},
        )  # fmt: skip
        core.attach_executor(ex)
    task = {"name": "t", "kind": "shell", "command": ["true"], "count": tasks, **SHAPES[shape]}
    job = Job("j", JobSpec.from_dict({"name": "bench", "task": [task]}), 1, time.time())
    t0 = time.perf_counter()
    core.add_job(job)
    while job.state is None:
        for d in core.drain():
            if isinstance(d, Dispatch):
                core.report(d.executor, [Report(t.ref(), SUCCEEDED, {}) for t, _ in d.tasks])
    return tasks / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--executors", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "placement.json"))
    args = ap.parse_args()
    result: dict[str, Any] = {"tasks": args.tasks, "executors": args.executors}
    for shape in SHAPES:
        rates = [one_run(shape, args.tasks, args.executors) for _ in range(args.runs)]
        result[shape] = {
            "runs_tasks_per_s": [round(r) for r in rates],
            "median": round(statistics.median(rates)),
        }
        print(f"{shape}: {result[shape]['median']} tasks/s placed and ended in the core "
              f"({args.executors} executors; runs {result[shape]['runs_tasks_per_s']})", flush=True)  # fmt: skip
    for shape in list(SHAPES)[1:]:
        result[f"{shape}_over_plain"] = round(result[shape]["median"] / result["plain"]["median"], 3)
    save(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU per task, by process: where a task's cost goes (etcd, the leader, the executors, their workers).

Runs one job of N tasks at a time on three masters with embedded etcd and two executors of one slot
(the defaults), and reads every process's CPU time from /proc before and after each run. Prints
tasks/s, the leader's transactions and writes per transaction, and microseconds of CPU per task
for each kind of process. This machine's speed varies by half from hour to hour; compare runs made
side by side.

    .venv/bin/python -m bench.cost [--kind call|noop] [--tasks 20000] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter

from bench.results import CALL_TASK, NOOP_TASK
from rota.devtools.localcluster import LocalCluster

HZ = os.sysconf("SC_CLK_TCK")


def _role(cmdline: str) -> str:
    first = cmdline.split(" ", 1)[0]
    if first.endswith("etcd"):
        return "etcd"
    for marker, role in (
        ("scheduler.master", "masters"),
        ("executor.main", "executors"),
        ("spawn_main", "workers"),
    ):
        if marker in cmdline:
            return role
    return "other"


def cpu_by_role() -> Counter[str]:
    """Clock ticks of CPU used so far by this process's descendants, summed by role."""
    procs: dict[int, tuple[int, int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline") as f:
                cmdline = f.read().replace("\0", " ")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), cmdline)
    ours = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _, _) in procs.items():
            if parent in ours and pid not in ours:
                ours.add(pid)
                grew = True
    used: Counter[str] = Counter()
    for pid in ours - {os.getpid()}:
        _, ticks, cmdline = procs[pid]
        used[_role(cmdline)] += ticks
    return used


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="call", choices=["call", "noop"])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    task = {"name": "t", **(CALL_TASK if args.kind == "call" else NOOP_TASK)}
    with tempfile.TemporaryDirectory(prefix="rota-cost-") as tmp:
        cluster = LocalCluster(tmp, executors=2, executor_slots=1)
        with cluster, cluster.client(60) as c:
            c.wait_job(c.submit_job({"name": "warm", "task": [{**task, "count": 1000}]})["id"], 600)
            for run in range(args.runs):
                leader = cluster.leader()
                info0, cpu0, t0 = c.master_info(leader.addr), cpu_by_role(), time.perf_counter()
                job = c.submit_job({"name": f"cost-{run}", "task": [{**task, "count": args.tasks}]})
                c.wait_job(job["id"], 3600)
                elapsed = time.perf_counter() - t0
                cpu1, info1 = cpu_by_role(), c.master_info(leader.addr)
                txns = info1["etcd_txns"] - info0["etcd_txns"]
                writes = info1["etcd_writes"] - info0["etcd_writes"]
                cost = {r: (cpu1[r] - cpu0[r]) / HZ / args.tasks * 1e6 for r in sorted(cpu1) if r != "other"}
                print(f"run {run + 1}: {args.tasks / elapsed:,.0f} {args.kind} tasks/s; {txns} etcd transactions "
                      f"of {writes / max(txns, 1):.0f} writes; CPU per task: "
                      + ", ".join(f"{r} {us:.0f} us" for r, us in cost.items())
                      + f", total {sum(cost.values()):.0f} us", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cron fire accuracy: how long after its fire time each fire's job is committed, on a steady
cluster and across leader kills, and whether every slot fired exactly once.

A local cluster (three masters, one executor); one schedule firing every 2 s (six fields,
seconds first; overlap = allow, catch-up = 5) with a noop task. Phase "steady" lets it fire for
``--seconds``; phase "kills" SIGKILLs the leader at ``--kills`` fire times (offsets from 0.1 s
before to 0.1 s after), restarting each killed master; phase "stalls" SIGSTOPs it there instead,
for ``--stall`` seconds (past its 3 s lease), then lets it go on. Delays come from the leaders' own log
line for each fire (written once the fire's job is committed); the jobs are counted from the
cluster: one per slot from the first fire to the last, none twice.

    .venv/bin/python -m bench.cron [--seconds 60] [--kills 5] [--stall 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.results import save
from rota.common.cron import fire_stamp
from rota.devtools.localcluster import LocalCluster

PERIOD = 2.0
FIRED = re.compile(r"schedule (\S+) fired: job (\S+), ([0-9.]+)s after its time")


def when(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def delays(cluster: LocalCluster, schedule_id: str) -> dict[str, float]:
    """job id -> seconds after its fire time, from every master's log."""
    out: dict[str, float] = {}
    for m in cluster.masters:
        for line in m.log_path.read_text(errors="replace").splitlines():
            found = FIRED.search(line)
            if found and found.group(1) == schedule_id:
                out[found.group(2)] = float(found.group(3))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def phase(
    cluster: LocalCluster, name: str, seconds: float, kills: int, stall: float = 0.0
) -> dict[str, object]:
    """``kills`` leader faults at fire times: SIGKILL and a restart, or with ``stall``, SIGSTOP
    for that long (past the leader lease) and SIGCONT: the stalled leader wakes up deposed."""
    job = {
        "name": name, "id": name, "schedule": "*/2 * * * * *", "overlap": "allow", "catch-up": 5,
        "retention": "1h", "task": [{"name": "t", "kind": "noop"}],
    }  # fmt: skip
    offsets = [-0.1, -0.05, 0.0, 0.05, 0.1]
    with cluster.client(timeout=30) as c:
        first = when(c.submit_job(job)["schedule"]["next_fire"])
        if kills:
            for k in range(kills):
                fire = when(next(s for s in c.list_schedules() if s["id"] == name)["next_fire"])
                old = cluster.leader()
                time.sleep(max(0.0, fire + offsets[k % len(offsets)] - time.time()))
                if stall:
                    old.signal(signal.SIGSTOP)
                    cluster.wait_for_leader(exclude=old.name, timeout=30)
                    time.sleep(max(0.0, stall - (time.time() - fire)))
                    old.signal(signal.SIGCONT)
                else:
                    old.signal(signal.SIGKILL)
                    old.wait(10)
                    cluster.wait_for_leader(exclude=old.name, timeout=30)
                    old.start()
                cluster.wait_for_leader(timeout=30, all_reachable=True)
        else:
            time.sleep(seconds)
        c.update_schedule(name, "pause")
        doc = c.update_schedule(name, "delete")
        jobs = [j["id"] for j in c.list_jobs(limit=10_000) if j["id"].startswith(name + ".")]
    last = when(doc["last_fire"])
    slots = [f"{name}.{fire_stamp(first + PERIOD * i)}" for i in range(round((last - first) / PERIOD) + 1)]
    got = delays(cluster, name)
    values = [got[j] for j in jobs if j in got]
    result = {
        "phase": name, "slots": len(slots), "jobs": len(jobs), "exactly_once": jobs == slots,
        "duplicates": len(jobs) - len(set(jobs)), "missing": len(set(slots) - set(jobs)),
        "delay_p50_ms": round(1000 * statistics.median(values), 1),
        "delay_p99_ms": round(1000 * percentile(values, 0.99), 1),
        "delay_max_ms": round(1000 * max(values), 1), "faults": kills, "stall_s": stall,
    }  # fmt: skip
    print(f"{name}: {len(jobs)} jobs for {len(slots)} slots (exactly once: {result['exactly_once']}); "
          f"delay p50 {result['delay_p50_ms']} ms, p99 {result['delay_p99_ms']} ms, "
          f"max {result['delay_max_ms']} ms", flush=True)  # fmt: skip
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--kills", type=int, default=5, help="leader SIGKILLs at fire times; as many SIGSTOPs")
    ap.add_argument("--stall", type=float, default=5.0, help="seconds each SIGSTOP lasts (the lease is 3 s)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cron.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rota-cron-") as tmp:
        with LocalCluster(tmp, executors=1, executor_slots=4) as cluster:
            results = [
                phase(cluster, "steady", args.seconds, 0),
                phase(cluster, "kills", 0, args.kills),
                phase(cluster, "stalls", 0, args.kills, args.stall),
            ]
    save(args.out, results)
    return 0 if all(r["exactly_once"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

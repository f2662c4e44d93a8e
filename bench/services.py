"""Service tasks (issue 14): how long a service is unreachable when its executor dies.

A ``service = true`` task listens on a declared port. Each trial SIGKILLs the executor it runs on
(a fresh executor joins, so one is always free) and times, from the kill, until get-job shows the
next attempt's endpoint: the moment ``rota.task.endpoint`` in another task resolves to the new
address. The executors' lease TTL bounds it from below: the default (5 s) and a short one (2 s) are
measured in turn. Median and worst of ``--trials`` per TTL.

    .venv/bin/python -m bench.services [--trials 10]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.results import save
from rota.devtools.localcluster import LocalCluster

SERVICE = """
import os, socket, time
srv = socket.create_server((os.environ["ROTA_HOST"], int(os.environ["ROTA_PORT_FEED"])))
while True:
    time.sleep(3600)
"""
JOB = {
    "name": "service",
    "task": [{"name": "svc", "kind": "python", "service": True, "ports": ["feed"], "code": SERVICE}],
}


def _endpoint(c, job_id: str, attempt: int) -> str | None:
    task = c.get_job(job_id)["tasks"][0]
    if task["attempt"] >= attempt and task["state"] == "RUNNING":
        return (task.get("endpoints") or {}).get("feed")
    return None


def trials(n: int, ttl: str) -> list[float]:
    args = ["--keepalive-ttl", ttl, "--keepalive-interval", "200ms"] if ttl else []
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rota-services-") as tmp:
        with LocalCluster(tmp) as cluster, cluster.client(30) as c:
            for _ in range(2):
                cluster.add_executor(slots=1, args=args)
            cluster.wait_for_executors(2)
            job_id = c.submit_job(JOB)["id"]
            attempt = 1
            while _endpoint(c, job_id, attempt) is None:
                time.sleep(0.05)
            for i in range(n):
                task = c.get_job(job_id)["tasks"][0]
                name = next(e["name"] for e in c.list_executors() if e["id"] == task["executor"])
                victim = next(p for p in cluster.executors if p.name == name)
                t0 = time.monotonic()
                victim.signal(signal.SIGKILL)
                attempt += 1
                while _endpoint(c, job_id, attempt) is None:
                    if time.monotonic() - t0 > 120:
                        raise SystemExit(f"trial {i}: no new endpoint within 120 s")
                    time.sleep(0.01)
                times.append(time.monotonic() - t0)
                victim.wait(10)
                cluster.add_executor(slots=1, args=args)
                cluster.wait_for_executors(2)
            c.cancel_job(job_id)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "services.json"))
    args = ap.parse_args()
    out = {}
    for label, ttl in (("default TTL (5 s)", ""), ("--keepalive-ttl 2s", "2s")):
        times = trials(args.trials, ttl)
        out[label] = {
            "median_s": round(statistics.median(times), 3),
            "worst_s": round(max(times), 3),
            "trials": [round(t, 3) for t in times],
        }
        print(
            f"SIGKILL of a service's executor to its new endpoint, {label}: "
            f"median {statistics.median(times):.2f} s, worst {max(times):.2f} s ({len(times)} trials)"
        )
    save(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The peers' side of ``make bench-peers``: Ray, Dask and Celery (with Redis) run the same workloads as Rota.

Runs in the peers' own virtualenv (``build/peers``), never imports Rota, and prints one JSON line:

    build/peers/bin/python -m bench.peer_workloads ray --tasks 20000 --jobs 500

Each system gets 2 workers of 1 slot with its default settings, and runs a plain Python function
(``mul(6, 7)``): N tasks submitted at once then waited for (tasks/s), and sequential one-task round
trips, submit then wait for the result (p50/p99).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

WORKERS = 2


def mul(a: int, b: int) -> int:
    return a * b


def quantiles(times: list[float]) -> dict[str, float]:
    q = statistics.quantiles(times, n=100)
    return {"p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}


def measure(
    batch: Callable[[int], None], one: Callable[[], None], tasks: int, jobs: int, runs: int
) -> dict[str, Any]:
    batch(200)  # warm up: workers started, functions imported
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        batch(tasks)
        rates.append(tasks / (time.perf_counter() - t0))
    for _ in range(20):
        one()
    times = []
    for _ in range(jobs):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    return {"tasks_per_s": [round(r) for r in rates], **quantiles(times)}


def run_ray(tasks: int, jobs: int, runs: int, port: int) -> dict[str, Any]:
    import ray

    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        remote_mul = ray.remote(num_cpus=1)(mul)

        def batch(n: int) -> None:
            assert ray.get([remote_mul.remote(6, 7) for _ in range(n)]) == [42] * n

        def one() -> None:
            assert ray.get(remote_mul.remote(6, 7)) == 42

        return measure(batch, one, tasks, jobs, runs)
    finally:
        ray.shutdown()


def run_dask(tasks: int, jobs: int, runs: int, port: int) -> dict[str, Any]:
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):

        def batch(n: int) -> None:
            futures = client.map(mul, [6] * n, [7] * n, pure=False)
            assert client.gather(futures) == [42] * n

        def one() -> None:
            assert client.submit(mul, 6, 7, pure=False).result() == 42

        return measure(batch, one, tasks, jobs, runs)


@contextmanager
def process(argv: list[str], **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    try:
        yield p
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_celery(tasks: int, jobs: int, runs: int, port: int) -> dict[str, Any]:
    redis = shutil.which("redis-server")
    if not redis:
        raise SystemExit("redis-server is missing: apt-get install redis-server")
    url = f"redis://127.0.0.1:{port}/0"
    with (
        tempfile.TemporaryDirectory(prefix="rota-peers-redis-") as tmp,
        process(
            [
                redis,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ]
        ),
    ):
        env = {**os.environ, "ROTA_PEERS_BROKER": url}
        workers = [
            [sys.executable, "-m", "celery", "-A", "bench.peer_workloads", "worker", "--concurrency", "1",
             "--pool", "prefork", "--loglevel", "ERROR", "--hostname", f"w{i}@%h", "--without-gossip",
             "--without-mingle"]
            for i in range(WORKERS)
        ]  # fmt: skip
        with process(workers[0], env=env), process(workers[1], env=env):
            app = celery_app(url)
            task = app.tasks["bench.peer_workloads.mul"]
            deadline = time.monotonic() + 60
            while len(app.control.ping(timeout=0.5) or []) < WORKERS:
                if time.monotonic() > deadline:
                    raise SystemExit("the Celery workers did not start")

            def batch(n: int) -> None:
                results = [task.delay(6, 7) for _ in range(n)]
                assert [r.get(timeout=600) for r in results] == [42] * n

            def one() -> None:
                assert task.delay(6, 7).get(timeout=60) == 42

            return measure(batch, one, tasks, jobs, runs)


def celery_app(url: str) -> Any:
    from celery import Celery

    app = Celery("bench.peer_workloads", broker=url, backend=url)
    app.conf.update(result_expires=600, worker_hijack_root_logger=False)
    app.task(name="bench.peer_workloads.mul")(mul)
    return app


if os.environ.get("ROTA_PEERS_BROKER"):  # imported by a Celery worker: it finds ``app`` here
    app = celery_app(os.environ["ROTA_PEERS_BROKER"])

SYSTEMS = {"ray": run_ray, "dask": run_dask, "celery": run_celery}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("system", choices=sorted(SYSTEMS))
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--port", type=int, default=6379, help="a free loopback port for Celery's Redis broker")
    args = ap.parse_args()
    result = SYSTEMS[args.system](args.tasks, args.jobs, args.runs, args.port)
    print(json.dumps({"system": args.system, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

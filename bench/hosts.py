"""A cluster of hosts on this machine (issue 17): three masters and two executors, each in a
network namespace of its own with its own address, over mutual TLS with tokens, as the README's
multi-host commands run them (root; iproute2, nftables, iptables).

By default it measures what latency between hosts costs: ``--tasks`` tasks (``call``: a Python
function, or ``noop``) submitted and waited for, and ``--trips`` one-task round trips, with no
added latency and with ``--delay-ms`` added to everything each host sends, in turn (A B A B),
and prints the medians and their ratio. ``--serve`` instead keeps the cluster up and prints how
to reach it with master-client, until Ctrl-C.

    .venv/bin/python -m bench.hosts [--delay-ms 20] [--tasks 2000] [--trips 100] [--runs 2] [--kind call]
    .venv/bin/python -m bench.hosts --serve
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.results import CALL_TASK, NOOP_TASK, percentiles_ms, save
from rota.client.api import Client
from rota.devtools.hosts import Network
from rota.devtools.localcluster import LocalCluster


def throughput(c: Client, tasks: int, kind: str, run: str) -> float:
    task = {"name": "t", **(CALL_TASK if kind == "call" else NOOP_TASK), "count": tasks}
    t0 = time.monotonic()
    job = c.submit_job({"name": f"hosts-{run}", "task": [task]})
    doc = c.wait_job(job["id"], timeout=3600)
    assert doc["counts"] == {"SUCCEEDED": tasks}, doc["counts"]
    return tasks / (time.monotonic() - t0)


def round_trips(c: Client, trips: int, kind: str) -> list[float]:
    task = {"name": "t", **(CALL_TASK if kind == "call" else NOOP_TASK)}
    times = []
    for _ in range(trips):
        t0 = time.monotonic()
        c.run_job({"name": "trip", "task": [task]}, timeout=60)
        times.append(time.monotonic() - t0)
    return times


def serve(cluster: LocalCluster) -> None:
    tls = cluster.tls
    assert tls is not None
    print(f"export ROTA_MASTER_ADDR={cluster.addresses} ROTA_TOKEN_FILE={cluster.base_dir / 'admin.token'}")
    print(f"export ROTA_TLS_CA={tls.ca} ROTA_TLS_CERT={tls.cert} ROTA_TLS_KEY={tls.key}")
    for p in cluster.masters + cluster.executors:
        assert p.host is not None
        print(f"# {p.name}: {p.host.ip} (ip netns exec {p.host.netns} ...), log {p.log_path}")
    print("bin/master-client cluster-status     # Ctrl-C here stops the cluster", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, default=20.0, help="added one-way latency (default 20)")
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--trips", type=int, default=100)
    ap.add_argument("--runs", type=int, default=2, help="runs of each condition, in turn")
    ap.add_argument("--kind", default="call", choices=["call", "noop"])
    ap.add_argument("--serve", action="store_true", help="keep the cluster up for a human instead")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "hosts.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rota-hosts-") as tmp, Network() as net:
        cluster = LocalCluster(tmp, network=net, tls=True, tokens=True, executors=2, executor_slots=1)
        with cluster:
            if args.serve:
                serve(cluster)
                return 0
            rates: dict[float, list[float]] = {0.0: [], args.delay_ms: []}
            trips: dict[float, list[float]] = {0.0: [], args.delay_ms: []}
            with cluster.client(timeout=60) as c:
                for run in range(args.runs):
                    for delay in (0.0, args.delay_ms):
                        for host in net.hosts:
                            if delay:
                                net.delay(host, delay)
                        try:
                            rates[delay].append(throughput(c, args.tasks, args.kind, f"{run}-{delay:g}"))
                            trips[delay] += round_trips(c, args.trips, args.kind)
                        finally:
                            net.heal()
                        print(f"run {run + 1}, {delay:g} ms added: {rates[delay][-1]:.0f} {args.kind} tasks/s, "
                              f"round trip p50 {statistics.median(trips[delay][-args.trips:]) * 1000:.1f} ms", flush=True)  # fmt: skip
    result = {
        "kind": args.kind, "tasks": args.tasks, "executors": 2, "slots_per_executor": 1, "tls": True,
        "delay_ms": args.delay_ms,
        "tasks_per_s": {f"{d:g}ms": round(statistics.median(r)) for d, r in rates.items()},
        "round_trip_ms": {f"{d:g}ms": percentiles_ms(t) for d, t in trips.items()},
    }  # fmt: skip
    ratio = statistics.median(rates[args.delay_ms]) / statistics.median(rates[0.0])
    result["throughput_ratio"] = round(ratio, 3)
    print(
        f"median {args.kind} tasks/s: {result['tasks_per_s']}; with {args.delay_ms:g} ms / without: {ratio:.2f}"
    )
    print(f"round trips: {result['round_trip_ms']}")
    save(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Randomized link faults under load on a cluster of hosts, checked by the history checker
(issue 17): ``make partitions``. Three masters and two executors of two slots, each in its own
network namespace, over mutual TLS with tokens; ``--faults`` faults drawn at random from
devtools/partitions.py's list, each held ``--hold`` seconds then healed. Prints each fault's
timings, the medians per kind, and one verdict per promise; exits 1 if any promise failed.

    .venv/bin/python -m bench.partitions [--faults 30] [--hold 7] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rota.devtools.hosts import Network
from rota.devtools.localcluster import LocalCluster
from rota.devtools.partitions import FAULTS, FaultRun

TIMINGS = ("old_leader_last_write_s", "new_leader_after_s", "ran_elsewhere_after_s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", type=int, default=30)
    ap.add_argument("--hold", type=float, default=7.0, help="seconds each fault lasts (default 7)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    print(f"seed {seed}: {args.faults} faults of {args.hold:g}s", flush=True)
    with tempfile.TemporaryDirectory(prefix="rota-partitions-") as tmp, Network() as net:
        base = Path(tmp)
        cluster = LocalCluster(
            base / "cluster", network=net, tls=True, tokens=True, executors=2, executor_slots=2
        )
        try:
            cluster.start()
            with FaultRun(cluster, net, base / "effects.txt") as run:
                for _ in range(args.faults):
                    print(json.dumps(run.fault(random.choice(list(FAULTS)), hold=args.hold)), flush=True)
                    time.sleep(random.uniform(1.0, 4.0))
                verdicts = run.finish(timeout=300)
        finally:
            cluster.stop()
    by_kind: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for f in run.figures:
        for name in TIMINGS:
            if f.get(name) is not None:
                by_kind[f["fault"]][name].append(f[name])
    print(f"\n{len(run.acked)} jobs acknowledged, {run.refused} submissions refused during faults")
    for kind, timings in sorted(by_kind.items()):
        parts = [
            f"{n} median {statistics.median(v):.2f}s max {max(v):.2f}s (n={len(v)})"
            for n, v in timings.items()
        ]
        print(f"{kind}: " + "; ".join(parts))
    for v in verdicts:
        print(v)
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())

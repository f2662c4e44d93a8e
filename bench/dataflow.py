"""The dataflow bench (issue 15): the shipped example (cmd/master-client/bench-example.toml) run on a
LocalCluster, paced as the original and unpaced, printing records/s and the latency table of the
flow's own report. Optionally (--kill) the executor running binlog 0 is SIGKILLed mid-flow in the
paced run, and the longest pause in each chain's sink writes after it is measured from the sink files.

    .venv/bin/python -m bench.dataflow [--rcd-cnt N] [--kill] [--runs paced,unpaced]

One executor with the gang's slots (two with --kill); the executors' lease TTL is their default, 5 s (--ttl). The machine's
load shows in the figures: they are a measurement, not a promise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from bench.results import save
from rota.common.jobspec import load_job
from rota.dataflow.report import table
from rota.dataflow.runtime import stamp
from rota.devtools.localcluster import LocalCluster

EXAMPLE = Path(__file__).resolve().parents[1] / "cmd" / "master-client" / "bench-example.toml"


def _sink_gaps(out: Path, after_us: int) -> dict[str, float]:
    """Per chain, the longest time from ``after_us`` on during which it wrote no sink line (s)."""
    gaps = {}
    for chain in sorted(out.glob("*/chain_*")):
        stamps = sorted(
            s
            for path in chain.glob("table_*")
            for line in path.read_bytes().splitlines()
            if line and (s := int(line.rsplit(b" ", 1)[1])) >= after_us
        )
        steps = [b - a for a, b in zip([after_us, *stamps], stamps, strict=False)]
        gaps[chain.name] = round(max(steps, default=0) / 1e6, 3)
    return gaps


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def _settle(limit: float = 20.0) -> None:
    """Until the machine is mostly idle (its new executors have warmed their call workers): a
    long-lived cluster is warm, and the flow's figures should not carry the start-up."""
    until = time.monotonic() + limit
    while time.monotonic() < until:
        a = _cpu_times()
        time.sleep(0.5)
        b = _cpu_times()
        if (b[0] - a[0]) < 0.3 * max(1, b[1] - a[1]):
            return


def run(flow: dict, kill: bool, ttl: str, keep: str | None = None) -> dict:
    slots = flow["table-num"] + 2 * len(flow["servers"]) + 1
    with contextlib.ExitStack() as stack:
        if keep:
            os.makedirs(keep, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix="rota-dataflow-", dir=keep)
            print(f"cluster and sink files kept in {tmp}", file=sys.stderr)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="rota-dataflow-"))
        flow = {**flow, "out-dir": f"{tmp}/out"}
        with LocalCluster(tmp) as cluster, cluster.client(30) as c:
            for _ in range(2 if kill else 1):
                cluster.add_executor(
                    slots=slots, args=["--keepalive-ttl", ttl, "--keepalive-interval", "200ms"]
                )
            cluster.wait_for_executors(2 if kill else 1)
            _settle()
            job_id = c.submit_job(load_job(flow).to_dict())["id"]
            cpu0 = _cpu_times()
            killed_at = None
            if kill:
                out = Path(flow["out-dir"])
                while not any(p.stat().st_size for p in out.glob("*/chain_*/table_*")):
                    time.sleep(0.05)
                time.sleep(2)
                binlog = next(t for t in c.get_job(job_id)["tasks"] if t["name"] == "binlog-shard0")
                name = next(e["name"] for e in c.list_executors() if e["id"] == binlog["executor"])
                killed_at = time.time_ns() // 1000
                print(f"SIGKILL of {name} (binlog 0) at {stamp(killed_at / 1e6)}", file=sys.stderr)
                next(p for p in cluster.executors if p.name == name).signal(signal.SIGKILL)
            try:
                doc = c.wait_job(job_id, timeout=300)
            except TimeoutError:
                doc = c.get_job(job_id)
            if doc["state"] != "SUCCEEDED":
                for t in doc["tasks"]:
                    print(
                        t["name"],
                        t["state"],
                        "attempt",
                        t["attempt"],
                        "restarts",
                        t.get("restarts"),
                        file=sys.stderr,
                    )
                raise SystemExit(f"the flow ended {doc['state']}: {json.dumps(doc)[:2000]}")
            cpu1 = _cpu_times()
            task = next(t for t in doc["tasks"] if t["name"] == "report")
            report = json.loads(task["result"]["stdout"].strip().splitlines()[-1])
            report["machine_cpu_busy"] = round((cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1]), 3)
            if killed_at is not None:
                report["sink_pause_after_kill_s"] = _sink_gaps(Path(flow["out-dir"]), killed_at)
            return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rcd-cnt", type=int, help="records per table (default: the example's)")
    ap.add_argument("--runs", default="paced,unpaced")
    ap.add_argument("--kill", action="store_true", help="SIGKILL binlog 0's executor in the paced run")
    ap.add_argument("--ttl", default="5s", help="the executors' --keepalive-ttl (default 5s, theirs)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the example (a TOML value)",
    )
    ap.add_argument("--keep", metavar="DIR", help="keep each run's cluster logs and sink files under DIR")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dataflow.json"))
    args = ap.parse_args()
    with open(EXAMPLE, "rb") as f:
        flow = tomllib.load(f)
    if args.rcd_cnt:
        flow["rcd-cnt"] = args.rcd_cnt
    for item in args.set:
        flow.update(tomllib.loads(item.replace("=", " = ", 1)))
    results = {}
    for name in args.runs.split(","):
        pace = flow.get("pace", 2327) if name == "paced" else 0
        report = run({**flow, "pace": pace}, kill=args.kill and name == "paced", ttl=args.ttl, keep=args.keep)
        results[name] = report
        print(
            f"== {name} (pace {pace or 'none'}): {flow['table-num']} tables, {len(flow['servers'])} servers"
        )
        print(table(report))
        print(f"machine CPU busy while the job ran: {report['machine_cpu_busy']:.0%}")
        if "sink_pause_after_kill_s" in report:
            print(
                f"longest pause in sink writes after the SIGKILL, per chain (s): {report['sink_pause_after_kill_s']}"
            )
    save(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

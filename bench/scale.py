"""Scale: big jobs, the leader's memory per pending task, and a new leader's rebuild time.

Local clusters of three masters (embedded etcd) and no executors, so every task stays
PENDING. Three measurements, a table printed and bench/results/scale.json written:

1. Submission of one job of ``--big`` tasks (``count = N``) and of one job of
   ``--distinct`` distinct ``[[task]]`` tables (its spec is written in parts, several
   transactions), each confirmed with get-job.
2. The leader's RSS (VmRSS of its process) before and after jobs of ``--sizes`` pending
   tasks: bytes per pending task.
3. On a fresh cluster with one job of ``--rebuild-tasks`` pending tasks: SIGKILL the
   leader and time until a survivor answers get-job with every task PENDING (polling the
   two survivors every 10 ms), plus the rebuild alone as the new leader logs it.

    .venv/bin/python bench/scale.py [--big 200000] [--distinct 50000] [--sizes 100000,200000]
                                    [--rebuild-tasks 100000] [--trials 3] [--profile /tmp/x.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from rota.client.api import Client
from rota.common import rpc
from rota.common.jobspec import load_job
from rota.devtools.localcluster import LocalCluster, MasterProcess
from rota.metastore import keys
from rota.metastore.client import EtcdClient
from rota.protos import rota_pb2, rota_pb2_grpc

REBUILT_RE = re.compile(r"leader state rebuilt from etcd in ([0-9.]+)s: (\d+) jobs, (\d+) pending tasks")
TARGET_REBUILD_S = 3.0
TARGET_BYTES_PER_TASK = 1024


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss(pid: int, settle: float) -> int:
    """RSS once it has stopped moving (two reads 0.25 s apart within 64 KiB), at most ``settle`` s on."""
    time.sleep(0.25)
    deadline = time.monotonic() + settle
    last = rss_bytes(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss_bytes(pid)
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def etcd_endpoints(cluster: LocalCluster) -> list[str]:
    return [m.argv[m.argv.index("--etcd-client-urls") + 1] for m in cluster.masters]


async def spec_parts(endpoints: list[str], job_id: str) -> list[int]:
    """Sizes of the spec parts the job has in etcd (one transaction each)."""
    async with EtcdClient(endpoints, timeout=30, call_timeout=30) as client:
        kvs, _ = await client.get_prefix(keys.job_specs(job_id))
    return [len(kv.value) for kv in kvs]


def timed_get_job(c: Client, job_id: str) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    doc = c.get_job(job_id)
    return doc, time.monotonic() - t0


def start_profile(pid: int, out: str, seconds: int) -> subprocess.Popen[bytes]:
    argv = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", str(seconds)]
    argv += ["-f", "raw", "-o", out, "--nonblocking"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let py-spy attach
    return proc


def summarise_profile(path: str, top: int = 12) -> dict[str, list[tuple[str, float]]]:
    """Top frames of a py-spy raw file: self (leaf) and inclusive Rota frames, as % of samples."""
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        count = int(n)
        total += count
        if frames:
            leaf[frames[-1]] += count
        for f in set(frames):
            # Rota's own frames below the entry point (which every sample has).
            if ("scheduler/" in f or "metastore/" in f) and not ("master.py" in f or "config.py" in f):
                incl[f] += count
    if not total:
        return {"self": [], "inclusive": []}

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in c.most_common(top)]

    return {"samples": [("total", float(total))], "self": pct(leaf), "inclusive": pct(incl)}


def phase_jobs(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Submissions and leader memory, on one cluster."""
    out: dict[str, Any] = {"submissions": [], "memory": []}
    cluster = LocalCluster(Path(tmp) / "jobs")
    with cluster, cluster.client(args.client_timeout) as c:
        leader = cluster.leader()
        pid = leader.pid
        print(f"cluster up; leader {leader.name} (pid {pid})", flush=True)
        c.list_jobs()  # warm the client's channel
        rss = settled_rss(pid, args.settle)
        profile_proc = None
        jobs: list[tuple[str, str, int]] = []  # (label, job id, tasks)
        plan = [(f"count={n:,}", {"name": f"scale-{n}", "task": [{"name": "t", "kind": "noop", "count": n}]}, n)
                for n in args.sizes]  # fmt: skip
        distinct = {
            "name": f"scale-distinct-{args.distinct}",
            "task": [{"name": f"t{i:06d}", "kind": "noop"} for i in range(args.distinct)],
        }
        plan.append((f"{args.distinct:,} [[task]] tables", distinct, args.distinct))
        for label, job, n in plan:
            t0 = time.monotonic()
            load_job(job)
            parse_s = time.monotonic() - t0
            if args.profile and n == args.big and profile_proc is None:
                profile_proc = start_profile(pid, args.profile, args.profile_seconds)
            t0 = time.monotonic()
            reply = c.submit_job(job)
            submit_s = time.monotonic() - t0
            assert reply["created"], reply
            after = settled_rss(pid, args.settle)
            assert cluster.leader().pid == pid, "the leader changed during the memory measurement"
            per_task = (after - rss) / n
            out["memory"].append(
                {
                    "job": label,
                    "tasks": n,
                    "rss_before": rss,
                    "rss_after": after,
                    "bytes_per_task": round(per_task),
                }
            )
            out["submissions"].append(
                {"job": label, "tasks": n, "id": reply["id"], "client_parse_s": round(parse_s, 3),
                 "submit_s": round(submit_s, 3)}
            )  # fmt: skip
            print(f"{label}: submitted in {submit_s:.3f}s (client-side parse {parse_s:.3f}s); leader RSS "
                  f"{rss / 2**20:.1f} -> {after / 2**20:.1f} MiB = {per_task:.0f} B/task", flush=True)  # fmt: skip
            rss = after
            jobs.append((label, reply["id"], n))
        # get-job after every RSS reading: a get-job document of N tasks is itself big.
        for (label, job_id, n), sub in zip(jobs, out["submissions"], strict=True):
            doc, get_s = timed_get_job(c, job_id)
            assert doc["counts"] == {"PENDING": n}, (label, doc["counts"])
            assert len(doc["tasks"]) == n
            sub["get_job_s"] = round(get_s, 3)
            sub["counts"] = doc["counts"]
            sub["spec_parts_bytes"] = asyncio.run(spec_parts(etcd_endpoints(cluster), job_id))
            print(f"{label}: get-job {doc['counts']} in {get_s:.3f}s; spec in "
                  f"{len(sub['spec_parts_bytes'])} part(s) {sub['spec_parts_bytes']}", flush=True)  # fmt: skip
        out["leader_rss_after_get_jobs"] = rss_bytes(pid)
        if profile_proc is not None:
            _, err = profile_proc.communicate(timeout=args.profile_seconds + 30)
            if Path(args.profile).exists():
                out["profile"] = summarise_profile(args.profile)
            else:
                out["profile_error"] = err.decode(errors="replace")[-500:]
    return out


def poll_get_job(
    stubs: list[rota_pb2_grpc.MasterStub], job_id: str, n: int, limit: float
) -> tuple[float, int]:
    """Seconds until one of ``stubs`` answers get-job with ``n`` PENDING tasks; and failed polls."""
    req = rota_pb2.GetJobRequest(id=job_id)
    t0 = time.monotonic()
    failures = 0
    i = 0
    while True:
        stub = stubs[i % len(stubs)]
        i += 1
        try:
            doc = json.loads(stub.GetJob(req, timeout=limit).json)
            if doc["counts"].get("PENDING") == n:
                return time.monotonic() - t0, failures
        except grpc.RpcError:
            pass
        failures += 1
        if time.monotonic() - t0 > limit:
            raise TimeoutError(f"no survivor answered get-job within {limit:g}s")
        time.sleep(0.01)


def rebuilt_line(m: MasterProcess, offset: int) -> tuple[float, int, int] | None:
    with open(m.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    hits = REBUILT_RE.findall(text)
    if not hits:
        return None
    s, jobs, pending = hits[-1]
    return float(s), int(jobs), int(pending)


def phase_rebuild(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    n = args.rebuild_tasks
    trials: list[dict[str, Any]] = []
    cluster = LocalCluster(Path(tmp) / "rebuild")
    with cluster, cluster.client(args.client_timeout) as c:
        job_id = c.submit_job({"name": f"rebuild-{n}", "task": [{"name": "t", "kind": "noop", "count": n}]})[
            "id"
        ]
        doc, _ = timed_get_job(c, job_id)
        assert doc["counts"] == {"PENDING": n}, doc["counts"]
        for trial in range(args.trials):
            leader = cluster.leader()
            survivors = [m for m in cluster.masters if m is not leader]
            channels = [grpc.insecure_channel(m.addr, options=rpc.CHANNEL_OPTIONS) for m in survivors]
            stubs = [rota_pb2_grpc.MasterStub(ch) for ch in channels]
            # Before the warm-up: a follower that forwards a big get-job keeps its buffers for a while.
            follower_rss = {m.name: rss_bytes(m.pid) for m in survivors}
            # Warm both channels; the answer (forwarded by a follower) is the cost of the document itself.
            for stub in stubs:
                poll_get_job([stub], job_id, n, 60)
            steady, _ = poll_get_job(stubs[:1], job_id, n, 60)
            offsets = {m.name: m.log_path.stat().st_size for m in survivors}
            leader.signal(signal.SIGKILL)
            total, failures = poll_get_job(stubs, job_id, n, 120)
            leader.wait(10)
            new = cluster.master(cluster.wait_for_leader(exclude=leader.name))
            line = rebuilt_line(new, offsets[new.name])
            new_rss = rss_bytes(new.pid)
            for ch in channels:
                ch.close()
            row = {
                "trial": trial + 1, "killed": leader.name, "new_leader": new.name,
                "until_get_job_s": round(total, 3), "failed_polls": failures,
                "rebuild_logged_s": line[0] if line else None,
                "rebuild_logged_pending": line[2] if line else None,
                "steady_get_job_via_follower_s": round(steady, 3),
                "new_leader_rss_before": follower_rss[new.name], "new_leader_rss_after": new_rss,
                "new_leader_bytes_per_task": round((new_rss - follower_rss[new.name]) / n),
            }  # fmt: skip
            trials.append(row)
            print(f"trial {trial + 1}: killed {leader.name}; {new.name} answered get-job after {total:.3f}s "
                  f"({failures} failed polls); logged rebuild {row['rebuild_logged_s']}s "
                  f"({row['rebuild_logged_pending']} pending); get-job alone {steady:.3f}s; "
                  f"{new.name} RSS +{(new_rss - follower_rss[new.name]) / 2**20:.1f} MiB", flush=True)  # fmt: skip
            leader.start()
            cluster.wait_for_leader(timeout=60, all_reachable=True)
    totals = [t["until_get_job_s"] for t in trials]
    rebuilds = [t["rebuild_logged_s"] for t in trials if t["rebuild_logged_s"] is not None]
    return {
        "tasks": n,
        "trials": trials,
        "until_get_job_median_s": round(statistics.median(totals), 3),
        "until_get_job_worst_s": round(max(totals), 3),
        "rebuild_logged_median_s": round(statistics.median(rebuilds), 3) if rebuilds else None,
        "rebuild_logged_worst_s": round(max(rebuilds), 3) if rebuilds else None,
    }


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ok(flag: bool) -> str:
    return "ok" if flag else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=int, default=200_000, help="tasks of the big count= job")
    ap.add_argument("--distinct", type=int, default=50_000, help="distinct [[task]] tables of one job")
    ap.add_argument("--sizes", default="100000,200000", help="pending-task job sizes for the memory figure")
    ap.add_argument("--rebuild-tasks", type=int, default=100_000)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0, help="at most this long for the RSS to settle")
    ap.add_argument("--client-timeout", type=float, default=120.0)
    ap.add_argument("--profile", help="py-spy raw output: profile the leader during the --big submission")
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--skip-rebuild", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale.json"))
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.big not in args.sizes:
        args.sizes.append(args.big)
    result: dict[str, Any] = {
        "targets": {"rebuild_s": TARGET_REBUILD_S, "bytes_per_task": TARGET_BYTES_PER_TASK}
    }
    with tempfile.TemporaryDirectory(prefix="rota-scale-") as tmp:
        result["jobs"] = phase_jobs(args, tmp)
        if not args.skip_rebuild:
            result["rebuild"] = phase_rebuild(args, tmp)

    jobs = result["jobs"]
    rows = [["job", "tasks", "submit", "get-job", "spec parts", "leader RSS/task", "target"]]
    for sub, mem in zip(jobs["submissions"], jobs["memory"], strict=True):
        per = mem["bytes_per_task"]
        rows.append([sub["job"], f"{sub['tasks']:,}", f"{sub['submit_s']:.3f} s", f"{sub['get_job_s']:.3f} s",
                     str(len(sub["spec_parts_bytes"])), f"{per} B",
                     f"< {TARGET_BYTES_PER_TASK} B {ok(per < TARGET_BYTES_PER_TASK)}"])  # fmt: skip
    print()
    print(table(rows))
    if "rebuild" in result:
        rb = result["rebuild"]
        print()
        rows = [["new leader, 100,000 pending", "median", "worst", "target"]]
        rows[0][0] = f"new leader, {rb['tasks']:,} pending ({args.trials} trials)"
        rows.append(["SIGKILL -> survivor answers get-job", f"{rb['until_get_job_median_s']:.3f} s",
                     f"{rb['until_get_job_worst_s']:.3f} s",
                     f"< {TARGET_REBUILD_S:g} s {ok(rb['until_get_job_worst_s'] < TARGET_REBUILD_S)}"])  # fmt: skip
        if rb["rebuild_logged_median_s"] is not None:
            rows.append(["rebuild alone (leader log)", f"{rb['rebuild_logged_median_s']:.3f} s",
                         f"{rb['rebuild_logged_worst_s']:.3f} s",
                         f"< {TARGET_REBUILD_S:g} s {ok(rb['rebuild_logged_worst_s'] < TARGET_REBUILD_S)}"])  # fmt: skip
        print(table(rows))
    if "profile" in jobs:
        print(f"\nleader profile during the {args.big:,}-task submission ({args.profile}), top self frames:")
        for frame, pct in jobs["profile"]["self"][:10]:
            print(f"  {pct:5.1f}%  {frame}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

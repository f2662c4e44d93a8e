"""Many executors: N light simulated executors attached to one leader, and what they cost it.

Starts a local cluster (three masters with embedded etcd, no real executors), then N
simulated executors speaking the real Attach protocol (Hello, Welcome, a Heartbeat every
second, a SUCCEEDED report for every dispatched task) from a few worker processes, each
running one asyncio loop with one gRPC channel to the leader shared by its executors.
Measures the time until the leader lists all N as ready, the leader's (and the etcd
members') CPU share over a window of steady heartbeating, heartbeat acknowledgement
latency, and, as a sanity check, one job of no-op tasks run on the simulated executors.
Prints a table and writes bench/results/executors.json.

    .venv/bin/python bench/executors.py [--executors 1000] [--workers 4] [--window 30] [--tasks 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from rota.common import rpc
from rota.protos import rota_pb2, rota_pb2_grpc

RETRY_DELAY = 0.5

# -- worker process: the simulated executors ---------------------------------------------


class Sims:
    """One worker process's simulated executors and their counters."""

    def __init__(self, addr: str, first: int, count: int, interval: float, ttl: float) -> None:
        self.addr = addr
        self.first = first
        self.count = count
        self.interval = interval
        self.ttl = ttl
        self.stopping = False
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.attached = 0
        self.welcomes = 0
        self.attach_failures = 0
        self.redirects = 0
        self.stream_ends = 0
        self.beats = 0
        self.acks = 0
        self.dispatches = 0
        self.tasks = 0
        self.first_welcome = 0.0
        self.last_welcome = 0.0
        self.errors: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.pending: dict[int, collections.deque[float]] = {}

    def channel(self, addr: str) -> grpc.aio.Channel:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = rpc.channel(addr)
        return ch

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self._channels.values()), return_exceptions=True)

    def snapshot(self) -> dict[str, Any]:
        """Counters so far, and the heartbeat ack latencies since the last snapshot."""
        lat, self.latencies = self.latencies, []
        outstanding = [len(d) for d in self.pending.values()]
        return {
            "attached": self.attached,
            "welcomes": self.welcomes,
            "attach_failures": self.attach_failures,
            "redirects": self.redirects,
            "stream_ends": self.stream_ends,
            "beats": self.beats,
            "acks": self.acks,
            "dispatches": self.dispatches,
            "tasks": self.tasks,
            "first_welcome": self.first_welcome,
            "last_welcome": self.last_welcome,
            "outstanding_beats": sum(outstanding),
            "max_outstanding": max(outstanding, default=0),
            "errors": dict(self.errors.most_common(5)),
            "latencies": [round(x, 5) for x in lat],
        }

    def _error(self, e: BaseException) -> None:
        if isinstance(e, grpc.aio.AioRpcError):
            self.errors[f"{e.code().name}: {(e.details() or '')[:80]}"] += 1
        else:
            self.errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1

    async def run_one(self, n: int) -> None:
        """Simulated executor ``sim{n}``: attach (following redirects), then serve until stopped."""
        target = self.addr
        hello = rota_pb2.ExecutorMessage(
            hello=rota_pb2.Hello(
                name=f"sim{n}", addr="127.0.0.1:1", slots=1, kinds=["noop"], keepalive_ttl=self.ttl
            )
        )
        while not self.stopping:
            call = rota_pb2_grpc.MasterStub(self.channel(target)).Attach()
            try:
                await call.write(hello)
                first = await call.read()
            except grpc.aio.AioRpcError as e:
                call.cancel()
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    leader = str(dict(e.trailing_metadata() or ()).get("rota-leader", ""))
                    if leader:
                        self.redirects += 1
                        target = leader
                        continue
                self.attach_failures += 1
                self._error(e)
                await asyncio.sleep(RETRY_DELAY)
                continue
            except Exception as e:  # a stream torn down mid-write
                call.cancel()
                self.attach_failures += 1
                self._error(e)
                await asyncio.sleep(RETRY_DELAY)
                continue
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                call.cancel()
                self.attach_failures += 1
                self.errors["no welcome"] += 1
                await asyncio.sleep(RETRY_DELAY)
                continue
            now = time.monotonic()
            self.welcomes += 1
            self.attached += 1
            self.first_welcome = self.first_welcome or now
            self.last_welcome = max(self.last_welcome, now)
            try:
                await self._session(n, call)
            except Exception as e:
                if not self.stopping:
                    self._error(e)
            finally:
                self.attached -= 1
                self.pending.pop(n, None)
                call.cancel()
            if not self.stopping:
                self.stream_ends += 1
                await asyncio.sleep(RETRY_DELAY)

    async def _session(self, n: int, call: grpc.aio.StreamStreamCall) -> None:
        lock = asyncio.Lock()
        beats: collections.deque[float] = collections.deque()
        self.pending[n] = beats
        loop = asyncio.get_running_loop()

        async def write(msg: rota_pb2.ExecutorMessage) -> None:
            async with lock:
                await call.write(msg)

        async def heartbeat() -> None:
            # Staggered start, then a fixed 1 s schedule that does not drift.
            await asyncio.sleep(random.uniform(0, self.interval))
            due = loop.time()
            while True:
                beats.append(time.monotonic())
                self.beats += 1
                await write(rota_pb2.ExecutorMessage(heartbeat=rota_pb2.Heartbeat(running=0)))
                due += self.interval
                await asyncio.sleep(max(0.0, due - loop.time()))

        async def read() -> None:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    return
                body = msg.WhichOneof("body")
                if body == "heartbeat_ack":
                    if beats:
                        self.latencies.append(time.monotonic() - beats.popleft())
                    self.acks += 1
                elif body == "dispatch":
                    self.dispatches += 1
                    self.tasks += len(msg.dispatch.tasks)
                    reports = [
                        rota_pb2.TaskReport(task=a.task, state="SUCCEEDED") for a in msg.dispatch.tasks
                    ]
                    await write(rota_pb2.ExecutorMessage(reports=rota_pb2.TaskReports(reports=reports)))

        tasks = [asyncio.create_task(read()), asyncio.create_task(heartbeat())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def worker_main(args: argparse.Namespace) -> None:
    """Commands come one a line on stdin (go, stats, stop); answers are JSON lines on stdout."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")

    threading.Thread(target=read_stdin, daemon=True).start()
    sims = Sims(args.addr, args.first, args.count, args.interval, args.ttl)
    ok = await rpc.ready(sims.channel(args.addr), 30.0)

    def answer(doc: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    answer({"ready": ok, "pid": os.getpid()})
    running: list[asyncio.Task[None]] = []
    while True:
        cmd = await commands.get()
        if cmd == "go" and not running:
            running = [
                asyncio.create_task(sims.run_one(n)) for n in range(args.first, args.first + args.count)
            ]
            answer({"go": True})
        elif cmd == "stats":
            answer(sims.snapshot())
        elif cmd == "stop":
            sims.stopping = True
            final = sims.snapshot()
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await sims.close()
            answer(final)
            return


# -- the bench: cluster, workers, measurements --------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces): state is field 3, ppid 4, utime 14.
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                pids.append(int(entry))
    return sorted(pids)


class Worker:
    """One worker process running this file with --worker, driven over stdin/stdout."""

    def __init__(self, args: argparse.Namespace, addr: str, first: int, count: int, log_path: Path) -> None:
        from rota.common.procs import die_with_parent

        argv = [
            sys.executable, str(Path(__file__).resolve()), "--worker", "--addr", addr,
            "--first", str(first), "--count", str(count), "--interval", str(args.interval),
            "--ttl", str(args.ttl),
        ]  # fmt: skip
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                preexec_fn=die_with_parent(),
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"worker {self.pid} did not answer within {timeout:g}s") from None
        if line is None:
            raise RuntimeError(f"worker {self.pid} exited (rc {self.proc.poll()}):\n{self.log_tail()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> dict[str, Any] | None:
        """Ask it to stop (final counters), then make sure it is gone, by pid."""
        final = None
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.send("stop")
                final = self.recv(10.0)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return final


def ask_all(workers: list[Worker], cmd: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    for w in workers:
        w.send(cmd)
    return [w.recv(timeout) for w in workers]


def merge(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the workers' counters; percentiles of their heartbeat ack latencies."""
    keys = ("attached", "welcomes", "attach_failures", "redirects", "stream_ends", "beats", "acks")
    doc: dict[str, Any] = {k: sum(s[k] for s in snaps) for k in keys + ("dispatches", "tasks")}
    doc["outstanding_beats"] = sum(s["outstanding_beats"] for s in snaps)
    doc["max_outstanding_per_executor"] = max((s["max_outstanding"] for s in snaps), default=0)
    errors: collections.Counter[str] = collections.Counter()
    for s in snaps:
        errors.update(s["errors"])
    doc["errors"] = dict(errors.most_common(5))
    lat = sorted(x for s in snaps for x in s["latencies"])
    doc["ack_latency_ms"] = latency_summary(lat)
    return doc


def latency_summary(lat: list[float]) -> dict[str, Any]:
    if not lat:
        return {"count": 0}

    def pct(p: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1)

    return {
        "count": len(lat),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": round(1000 * lat[-1], 1),
        "over_1s": sum(1 for x in lat if x > 1.0),
    }


def leader_name(c: Any) -> str | None:
    try:
        leader = c.cluster_status()["leader"]
    except Exception as e:
        return f"unknown ({type(e).__name__})"
    return str(leader["name"]) if leader else None


class CpuMeter:
    """CPU seconds of a set of pids between two samples, as a share of one core."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.t0 = time.monotonic()
        self.c0 = {name: sum(cpu_seconds(p) for p in pids) for name, pids in groups.items()}

    def shares(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.t0
        return {
            name: round((sum(cpu_seconds(p) for p in pids) - self.c0[name]) / elapsed, 3)
            for name, pids in self.groups.items()
        }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from rota.client.api import NoMasterReachable
    from rota.devtools.localcluster import LocalCluster

    result: dict[str, Any] = {
        "executors": args.executors,
        "workers": args.workers,
        "heartbeat_interval_s": args.interval,
        "keepalive_ttl_s": args.ttl,
        "cpu_window_s": args.window,
        "cores": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="rota-executors-") as tmp_dir:
        tmp = args.base_dir or tmp_dir
        cluster = LocalCluster(tmp, executors=0)
        workers: list[Worker] = []
        try:
            cluster.start()
            leader = cluster.leader()
            followers = [m for m in cluster.masters if m.name != leader.name]
            leader_etcd = children(leader.pid)
            groups = {
                "leader": [leader.pid],
                "leader_etcd": leader_etcd,
                "all_etcd": [p for m in cluster.masters for p in children(m.pid)],
                "followers": [m.pid for m in followers],
            }
            print(
                f"leader {leader.name} at {leader.addr} (pid {leader.pid}, etcd pids {leader_etcd})",
                flush=True,
            )

            per = [args.executors // args.workers + (1 if i < args.executors % args.workers else 0)
                   for i in range(args.workers)]  # fmt: skip
            first = 0
            for i, count in enumerate(per):
                workers.append(Worker(args, leader.addr, first, count, Path(tmp) / f"worker{i}.log"))
                first += count
            for w in workers:
                if not w.recv(60.0).get("ready"):
                    raise RuntimeError(f"worker {w.pid} could not connect to {leader.addr}")
            groups["workers"] = [w.pid for w in workers]

            with cluster.client(30) as c:
                # Attach: all at once, until the leader lists N ready executors.
                cpu = CpuMeter(groups)
                t_go = time.monotonic()
                ask_all(workers, "go")
                ready, polls_failed = 0, 0
                deadline = t_go + args.attach_timeout
                while time.monotonic() < deadline:
                    try:
                        ready = sum(1 for d in c.list_executors() if d["state"] == "ready")
                    except NoMasterReachable:
                        polls_failed += 1
                    if ready >= args.executors:
                        break
                    time.sleep(0.2)
                attach_s = time.monotonic() - t_go
                snaps = ask_all(workers, "stats")
                attach = merge(snaps)
                attach["listed_ready"] = ready
                attach["list_polls_failed"] = polls_failed
                attach["seconds"] = round(attach_s, 2) if ready >= args.executors else None
                last = max((s["last_welcome"] for s in snaps), default=0.0)
                attach["last_welcome_after_s"] = round(last - t_go, 2) if last else None
                attach["cpu_share"] = cpu.shares()
                result["attach"] = attach
                print(f"attach: {ready}/{args.executors} ready after {attach_s:.2f}s", flush=True)

                # Steady heartbeating.
                time.sleep(args.settle)
                ask_all(workers, "stats")  # resets latencies
                cpu = CpuMeter(groups)
                time.sleep(args.window)
                shares = cpu.shares()
                steady = merge(ask_all(workers, "stats"))
                steady["cpu_share"] = shares
                try:
                    steady["listed_ready_after"] = sum(1 for d in c.list_executors() if d["state"] == "ready")
                except NoMasterReachable:
                    steady["listed_ready_after"] = None
                result["steady"] = steady
                print(f"steady: leader cpu {shares['leader']:.3f} over {args.window:g}s", flush=True)

                # Sanity: a job of no-op tasks on the simulated executors.
                cpu = CpuMeter(groups)
                t0 = time.monotonic()
                job = c.submit_job({"name": "many-executors", "task": [{"name": "t", "kind": "noop",
                                                                         "count": args.tasks}]})  # fmt: skip
                submitted = time.monotonic() - t0
                job_doc: dict[str, Any] = {"tasks": args.tasks, "submit_s": round(submitted, 2)}
                try:
                    doc = c.wait_job(job["id"], timeout=args.job_timeout)
                    job_doc["state"] = doc["state"]
                    job_doc["counts"] = doc["counts"]
                except TimeoutError:
                    job_doc["state"] = "TIMEOUT"
                elapsed = time.monotonic() - t0
                job_doc["seconds"] = round(elapsed, 2)
                job_doc["tasks_per_s"] = (
                    round(args.tasks / elapsed) if job_doc["state"] == "SUCCEEDED" else None
                )
                job_doc["cpu_share"] = cpu.shares()
                sims = merge(ask_all(workers, "stats"))
                job_doc["sim_tasks_reported"] = sims["tasks"]
                job_doc["sim_dispatches"] = sims["dispatches"]
                job_doc["ack_latency_ms"] = sims["ack_latency_ms"]
                result["job"] = job_doc
                result["leader"] = {"start": leader.name, "after_job": leader_name(c)}
                print(f"job: {job_doc['state']} in {elapsed:.2f}s", flush=True)
        finally:
            finals = [w.stop() for w in workers]
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
            cluster.stop()
            done = [f for f in finals if f is not None]
            if done:
                total = merge(done)
                result["totals"] = {k: total[k] for k in
                                    ("welcomes", "attach_failures", "redirects", "stream_ends", "beats", "acks",
                                     "tasks", "errors")}  # fmt: skip
            tails = {f"worker{i}": w.log_tail() for i, w in enumerate(workers) if w.log_tail()}
            if tails:
                result["worker_logs"] = tails
    return result


def print_table(r: dict[str, Any]) -> None:
    a, s, j = r.get("attach", {}), r.get("steady", {}), r.get("job", {})
    sc = s.get("cpu_share", {})
    lat = s.get("ack_latency_ms", {})
    rows = [
        ("executors attached", f"{a.get('listed_ready')}/{r['executors']} "
                               f"({r['workers']} worker processes)"),
        ("time to attach all", f"{a.get('seconds')} s (last welcome at {a.get('last_welcome_after_s')} s)"),
        ("attach failures / redirects", f"{a.get('attach_failures')} / {a.get('redirects')}"),
        (f"leader CPU share ({r['cpu_window_s']:g} s)", f"{sc.get('leader')} of one core (target < 0.5)"),
        ("leader's etcd member CPU", f"{sc.get('leader_etcd')}"),
        ("all 3 etcd members CPU", f"{sc.get('all_etcd')}"),
        ("followers CPU", f"{sc.get('followers')}"),
        ("sim workers CPU", f"{sc.get('workers')}"),
        ("heartbeats sent / acked", f"{s.get('beats')} / {s.get('acks')} (cumulative)"),
        ("ack latency p50/p99/max", f"{lat.get('p50')} / {lat.get('p99')} / {lat.get('max')} ms "
                                    f"({lat.get('over_1s')} over 1 s)"),
        ("still ready after window", f"{s.get('listed_ready_after')}"),
        (f"{j.get('tasks')}-task noop job", f"{j.get('state')} in {j.get('seconds')} s "
                                           f"({j.get('tasks_per_s')} tasks/s)"),
        ("leader CPU during job", f"{j.get('cpu_share', {}).get('leader')}"),
        ("leader at start / after job", f"{r.get('leader', {}).get('start')} / {r.get('leader', {}).get('after_job')}"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--executors", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4, help="worker processes the executors are spread over")
    ap.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, seconds")
    ap.add_argument("--ttl", type=float, default=5.0, help="keepalive_ttl in each Hello, seconds")
    ap.add_argument("--window", type=float, default=30.0, help="CPU measurement window, seconds")
    ap.add_argument("--settle", type=float, default=2.0, help="pause after attaching before the window")
    ap.add_argument("--attach-timeout", type=float, default=180.0)
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--job-timeout", type=float, default=600.0)
    ap.add_argument("--base-dir", help="keep the cluster's data and logs here instead of a temporary dir")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "executors.json"))
    # Internal: run as one worker process of simulated executors.
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--addr", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker_main(args))
        return 0
    if args.executors < 1 or args.workers < 1:
        ap.error("--executors and --workers must be at least 1")
    result = bench(args)
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

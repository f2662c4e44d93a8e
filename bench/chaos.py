"""Chaos run: faults against a live cluster under load, then a check of Rota's promises.

Starts an external three-member etcd cluster, three masters (leader lease 2 s) and three
executors (two slots, lease TTL 2 s), all real processes on 127.0.0.1. A submitter process
keeps submitting jobs of ``python`` tasks and of short ``call`` tasks (``bench/chaos_task.py``, queued
deep on the executors and run in batches) that append ``start`` and ``end`` lines to one
side-effect log, while the main thread injects faults at random intervals (0.5-2 s):
SIGKILL of the leader or of a follower master, SIGSTOP of the leader or of any master, SIGKILL
or SIGSTOP of an executor, SIGKILL or SIGSTOP of an etcd member; stalls last 1-5 s, around the
2 s leader lease and executor TTL. Killed processes come back after
0.5-2 s. At most one master and one etcd member are down at a time, and one executor
always runs.

Then it stops submitting, brings everything back, waits for every acknowledged job and
checks, from etcd's full history and the side-effect log:

1. every acknowledged job exists and finished (FAILED only when a task used up its attempts:
   max-attempts failed ones, or as many lost ones as the leader allows);
2. no task's terminal state is ever written again with another value ("completed twice");
   and, from the side-effect log, no task completed under two attempts unless the first one's
   executor was killed or stalled (its result died with it, or its lease ran out);
3. no stale result was recorded: a SUCCEEDED task's attempt has an ``end`` line, its
   result's stdout comes from that attempt, and its attempt number never went backwards;
4. no task failed more than ``max-attempts`` times or was lost more often than allowed, and no
   attempt number went past the two together (start lines and task records);
5. (statistic) how many tasks started under several attempts.

    .venv/bin/python -m bench.chaos [--faults 400] [--seed 1] [--out bench/results/chaos.json]

Exits 1 when a check fails. Processes are started from the main thread (children die with
the thread that forked them) and always stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rota.client.api import Client, NoMasterReachable, RequestError
from rota.common.jobspec import JobSpecError
from rota.common.states import TERMINAL
from rota.devtools.etcdcluster import EtcdCluster
from rota.devtools.localcluster import LocalCluster, MasterProcess, Process
from rota.metastore import keys
from rota.metastore.client import EtcdClient, Event
from rota.metastore.keys import JOBS, TASKS
from rota.scheduler.core import lost_limit

MAX_ATTEMPTS = 5
#: Attempts lost with their executor do not use up max-attempts; this many fail a task.
MOST_LOST = lost_limit(MAX_ATTEMPTS)
#: The highest attempt number a task can reach: every failure and every loss but the last.
MOST_ATTEMPTS = MAX_ATTEMPTS + MOST_LOST - 1
EXECUTORS = 3
EXECUTOR_SLOTS = 2
EXECUTOR_ARGS = ["--keepalive-ttl", "2s", "--keepalive-interval", "300ms"]
LEADER_LEASE_TTL = "2s"

FAULT_TYPES = (
    "kill_leader",
    "kill_follower",
    "stop_leader",
    "stop_master",
    "kill_executor",
    "stop_executor",
    "kill_etcd",
    "stop_etcd",
)
#: Stalls last around the leader lease and the executor TTL (both 2 s): shorter, longer, or about as long.
STALL_S = (1.0, 5.0)

TASK_CODE = """\
import os, random, time
t, a, j, p = os.environ['ROTA_TASK_ID'], os.environ['ROTA_ATTEMPT'], os.environ['ROTA_JOB_ID'], os.getpid()
def w(what):
    f = open({log!r}, 'a')
    f.write(f'{{what}} {{t}} {{a}} {{p}} {{j}}\\n')
    f.close()
w('start')
time.sleep(random.uniform(0.05, 0.5))
w('end')
print(t, a, p)
"""


def _wall(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


# -- the report ------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    count: int
    summary: str
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "count": self.count,
            "summary": self.summary,
            "details": self.details[:50],
        }


@dataclass
class ChaosReport:
    seed: int
    faults_requested: int
    base_dir: str
    faults: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)
    jobs_submitted: int = 0
    jobs_acknowledged: int = 0
    jobs_retried: int = 0
    jobs_maybe: int = 0
    jobs_maybe_existing: int = 0
    tasks_total: int = 0
    tasks_completed: int = 0
    task_states: dict[str, int] = field(default_factory=dict)
    fault_phase_s: float = 0.0
    settle_s: float = 0.0
    wall_s: float = 0.0
    checks: list[Check] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    started_at: str = ""  # wall clock of t=0, to match the times here with the processes' logs

    @property
    def faults_by_type(self) -> dict[str, int]:
        counts = Counter(f["type"] for f in self.faults)
        return {t: counts.get(t, 0) for t in FAULT_TYPES}

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "faults_requested": self.faults_requested,
            "faults_injected": len(self.faults),
            "faults_by_type": self.faults_by_type,
            "jobs": {
                "submitted": self.jobs_submitted,
                "acknowledged": self.jobs_acknowledged,
                "acknowledged_on_retry": self.jobs_retried,
                "maybe": self.jobs_maybe,
                "maybe_existing": self.jobs_maybe_existing,
            },
            "tasks": {
                "total": self.tasks_total,
                "completed": self.tasks_completed,
                "states": self.task_states,
            },
            "checks": [c.to_dict() for c in self.checks],
            "stats": self.stats,
            "unexpected_exits": self.unexpected_exits,
            "errors": self.errors,
            "timing_s": {
                "fault_phase": round(self.fault_phase_s, 2),
                "settle": round(self.settle_s, 2),
                "wall": round(self.wall_s, 2),
            },
            "faults": self.faults,
            "events": self.events,
            "base_dir": self.base_dir,
            "t0": self.started_at,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def summary(self) -> str:
        lines = [
            f"chaos: seed {self.seed}, {len(self.faults)}/{self.faults_requested} faults injected "
            f"in {self.fault_phase_s:.1f}s from {self.started_at}; settled in {self.settle_s:.1f}s; "
            f"wall time {self.wall_s:.1f}s",
            "faults: " + ", ".join(f"{t} {n}" for t, n in self.faults_by_type.items()),
            f"jobs: {self.jobs_submitted} submitted, {self.jobs_acknowledged} acknowledged "
            f"({self.jobs_retried} on a retry with the same id), {self.jobs_maybe} maybe "
            f"({self.jobs_maybe_existing} of them exist in etcd)",
            f"tasks: {self.tasks_total} in acknowledged and existing jobs, {self.tasks_completed} completed "
            f"({', '.join(f'{s} {n}' for s, n in sorted(self.task_states.items())) or 'none'})",
        ]
        if self.unexpected_exits:
            lines.append(f"WARNING: {len(self.unexpected_exits)} process(es) exited without being killed:")
            lines += [f"  {u['at']:7.2f}s {u['name']} exit {u['code']}" for u in self.unexpected_exits]
        lines.append("checks:")
        for c in self.checks:
            mark = "INFO" if c.name.startswith("5") else ("PASS" if c.ok else "FAIL")
            lines.append(f"  [{mark}] {c.name}: {c.summary}")
            if not c.ok:
                lines += [f"         {d}" for d in c.details[:10]]
        for e in self.errors:
            lines.append(f"ERROR: {e}")
        lines.append(f"result: {'all checks passed' if self.ok else 'FAILED'}; logs in {self.base_dir}")
        return "\n".join(lines)


# -- the workload ----------------------------------------------------------------------------


def submitter_main(cfg: dict[str, Any]) -> int:
    """The submitter process: submit jobs until SIGTERM, journalling every try and its outcome.

    It runs apart from the fault driver so that the driver never forks a master or an executor
    while another of its threads is inside gRPC (a child forked then can abort before exec).
    """
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    rng = random.Random(cfg["seed"])
    code = TASK_CODE.format(log=cfg["side_log"])
    lo, hi = cfg["interval"]
    t0 = time.monotonic()
    with (
        open(cfg["journal"], "a", buffering=1) as journal,
        Client(cfg["addresses"], timeout=cfg["timeout"]) as c,
    ):

        def note(**fields: Any) -> None:
            journal.write(json.dumps({"t": round(time.monotonic() - t0, 3), **fields}) + "\n")

        while not stopping.wait(rng.uniform(lo, hi)):
            jid = f"chaos-{uuid.UUID(int=rng.getrandbits(128), version=4).hex}"
            # Half the jobs are short Python-function calls: deep credit queues and batches on the
            # executors when a fault lands; the others are processes of 50-500 ms.
            if rng.random() < 0.5:
                count = rng.randint(20, 200)
                task = {
                    "name": "w",
                    "kind": "call",
                    "function": "bench.chaos_task:work",
                    "args": [cfg["side_log"]],
                }
            else:
                count = rng.randint(3, 20)
                task = {"name": "w", "kind": "python", "code": code}
            spec: dict[str, Any] = {
                "name": "chaos",
                "max-attempts": MAX_ATTEMPTS,
                "timeout": "30s",
                "task": [{**task, "count": count}],
            }
            in_spec = rng.random() < 0.5  # the id in the job itself, or given beside it
            if in_spec:
                spec["id"] = jid
            for n in (1, 2):  # a failed submission is retried once with the same id
                note(e="try", id=jid, tasks=count, in_spec=in_spec, n=n)
                try:
                    reply = c.submit_job(spec, job_id=None if in_spec else jid)
                except (RequestError, JobSpecError):
                    raise  # a bad job is the runner's bug, not the cluster's
                except Exception as exc:  # NoMasterReachable, grpc errors: not acknowledged
                    note(e="fail", id=jid, n=n, error=f"{type(exc).__name__}: {str(exc)[:300]}")
                    if n == 1 and not stopping.wait(0.2):
                        continue
                    break
                note(e="ack", id=jid, n=n, created=reply["created"], reply_id=reply["id"])
                break
    return 0


@dataclass
class Submissions:
    """What the submitter's journal says."""

    submitted: dict[str, int]  # job id -> task count
    acknowledged: dict[str, int]
    maybe: dict[str, str]  # job id -> last error (or "no answer")
    retried: int
    not_created: int  # acknowledged with created=false: an earlier try had landed
    wrong_ids: list[str]


def read_journal(path: Path) -> Submissions:
    submitted: dict[str, int] = {}
    acked: dict[str, int] = {}
    last: dict[str, str] = {}
    retried = not_created = 0
    wrong: list[str] = []
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # a line cut short by SIGKILL
        jid = ev["id"]
        if ev["e"] == "try":
            submitted[jid] = int(ev["tasks"])
            last[jid] = "no answer"
        elif ev["e"] == "fail":
            last[jid] = ev["error"]
        elif ev["e"] == "ack":
            acked[jid] = submitted[jid]
            retried += ev["n"] > 1
            not_created += not ev["created"]
            if ev["reply_id"] != jid:
                wrong.append(f"submitted {jid}, the cluster answered {ev['reply_id']}")
    maybe = {j: err for j, err in last.items() if j not in acked}
    return Submissions(submitted, acked, maybe, retried, not_created, wrong)


# -- the fault driver ------------------------------------------------------------------------

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def leader_name(endpoints: list[str]) -> str | None:
    """The name in the leader key, through etcd's JSON gateway of the first member that answers."""
    body = json.dumps({"key": base64.b64encode(keys.LEADER).decode()}).encode()
    for ep in endpoints:
        req = urllib.request.Request(
            ep.rstrip("/") + "/v3/kv/range", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with _http.open(req, timeout=0.5) as resp:
                doc = json.loads(resp.read())
        except (OSError, ValueError):
            continue
        kvs = doc.get("kvs") or []
        if not kvs:
            return None
        return str(json.loads(base64.b64decode(kvs[0]["value"]))["name"])
    return None


def listening(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


class Driver:
    """Injects faults and brings processes back, from the main thread only."""

    def __init__(
        self,
        cluster: LocalCluster,
        etcd: EtcdCluster,
        rng: random.Random,
        report: ChaosReport,
        t0: float,
        say: Callable[[str], None],
    ) -> None:
        self.cluster = cluster
        self.etcd = etcd
        self.rng = rng
        self.report = report
        self.t0 = t0
        self.say = say
        # name -> why it is down: "killed" (restart pending), "stopped" (SIGCONT pending), "starting"
        self.masters_down: dict[str, str] = {}
        self.executors_down: dict[str, str] = {}
        self.etcd_down: dict[int, str] = {}
        self.pending: list[tuple[float, str, Callable[[], None]]] = []
        self._last_master_probe = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, kind: str, target: str, **extra: Any) -> None:
        self.report.events.append({"t": round(self.now(), 3), "event": kind, "target": target, **extra})

    def later(self, delay: float, label: str, action: Callable[[], None]) -> None:
        self.pending.append((time.monotonic() + delay, label, action))

    # -- upkeep ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Run due actions, notice recoveries and unexpected exits."""
        due = [p for p in self.pending if p[0] <= time.monotonic()]
        for p in sorted(due, key=lambda p: p[0]):
            self.pending.remove(p)
            p[2]()
        self._notice_recoveries()
        self._notice_exits()

    def _notice_recoveries(self) -> None:
        for i, why in list(self.etcd_down.items()):
            if why == "starting" and self.etcd.members[i].healthy(timeout=0.2):
                del self.etcd_down[i]
                self.event("up", f"etcd{i}")
        for name, why in list(self.executors_down.items()):
            if why == "starting" and self._executor(name).alive():
                del self.executors_down[name]
        starting = [n for n, why in self.masters_down.items() if why == "starting"]
        if starting and time.monotonic() - self._last_master_probe > 0.2:
            self._last_master_probe = time.monotonic()
            for name in starting:
                m = self.cluster.master(name)
                if m.alive() and listening(m.addr):
                    del self.masters_down[name]
                    self.event("up", name)

    def _notice_exits(self) -> None:
        procs: list[tuple[str, Process, dict[str, str]]] = [
            *((m.name, m, self.masters_down) for m in self.cluster.masters),
            *((e.name, e, self.executors_down) for e in self.cluster.executors),
        ]
        for name, proc, down in procs:
            if down.get(name) != "killed" and proc.proc is not None and not proc.alive():
                self._unexpected(name, proc.proc.returncode, proc.log_tail(30))
                down[name] = "killed"
                self.later(0.5, f"restart {name}", functools.partial(self._restart, proc, down))
        for i, member in enumerate(self.etcd.members):
            if self.etcd_down.get(i) != "killed" and not member.alive():
                self._unexpected(f"etcd{i}", member.returncode, "")
                self.etcd_down[i] = "killed"
                self.later(0.5, f"restart etcd{i}", functools.partial(self._restart_etcd, i))

    def _unexpected(self, name: str, code: int | None, tail: str) -> None:
        self.say(f"[{self.now():7.2f}s] {name} exited by itself (code {code})")
        self.report.unexpected_exits.append(
            {"at": round(self.now(), 3), "name": name, "code": code, "log_tail": tail}
        )

    def _executor(self, name: str) -> Process:
        return next(e for e in self.cluster.executors if e.name == name)

    def _restart(self, proc: Process, down: dict[str, str]) -> None:
        proc.wait(5)
        proc.start()
        down[proc.name] = "starting"
        self.event("restart", proc.name, pid=proc.pid)

    def _restart_etcd(self, i: int) -> None:
        member = self.etcd.restart_member(i, wait=False)
        self.etcd_down[i] = "starting"
        self.event("restart", f"etcd{i}", pid=member.pid)

    def _cont(self, proc: Process, down: dict[str, str]) -> None:
        proc.signal(signal.SIGCONT)
        down.pop(proc.name, None)
        self.event("cont", proc.name, pid=proc.pid)

    # -- faults ---------------------------------------------------------------------------

    def leader(self) -> MasterProcess | None:
        """The master holding the leader key, read from etcd (no gRPC in this process while forking)."""
        name = leader_name(self.etcd.endpoints)
        return next((m for m in self.cluster.masters if m.name == name), None)

    def feasible(self) -> list[str]:
        out = []
        if not self.masters_down:
            out += ["kill_leader", "kill_follower", "stop_leader", "stop_master"]
        if EXECUTORS - len(self.executors_down) >= 2:
            out += ["kill_executor", "stop_executor"]
        if not self.etcd_down:
            out += ["kill_etcd", "stop_etcd"]
        return out

    def inject(self) -> bool:
        """Inject one fault; False when none is possible right now."""
        feasible = self.feasible()
        if not feasible:
            return False
        # The kind injected least so far, so every kind gets its share of a run: when it cannot be
        # injected now (a master or member is still down), wait for it rather than pick another.
        done = self.report.faults_by_type
        fewest = min(done.values())
        choices = [k for k in feasible if done[k] == fewest]
        if not choices:
            return False
        choice = self.rng.choice(choices)
        record: dict[str, Any] | None = getattr(self, f"_{choice}")()
        if record is None:
            return False
        record = {"t": round(self.now(), 3), "type": choice, **record}
        self.report.faults.append(record)
        extra = ", ".join(f"{k} {v}" for k, v in record.items() if k not in ("t", "type", "target"))
        self.say(
            f"[{record['t']:7.2f}s] fault {len(self.report.faults):3d}: {choice} {record['target']} ({extra})"
        )
        return True

    def _kill_master(self, m: MasterProcess, was_leader: bool) -> dict[str, Any]:
        pid = m.pid
        m.signal(signal.SIGKILL)
        self.masters_down[m.name] = "killed"
        delay = self.rng.uniform(0.5, 2.0)
        self.later(delay, f"restart {m.name}", lambda: self._restart(m, self.masters_down))
        return {"target": m.name, "pid": pid, "leader": was_leader, "restart_after_s": round(delay, 2)}

    def _kill_leader(self) -> dict[str, Any] | None:
        leader = self.leader()
        if leader is None or not leader.alive():
            return None
        return self._kill_master(leader, True)

    def _kill_follower(self) -> dict[str, Any] | None:
        leader = self.leader()
        if leader is None:
            return None
        return self._kill_master(self.rng.choice([m for m in self.cluster.masters if m is not leader]), False)

    def _stop_master(self) -> dict[str, Any] | None:
        leader = self.leader()
        m = self.rng.choice(self.cluster.masters)
        return self._stop(m, self.masters_down, {"leader": leader is m})

    def _stop_leader(self) -> dict[str, Any] | None:
        leader = self.leader()
        if leader is None or not leader.alive():
            return None
        return self._stop(leader, self.masters_down, {"leader": True})

    def _stop_etcd(self) -> dict[str, Any] | None:
        i = self.rng.randrange(len(self.etcd.members))
        member = self.etcd.members[i]
        was_leader = member.is_leader()
        member.kill(signal.SIGSTOP)
        self.etcd_down[i] = "stopped"
        pause = self.rng.uniform(*STALL_S)

        def cont() -> None:
            member.kill(signal.SIGCONT)
            self.etcd_down.pop(i, None)
            self.event("cont", f"etcd{i}", pid=member.pid)

        self.later(pause, f"cont etcd{i}", cont)
        return {
            "target": f"etcd{i}",
            "pid": member.pid,
            "raft_leader": was_leader,
            "paused_s": round(pause, 2),
        }

    def _stop(self, proc: Process, down: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
        pid = proc.pid
        proc.signal(signal.SIGSTOP)
        down[proc.name] = "stopped"
        pause = self.rng.uniform(*STALL_S)
        self.later(pause, f"cont {proc.name}", lambda: self._cont(proc, down))
        return {"target": proc.name, "pid": pid, **extra, "paused_s": round(pause, 2)}

    def _up_executors(self) -> list[Process]:
        return [e for e in self.cluster.executors if e.name not in self.executors_down]

    def _kill_executor(self) -> dict[str, Any] | None:
        e = self.rng.choice(self._up_executors())
        pid = e.pid
        e.signal(signal.SIGKILL)
        self.executors_down[e.name] = "killed"
        delay = self.rng.uniform(0.5, 2.0)
        self.later(delay, f"restart {e.name}", lambda: self._restart(e, self.executors_down))
        return {"target": e.name, "pid": pid, "restart_after_s": round(delay, 2)}

    def _stop_executor(self) -> dict[str, Any] | None:
        return self._stop(self.rng.choice(self._up_executors()), self.executors_down, {})

    def _kill_etcd(self) -> dict[str, Any] | None:
        i = self.rng.randrange(len(self.etcd.members))
        member = self.etcd.members[i]
        pid = member.pid
        was_leader = member.is_leader()
        member.kill(signal.SIGKILL)
        self.etcd_down[i] = "killed"
        delay = self.rng.uniform(0.5, 2.0)
        self.later(delay, f"restart etcd{i}", lambda: self._restart_etcd(i))
        return {
            "target": f"etcd{i}",
            "pid": pid,
            "raft_leader": was_leader,
            "restart_after_s": round(delay, 2),
        }

    # -- phases ---------------------------------------------------------------------------

    def run(self, faults: int, deadline: float) -> None:
        next_at = time.monotonic() + self.rng.uniform(0.5, 2.0)
        while len(self.report.faults) < faults and time.monotonic() < deadline:
            self.tick()
            if time.monotonic() >= next_at:
                if self.inject():
                    next_at = time.monotonic() + self.rng.uniform(0.5, 2.0)
                else:
                    next_at = time.monotonic() + 0.2
            time.sleep(0.02)

    def heal(self, timeout: float) -> None:
        """Let the pending restarts and SIGCONTs happen, then wait until everything runs and answers."""
        deadline = time.monotonic() + timeout
        while self.pending or self.masters_down or self.executors_down or self.etcd_down:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"not back after {timeout:g}s: masters {self.masters_down}, "
                    f"executors {self.executors_down}, etcd {self.etcd_down}"
                )
            self.tick()
            time.sleep(0.02)
        for proc in [*self.cluster.masters, *self.cluster.executors]:
            proc.signal(signal.SIGCONT)  # nothing should be stopped now; make sure
        for member in self.etcd.members:
            member.kill(signal.SIGCONT)
        left = max(1.0, deadline - time.monotonic())
        self.cluster.wait_for_leader(timeout=left, all_reachable=True)
        self.cluster.wait_for_executors(EXECUTORS, timeout=max(1.0, deadline - time.monotonic()))


# -- reading the outcome ---------------------------------------------------------------------


@dataclass
class EtcdView:
    jobs: dict[str, dict[str, Any]]  # job id -> record
    tasks: dict[str, dict[str, Any]]  # task id "<job>/<index>" -> record
    task_history: list[Event]
    job_history: list[Event]
    revision: int


def task_id_of(key: bytes) -> str:
    job_id, index = keys.task_of(key)
    return f"{job_id}/{index}"


async def _history(client: EtcdClient, prefix: bytes, target: int, timeout: float) -> list[Event]:
    """Every event under ``prefix`` from revision 1 up to ``target`` (etcd is not compacted here)."""
    events: list[Event] = []
    if target <= 0:
        return events

    async def consume() -> None:
        async for batch in client.watch(prefix, 1, prefix=True):
            events.extend(batch)
            if batch[-1].kv.mod_revision >= target:
                return

    await asyncio.wait_for(consume(), timeout)
    return events


async def _read_etcd(endpoints: list[str], timeout: float = 60.0) -> EtcdView:
    async with EtcdClient(endpoints, timeout=10.0) as client:
        job_kvs, rev = await client.get_prefix(JOBS)
        task_kvs, _ = await client.get_prefix(TASKS, revision=rev)
        task_target = max((kv.mod_revision for kv in task_kvs), default=0)
        job_target = max((kv.mod_revision for kv in job_kvs), default=0)
        task_history = await _history(client, TASKS, task_target, timeout)
        job_history = await _history(client, JOBS, job_target, timeout)
    return EtcdView(
        jobs={kv.key[len(JOBS) :].decode(): json.loads(kv.value) for kv in job_kvs},
        tasks={task_id_of(kv.key): json.loads(kv.value) for kv in task_kvs},
        task_history=task_history,
        job_history=job_history,
        revision=rev,
    )


def read_etcd(endpoints: list[str]) -> EtcdView:
    return asyncio.run(_read_etcd(endpoints))


@dataclass
class SideLog:
    starts: dict[str, set[int]]  # task id -> attempts that started
    ends: dict[str, set[int]]
    bad_lines: int
    lines: int


def read_side_log(path: Path) -> SideLog:
    starts: dict[str, set[int]] = {}
    ends: dict[str, set[int]] = {}
    bad = lines = 0
    text = path.read_text(errors="replace") if path.exists() else ""
    for line in text.splitlines():
        lines += 1
        parts = line.split()
        if len(parts) != 5 or parts[0] not in ("start", "end") or not parts[2].isdigit():
            bad += 1
            continue
        (starts if parts[0] == "start" else ends).setdefault(parts[1], set()).add(int(parts[2]))
    return SideLog(starts, ends, bad, lines)


def check_outcome(
    report: ChaosReport,
    acknowledged: dict[str, int],
    maybe_existing: dict[str, int],
    waited: dict[str, str],
    view: EtcdView,
    side: SideLog,
) -> None:
    """Fill ``report.checks`` from etcd's state and history and the side-effect log."""
    expected = {**maybe_existing, **acknowledged}  # job id -> task count
    task_ids = [f"{j}/{i}" for j, n in expected.items() for i in range(n)]
    report.tasks_total = len(task_ids)
    states = Counter(view.tasks.get(t, {}).get("s", "PENDING") for t in task_ids)
    report.task_states = dict(states)
    report.tasks_completed = sum(states[s] for s in TERMINAL)

    # 1. every acknowledged job (and every maybe-job that exists) exists and finished
    lost, unfinished, bad_end = [], [], []
    for jid, n in expected.items():
        rec = view.jobs.get(jid)
        tag = "" if jid in acknowledged else " (maybe-job that exists)"
        if rec is None:
            lost.append(f"{jid}: no job record in etcd{tag}")
            continue
        state = rec.get("state")
        tasks = [view.tasks.get(f"{jid}/{i}") for i in range(n)]
        if state not in TERMINAL:
            counts = Counter((t or {}).get("s", "PENDING") for t in tasks)
            unfinished.append(f"{jid}: job state {state}, tasks {dict(counts)}, wait: {waited.get(jid)}{tag}")
        elif state == "SUCCEEDED":
            not_done = [i for i, t in enumerate(tasks) if not t or t.get("s") != "SUCCEEDED"]
            if not_done:
                bad_end.append(f"{jid}: SUCCEEDED but tasks {not_done} are not{tag}")
        elif state == "FAILED":
            exhausted = [
                i
                for i, t in enumerate(tasks)
                if t
                and t.get("s") == "FAILED"
                and (t.get("f", t.get("a", 0)) >= MAX_ATTEMPTS or t.get("l", 0) >= MOST_LOST)
            ]
            if not exhausted:
                detail = {i: t for i, t in enumerate(tasks) if t and t.get("s") == "FAILED"}
                bad_end.append(
                    f"{jid}: FAILED though no task failed {MAX_ATTEMPTS} times or was lost {MOST_LOST} "
                    f"times: {detail}{tag}"
                )
        else:
            bad_end.append(f"{jid}: ended {state} though nobody cancelled it{tag}")
    n1 = len(lost) + len(unfinished) + len(bad_end)
    report.checks.append(
        Check(
            "1 no lost jobs",
            n1 == 0,
            n1,
            f"{len(lost)} lost, {len(unfinished)} unfinished, {len(bad_end)} ended wrongly "
            f"(of {len(acknowledged)} acknowledged + {len(maybe_existing)} maybe-jobs that exist)",
            lost + unfinished + bad_end,
        )
    )

    # 2. a terminal task state is written once (and a job's end once)
    twice: list[str] = []
    terminal: dict[bytes, bytes] = {}
    writes_per_key: Counter[bytes] = Counter()
    for ev in view.task_history:
        key = ev.kv.key
        writes_per_key[key] += 1
        if key in terminal:
            if ev.type == "delete" or ev.kv.value != terminal[key]:
                twice.append(
                    f"{task_id_of(key)}: terminal {terminal[key].decode()} then at revision "
                    f"{ev.kv.mod_revision} {ev.type} {ev.kv.value.decode()[:300]}"
                )
            continue
        if ev.type == "put" and json.loads(ev.kv.value).get("s") in TERMINAL:
            terminal[key] = ev.kv.value
    job_end: dict[bytes, str] = {}
    for ev in view.job_history:
        key = ev.kv.key
        state = json.loads(ev.kv.value).get("state") if ev.type == "put" else "<deleted>"
        if key in job_end and state != job_end[key]:
            twice.append(f"job {key.decode()}: ended {job_end[key]}, then written with state {state}")
        elif state in TERMINAL:
            job_end.setdefault(key, state)
    report.checks.append(
        Check(
            "2 terminal state written once",
            not twice,
            len(twice),
            f"{len(twice)} completed twice ({len(view.task_history)} task writes and "
            f"{len(view.job_history)} job writes read back from revision 1 to {view.revision})",
            twice,
        )
    )

    # 2b. counted from the tasks' own side effects: an attempt that wrote its 'end' line completed.
    # A task may complete under two attempts only when the first one's executor was killed or
    # stalled: its result died with it, or its lease ran out while the task itself went on.
    hit = {f["target"] for f in report.faults if f["type"] in ("kill_executor", "stop_executor")}
    lost_with: dict[str, set[str]] = {}
    for ev in view.task_history:
        if ev.type == "put":
            rec = json.loads(ev.kv.value)
            error = str((rec.get("r") or {}).get("error") or "")
            name = error.split()[1] if error.startswith("executor ") else ""
            if error == "its executor is gone":  # a new leader found its lease already ended
                name = str(rec.get("e") or "").rsplit("-", 1)[0]
            if name:
                lost_with.setdefault(task_id_of(ev.kv.key), set()).add(name)
    done_twice = {tid: sorted(a) for tid, a in side.ends.items() if len(a) > 1}
    unexplained = [
        f"{tid}: completed under attempts {a}; executors it was lost with: {sorted(lost_with.get(tid, ()))}"
        for tid, a in done_twice.items()
        if not lost_with.get(tid, set()) & hit
    ]
    report.stats["completed_twice_after_executor_fault"] = len(done_twice) - len(unexplained)
    report.checks.append(
        Check(
            "2b no task completed twice (side effects)",
            not unexplained,
            len(unexplained),
            f"{len(done_twice)} tasks wrote 'end' under two attempts, {len(unexplained)} of them without "
            "a killed or stalled executor to explain it",
            unexplained,
        )
    )

    # 3. no result from a stale attempt was recorded
    stale: list[str] = []
    below_started: list[str] = []
    history_attempts: dict[str, list[int]] = {}
    over_counted: list[str] = []
    for ev in view.task_history:
        if ev.type == "put":
            rec = json.loads(ev.kv.value)
            tid = task_id_of(ev.kv.key)
            history_attempts.setdefault(tid, []).append(int(rec.get("a", 0)))
            if int(rec.get("f", 0)) > MAX_ATTEMPTS or int(rec.get("l", 0)) > MOST_LOST:
                over_counted.append(f"{tid}: etcd record with {rec.get('f')} failures, {rec.get('l')} lost")
    succeeded = [t for t in task_ids if view.tasks.get(t, {}).get("s") == "SUCCEEDED"]
    for tid in succeeded:
        rec = view.tasks[tid]
        a = int(rec.get("a", 0))
        if a not in side.ends.get(tid, set()):
            stale.append(f"{tid}: recorded SUCCEEDED attempt {a} but no 'end' line for it (ends: "
                         f"{sorted(side.ends.get(tid, set()))}, starts: {sorted(side.starts.get(tid, set()))})")  # fmt: skip
        # The result's own word on its attempt: printed by a python task, returned by a call task.
        result = rec.get("r") or {}
        said = str(result.get("stdout") or result.get("value") or "").split()
        if said[:2] != [tid, str(a)]:
            stale.append(f"{tid}: record says attempt {a}, its result says {' '.join(said)!r}")
        earlier = history_attempts.get(tid, [])
        if earlier and max(earlier) > a:
            stale.append(f"{tid}: SUCCEEDED with attempt {a} after etcd held attempt {max(earlier)} "
                         f"(attempts written: {earlier})")  # fmt: skip
        started = side.starts.get(tid, set())
        if started and max(started) > a:
            below_started.append(f"{tid}: recorded attempt {a}, attempts started {sorted(started)}")
    report.stats["succeeded_below_highest_started"] = len(below_started)
    report.stats["succeeded_below_highest_started_examples"] = below_started[:20]
    report.checks.append(
        Check(
            "3 no stale results",
            not stale,
            len(stale),
            f"{len(stale)} stale results among {len(succeeded)} SUCCEEDED tasks "
            f"({len(below_started)} recorded an attempt below the highest started one)",
            stale,
        )
    )

    # 4. attempts stay within bounds
    out_of_bounds = [
        f"{tid}: started attempt {a}"
        for tid, attempts in side.starts.items()
        for a in attempts
        if a > MOST_ATTEMPTS
    ]
    out_of_bounds += [
        f"{tid}: etcd record with attempt {a}" for tid, attempts in history_attempts.items()
        for a in attempts if a > MOST_ATTEMPTS
    ]  # fmt: skip
    out_of_bounds += over_counted
    out_of_bounds += [
        f"{tid}: started attempt {a}" for tid, attempts in side.starts.items() for a in attempts if a < 1
    ]
    max_start = max((a for attempts in side.starts.values() for a in attempts), default=0)
    max_rec = max((a for attempts in history_attempts.values() for a in attempts), default=0)
    report.checks.append(
        Check(
            "4 attempts within bounds",
            not out_of_bounds,
            len(out_of_bounds),
            f"{len(out_of_bounds)} out of bounds (max-attempts {MAX_ATTEMPTS}, lost at most {MOST_LOST}; "
            f"highest attempt started "
            f"{max_start}, highest in etcd {max_rec})",
            out_of_bounds,
        )
    )

    # 5. statistic: tasks that ran more than once
    reran = {tid: sorted(a) for tid, a in side.starts.items() if len(a) > 1}
    never_started = [t for t in succeeded if t not in side.starts]
    report.stats.update(
        {
            "tasks_started_under_several_attempts": len(reran),
            "task_runs": sum(len(a) for a in side.starts.values()),
            "side_log_lines": side.lines,
            "side_log_bad_lines": side.bad_lines,
            "succeeded_without_start_line": len(never_started),
            "rerun_examples": dict(list(reran.items())[:20]),
        }
    )
    report.checks.append(
        Check(
            "5 tasks run more than once",
            True,
            len(reran),
            f"{len(reran)} tasks started under several attempts "
            f"({sum(len(a) for a in side.starts.values())} runs of {len(side.starts)} tasks)",
        )
    )


# -- the run ---------------------------------------------------------------------------------


def run_chaos(
    base_dir: str | Path,
    faults: int,
    seed: int,
    duration_limit: float,
    settle_timeout: float = 120.0,
    submit_interval: tuple[float, float] = (0.3, 1.2),
    submit_timeout: float = 8.0,
    say: Callable[[str], None] | None = None,
) -> ChaosReport:
    """Run a chaos round under ``base_dir`` and return what happened and what the checks found.

    ``duration_limit`` bounds the fault phase (it ends early with fewer faults if need be);
    ``settle_timeout`` bounds the wait for every acknowledged job afterwards.
    """
    say = say or (lambda _msg: None)
    base = Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    side_log = base / "side-effects.log"
    report = ChaosReport(seed=seed, faults_requested=faults, base_dir=str(base))
    wall0 = time.monotonic()
    rng = random.Random(seed)
    etcd = EtcdCluster(base / "etcd", size=3)
    cluster: LocalCluster | None = None
    submitter: Process | None = None
    journal = base / "submissions.jsonl"
    try:
        etcd.start()
        cluster = LocalCluster(base, etcd_endpoints=etcd.endpoints, leader_lease_ttl=LEADER_LEASE_TTL)
        cluster.start()
        for _ in range(EXECUTORS):
            cluster.add_executor(slots=EXECUTOR_SLOTS, args=EXECUTOR_ARGS)
        cluster.wait_for_executors(EXECUTORS, timeout=60)
        say(f"cluster up in {time.monotonic() - wall0:.1f}s: etcd {','.join(etcd.endpoints)}, "
            f"masters {cluster.addresses}; logs in {base}")  # fmt: skip

        cfg = {
            "addresses": cluster.addresses,
            "side_log": str(side_log),
            "journal": str(journal),
            "seed": seed + 1,
            "interval": list(submit_interval),
            "timeout": submit_timeout,
        }
        argv = [sys.executable, str(Path(__file__).resolve()), "--submitter", json.dumps(cfg)]
        submitter = Process("submitter", argv, base / "submitter.log")
        submitter.start()
        t0 = time.monotonic()
        report.started_at = _wall(time.time())
        driver = Driver(cluster, etcd, rng, report, t0, say)
        driver.run(faults, t0 + duration_limit)
        report.fault_phase_s = time.monotonic() - t0
        say(f"[{driver.now():7.2f}s] {len(report.faults)} faults injected; stopping the submitter")
        if not submitter.alive():
            report.errors.append(f"the submitter exited early:\n{submitter.log_tail()}")
        submitter.signal(signal.SIGTERM)  # it ends after its current submission; faults play out meanwhile
        try:
            driver.heal(timeout=90)
            say(f"[{driver.now():7.2f}s] every master, executor and etcd member runs again")
        except TimeoutError as exc:  # still check what can be checked
            report.errors.append(f"the cluster did not recover: {exc}")
            say(f"[{driver.now():7.2f}s] the cluster did not recover: {exc}")
        if submitter.wait(2 * submit_timeout + 5) is None:
            report.errors.append("the submitter did not stop on SIGTERM")
            submitter.stop(timeout=1)

        # Wait for every job that was acknowledged, and for every maybe-job that exists.
        s0 = time.monotonic()
        subs = read_journal(journal)
        report.errors += subs.wrong_ids
        existing = read_etcd(etcd.endpoints).jobs
        maybe_existing = {j: subs.submitted[j] for j in subs.maybe if j in existing}
        report.jobs_submitted = len(subs.submitted)
        report.jobs_acknowledged = len(subs.acknowledged)
        report.jobs_retried = subs.retried
        report.jobs_maybe = len(subs.maybe)
        report.jobs_maybe_existing = len(maybe_existing)
        report.stats["acknowledged_as_existing"] = subs.not_created
        report.stats["maybe_errors"] = dict(list(subs.maybe.items())[:20])
        waited: dict[str, str] = {}
        deadline = time.monotonic() + settle_timeout
        with Client(cluster.addresses, timeout=10.0) as c:
            for jid in [*subs.acknowledged, *maybe_existing]:
                left = deadline - time.monotonic()
                if left <= 0:
                    waited[jid] = "not waited for: settle timeout used up"
                    continue
                try:
                    waited[jid] = c.wait_job(jid, timeout=left)["state"]
                except (TimeoutError, NoMasterReachable, RequestError) as exc:
                    waited[jid] = f"{type(exc).__name__}: {str(exc)[:200]}"
        report.settle_s = time.monotonic() - s0
        done = sum(1 for s in waited.values() if s in TERMINAL)
        say(f"[{driver.now():7.2f}s] {done}/{len(waited)} jobs ended within {report.settle_s:.1f}s; checking")
        time.sleep(0.5)  # let the last writes land before history is read

        view = read_etcd(etcd.endpoints)
        check_outcome(report, subs.acknowledged, maybe_existing, waited, view, read_side_log(side_log))
    except Exception as exc:
        report.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if submitter is not None:
            submitter.stop(timeout=5)
        if cluster is not None:
            cluster.stop()
        etcd.stop()
        report.wall_s = time.monotonic() - wall0
    return report


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--submitter":
        return submitter_main(json.loads(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--faults", type=int, default=400, help="faults to inject, spread evenly over the kinds (default 400)"
    )
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "chaos.json"))
    ap.add_argument("--base-dir", help="where processes keep data and logs (default: a fresh temp dir)")
    ap.add_argument("--duration-limit", type=float, default=1500.0, help="bound on the fault phase, seconds")
    ap.add_argument("--settle-timeout", type=float, default=120.0, help="bound on the final wait, seconds")
    ap.add_argument("--submit-interval", default="0.3,1.2", help="seconds between submissions: MIN,MAX")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir even when every check passes")
    args = ap.parse_args()
    lo, hi = (float(x) for x in args.submit_interval.split(","))
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    base = Path(args.base_dir) if args.base_dir else Path(tempfile.mkdtemp(prefix="rota-chaos-"))
    report = run_chaos(
        base,
        faults=args.faults,
        seed=seed,
        duration_limit=args.duration_limit,
        settle_timeout=args.settle_timeout,
        submit_interval=(lo, hi),
        say=lambda msg: print(msg, flush=True),
    )
    print(report.summary())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2))
    print(f"wrote {out}")
    if report.ok and not args.base_dir and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Link faults under load on a cluster of hosts (devtools/hosts.py), checked by the history
checker (devtools/history.py): the partition tests and ``make partitions`` drive this.

A ``FaultRun`` keeps submitting small jobs of checked shell tasks while faults come and go, then
waits for every acknowledged job and gives the checker's verdicts. Each fault is held for
``hold`` seconds (past the executor lease TTL of 5 s, so a cut-off executor is given up), healed,
and timed: when the old leader's term last wrote, when another leader answered, when a cut-off
executor's tasks started elsewhere.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from rota.client.api import Client, NoMasterReachable, RequestError
from rota.devtools import history
from rota.devtools.hosts import Network
from rota.devtools.localcluster import LocalCluster
from rota.devtools.recorder import WriteOrderRecorder

#: How long each checked task runs.
TASK_SECONDS = 0.5
#: How long two attempts of a task may seem to overlap: a beat, and as much again for scheduling.
WINDOW = 2 * history.BEAT


#: The faults, and what each does.
FAULTS = {
    "leader-isolated": "the leader's host is cut off from every host and from clients",
    "leader-from-majority": "the leader (and its etcd member) lose the other masters, still reaching executors",
    "leader-one-way": "what the leader sends to the other masters is lost; what they send it arrives",
    "executor-from-masters": "an executor loses every master and keeps running its tasks",
    "follower-isolated": "a master that is not the leader is cut off from everyone",
    "loss": "every host loses a fifth of the packets it sends",
}


class FaultRun:
    def __init__(self, cluster: LocalCluster, net: Network, effects: Path, submit_every: float = 0.4) -> None:
        self.cluster = cluster
        self.net = net
        self.effects = effects
        self.submit_every = submit_every
        self.acked: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._submitter = threading.Thread(target=self._submit_loop, daemon=True)
        self.recorder = WriteOrderRecorder(cluster.etcd_endpoints, cluster.tls)
        self.figures: list[dict[str, Any]] = []

    def __enter__(self) -> FaultRun:
        self.recorder.start()
        self._submitter.start()
        # The first leader's term began before the recording: the check counts it only once one
        # of its writes is seen, so no fault may come before (a leader that answers sooner let
        # the first fault cut it off before the first submission reached it).
        deadline = time.monotonic() + 30
        while not self.recorder.orders:
            if time.monotonic() > deadline:
                raise TimeoutError("no write of the leader recorded within 30 s of the start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._submitter.join(30)
        self.net.heal()
        if self.recorder.running:
            self.recorder.stop()

    def _submit_loop(self) -> None:
        command = history.task_command(str(self.effects), TASK_SECONDS)
        with self.cluster.client(timeout=10) as c:
            i = 0
            while not self._stop.is_set():
                job_id = f"p{i}"
                i += 1
                job = {
                    "name": job_id,
                    "id": job_id,
                    "task": [{"name": "t", "kind": "shell", "command": command, "count": 2}],
                }
                try:
                    c.submit_job(job)
                    self.acked.append(job_id)
                except (NoMasterReachable, RequestError):
                    self.refused += 1  # not acknowledged: nothing is promised for it
                self._stop.wait(self.submit_every)

    def _leader(self, exclude: str = "") -> tuple[str, str]:
        """(leader name, term) as a master other than ``exclude`` sees it, or ("", "")."""
        addrs = ",".join(m.addr for m in self.cluster.masters if m.name != exclude)
        try:
            with Client(addrs, timeout=1.0, token=self.cluster.admin_token or "", tls=self.cluster.tls) as c:
                leader = c.cluster_status()["leader"]
                return (leader["name"], "") if leader else ("", "")
        except NoMasterReachable:
            return "", ""

    def _effects(self) -> list[history.Effect]:
        return history.parse_effects(self.effects.read_text()) if self.effects.exists() else []

    def fault(self, kind: str, hold: float = 7.0, target: str = "") -> dict[str, Any]:
        """Apply one fault for ``hold`` seconds, heal it, and return its figures."""
        leader = self.cluster.wait_for_leader(timeout=60)
        executor = target or random.choice([e.name for e in self.cluster.executors])
        others = [m.name for m in self.cluster.masters if m.name != leader]
        last_term = self.recorder.orders[-1][1].split("/")[0] if self.recorder.orders else ""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(FAULTS)}")
        t0 = time.time()
        running_there = {e.task for e in self._effects() if e.where == executor and e.kind == "start"} - {
            e.task for e in self._effects() if e.where == executor and e.kind == "done"
        }
        self._apply(kind, leader, others, executor)
        new_leader_at = None
        while time.time() - t0 < hold:
            if new_leader_at is None and kind.startswith("leader"):
                name, _ = self._leader(exclude=leader)
                if name and name != leader:
                    new_leader_at = time.time()
            time.sleep(0.05)
        self.net.heal()
        healed = time.time()
        figures: dict[str, Any] = {"fault": kind, "leader": leader, "hold_s": hold}
        if kind.startswith("leader"):
            n = len(self.recorder.times)  # the recorder's thread appends an order, then its time
            orders, times = self.recorder.orders[:n], self.recorder.times[:n]
            old = [t for (_, v), t in zip(orders, times, strict=True) if v.startswith(last_term)]
            figures["old_leader_last_write_s"] = round(max(old) - t0, 3) if old and last_term else None
            figures["new_leader_after_s"] = round(new_leader_at - t0, 3) if new_leader_at else None
        if kind == "executor-from-masters":
            figures["executor"] = executor
            moved: dict[str, float] = {}
            for e in self._effects():
                if e.task in running_there and e.kind == "start" and e.where != executor and e.t > t0:
                    moved[e.task] = min(moved.get(e.task, e.t), e.t)
            figures["tasks_running_there"] = len(running_there)
            figures["ran_elsewhere_after_s"] = round(max(moved.values()) - t0, 3) if moved else None
        figures["healed_at_s"] = round(healed - t0, 3)
        self.figures.append(figures)
        return figures

    def _apply(self, kind: str, leader: str, others: list[str], executor: str) -> None:
        net = self.net
        if kind == "leader-isolated":
            net.isolate(leader)
        elif kind in ("leader-from-majority", "leader-one-way"):
            for other in others:
                net.cut(leader, other, one_way=kind == "leader-one-way")
        elif kind == "executor-from-masters":
            for m in self.cluster.masters:
                net.cut(executor, m.name)
        elif kind == "follower-isolated":
            net.isolate(random.choice(others))
        elif kind == "loss":
            for host in net.hosts:
                net.lose(host, 20)

    def finish(self, timeout: float = 180.0) -> list[history.Verdict]:
        """Stop submitting, wait for every acknowledged job, and check the history."""
        self._stop.set()
        self._submitter.join(30)
        final: dict[str, dict[str, Any] | None] = {}
        deadline = time.monotonic() + timeout
        with self.cluster.client(timeout=30) as c:
            for job_id in self.acked:
                try:
                    final[job_id] = c.wait_job(job_id, timeout=max(1.0, deadline - time.monotonic()))
                except RequestError:
                    final[job_id] = None
                except TimeoutError:
                    final[job_id] = c.get_job(job_id)
        time.sleep(0.5)  # the last write orders reach the recorder
        orders = self.recorder.stop()
        leaders = 1 + sum(1 for f in self.figures if f.get("new_leader_after_s") is not None)
        return history.check(self.acked, final, self._effects(), orders, WINDOW, leaders)

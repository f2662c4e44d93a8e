"""When the leader may answer cluster-status from what it holds: only as a ready leader whose lease
etcd renewed lately. A leader that stalled or lost etcd reads etcd like a follower (no I/O here:
nothing is dialled until a call is made)."""

from __future__ import annotations

import time

from rota.metastore.client import EtcdClient
from rota.metastore.election import Election
from rota.metastore.session import Session
from rota.scheduler.leader import LeaderRuntime
from rota.scheduler.placement import ExecutorSlot


def _runtime(ttl: float = 3.0) -> tuple[LeaderRuntime, Session]:
    client = EtcdClient(["127.0.0.1:1"])
    session = Session(client, ttl)
    rt = LeaderRuntime(client, Election(client, b"/leader", session), on_fenced=lambda: None)
    for ex_id in ("e0", "e1"):
        rt.core.attach_executor(
            ExecutorSlot(id=ex_id, name=ex_id, addr=f"{ex_id}:1", slots=1, kinds=frozenset(["call"]))
        )
    return rt, session


def _renewed(session: Session, ago: float) -> None:
    session._renewed_at = time.monotonic() - ago


def test_a_ready_leader_renewed_just_now_counts_its_executors() -> None:
    rt, session = _runtime()
    rt.ready = True
    _renewed(session, 0.2)
    assert rt.executors_known() == 2


def test_a_leader_not_ready_yet_reads_etcd() -> None:
    rt, session = _runtime()
    _renewed(session, 0.2)
    assert rt.executors_known() is None


def test_a_leader_back_from_a_stall_reads_etcd() -> None:
    rt, session = _runtime()
    rt.ready = True
    _renewed(session, 2.5)  # frozen past a missed renewal: another leader may be near
    assert rt.executors_known() is None


def test_a_leader_whose_lease_is_lost_reads_etcd() -> None:
    rt, session = _runtime()
    rt.ready = True
    _renewed(session, 0.2)
    session.lost.set()
    assert rt.executors_known() is None

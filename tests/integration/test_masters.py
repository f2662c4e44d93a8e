"""Three real masters with real etcd: election, failover, fencing, external etcd (issue 2)."""

from __future__ import annotations

import signal
import time

import pytest

from rota.client.api import Client
from rota.client.errors import NoMasterReachable

pytestmark = pytest.mark.etcd


def roles(cluster) -> dict[str, str]:
    out = {}
    for m in cluster.masters:
        with Client(m.addr, timeout=2) as c:
            out[m.name] = c.master_info(m.addr)["role"]
    return out


def test_three_masters_elect_one_leader_and_all_agree(local_cluster):
    cluster = local_cluster()
    assert list(roles(cluster).values()).count("leader") == 1
    answers = []
    for m in cluster.masters:
        with Client(m.addr, timeout=5) as c:
            answers.append(c.cluster_status())
    leaders = {a["leader"]["name"] for a in answers}
    assert len(leaders) == 1, answers
    leader = leaders.pop()
    assert roles(cluster)[leader] == "leader"
    for a in answers:
        assert a["etcd"]["healthy"] is True
        assert len(a["etcd"]["endpoints"]) == 3
        assert sorted((m["name"], m["role"]) for m in a["masters"]) == sorted(
            (m.name, "leader" if m.name == leader else "follower") for m in cluster.masters
        )


def test_sigkill_leader_then_restart_rejoins_as_follower(local_cluster):
    cluster = local_cluster()
    old = cluster.leader()
    old.signal(signal.SIGKILL)
    old.wait(5)
    new = cluster.wait_for_leader(exclude=old.name, timeout=15)
    assert new != old.name  # how fast: bench/failover.py

    old.start()
    cluster.wait_for_leader(timeout=30, all_reachable=True)
    with Client(old.addr, timeout=5) as c:
        info = c.master_info(old.addr)
        status = c.cluster_status()
    assert info["role"] == "follower"
    assert info["leader"]["name"] == new
    assert status["leader"]["name"] == new
    assert {m["name"]: m["role"] for m in status["masters"]}[old.name] == "follower"


def test_sigterm_leader_resigns_at_once(local_cluster):
    # A 30 s lease: only a resignation explains a new leader within a few seconds.
    cluster = local_cluster(leader_lease_ttl="30s")
    old = cluster.leader()
    old.signal(signal.SIGTERM)
    new = cluster.wait_for_leader(exclude=old.name, timeout=20)
    assert old.wait(10) == 0, old.log_tail()
    assert "resigned leadership" in old.log_path.read_text()
    assert new != old.name


def test_sigstopped_leader_is_fenced_and_steps_down(local_cluster):
    cluster = local_cluster(leader_lease_ttl="2s")
    old = cluster.leader()
    with Client(old.addr, timeout=5) as c:
        old_term = c.master_info(old.addr)["term"]
    assert old_term > 0
    old.signal(signal.SIGSTOP)
    try:
        new = cluster.wait_for_leader(exclude=old.name, timeout=20)
    finally:
        old.signal(signal.SIGCONT)
    new_addr = cluster.master(new).addr
    deadline = time.monotonic() + 15
    while True:
        with Client(old.addr, timeout=5) as c:
            info = c.master_info(old.addr)
        if info["role"] == "follower" and info["fenced_rejections"] >= 1:
            break
        assert time.monotonic() < deadline, f"old leader did not step down: {info}\n{old.log_tail()}"
        time.sleep(0.1)
    assert info["term"] == 0
    assert "fenced write rejected" in old.log_path.read_text()
    with Client(new_addr, timeout=5) as c:
        new_info = c.master_info(new_addr)
    assert new_info["role"] == "leader" and new_info["term"] > old_term


def test_a_client_stops_knocking_on_a_stalled_master(local_cluster):
    """A stopped master keeps its connection open and answers nothing: a client that used it goes
    to the others from then on, within its timeout, instead of timing out on it call after call."""
    cluster = local_cluster()
    leader = cluster.leader()
    stalled = next(m for m in cluster.masters if m is not leader)
    order = [stalled.addr] + [m.addr for m in cluster.masters if m is not stalled]
    outcomes = []
    with Client(",".join(order), timeout=3) as c:
        assert c.cluster_status()["leader"]["name"] == leader.name  # its channel to `stalled` is up
        stalled.signal(signal.SIGSTOP)
        try:
            for _ in range(4):
                try:
                    outcomes.append(c.cluster_status()["leader"]["name"])
                except NoMasterReachable as e:
                    outcomes.append(f"failed: {e}")
        finally:
            stalled.signal(signal.SIGCONT)
    # The first call may spend its time on the stalled master; every later one starts elsewhere.
    assert outcomes[1:] == [leader.name] * 3, outcomes


def test_external_etcd_survives_a_member_kill(local_cluster, etcd_cluster):
    cluster = local_cluster(etcd_endpoints=etcd_cluster.endpoints)
    first = cluster.wait_for_leader()
    etcd_cluster.members[0].kill(signal.SIGKILL)
    with cluster.client(timeout=10) as c:
        deadline = time.monotonic() + 15
        while True:
            status = c.cluster_status()
            if status["etcd"]["healthy"] and status["leader"]:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
    assert status["leader"]["name"] == first
    # Elections still work on the two remaining members.
    cluster.master(first).signal(signal.SIGKILL)
    assert cluster.wait_for_leader(exclude=first, timeout=20) != first


def test_the_leader_and_followers_count_executors_alike(local_cluster, wait_until):
    # The leader answers from what it holds, the followers read etcd: both must say the same.
    cluster = local_cluster(executors=2)

    def counts() -> list[int]:
        out = []
        for m in cluster.masters:
            with Client(m.addr, timeout=5) as c:
                out.append(c.cluster_status()["executors"])
        return out

    wait_until("every master to count two executors", lambda: counts() == [2, 2, 2], timeout=10)
    cluster.executors[0].signal(signal.SIGKILL)
    wait_until("every master to count one executor", lambda: counts() == [1, 1, 1], timeout=30)

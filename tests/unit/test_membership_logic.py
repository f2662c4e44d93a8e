"""Membership checks (common/membership.py): names, peer URLs, and when adding or removing a member
would cost the cluster its quorum. Pure logic, no etcd."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rota.common import membership


@dataclass(frozen=True)
class M:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    healthy: bool = True

    @property
    def started(self) -> bool:
        return bool(self.name)


def cluster(*healthy: bool) -> list[M]:
    return [M(i + 1, f"m{i}", (f"https://10.0.0.{i + 1}:8291",), ok) for i, ok in enumerate(healthy)]


@pytest.mark.parametrize("size, need", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_quorum(size: int, need: int) -> None:
    assert membership.quorum(size) == need


def test_names_follow_the_masters_rule() -> None:
    assert membership.check_name("m3.b_c-d") == "m3.b_c-d"
    for bad in ["", "-m", ".m", "a b", "m/3", "é", "x" * 65]:
        with pytest.raises(ValueError):
            membership.check_name(bad)


def test_peer_urls_are_dialable_and_in_the_clusters_scheme() -> None:
    assert membership.check_peer_url("https://10.0.0.8:8291/") == "https://10.0.0.8:8291"
    assert membership.check_peer_url("http://[::1]:8291") == "http://[::1]:8291"
    for bad in [
        "10.0.0.8:8291",
        "ftp://h:1",
        "https://h",
        "https://h:0",
        "https://h:1/x",
        "https://0.0.0.0:1",
    ]:
        with pytest.raises(ValueError):
            membership.check_peer_url(bad)
    with pytest.raises(ValueError, match="speak https"):
        membership.check_peer_url("http://10.0.0.8:8291", "https")


def test_removal_keeps_a_quorum_of_what_is_left() -> None:
    assert membership.removal_refusal(cluster(True, True, True), 2) is None
    # The dead one may go; a live one may not while another is dead (one of two would answer).
    assert membership.removal_refusal(cluster(True, True, False), 3) is None
    refusal = membership.removal_refusal(cluster(True, True, False), 1)
    assert refusal and "need 2 healthy" in refusal and "m2" in refusal
    assert membership.removal_refusal(cluster(True, True), 2) is None
    assert "last member" in (membership.removal_refusal(cluster(True), 1) or "")
    # Five members, two dead: removing a live one leaves 2 of 4 answering.
    assert membership.removal_refusal(cluster(True, True, True, False, False), 1)
    assert membership.removal_refusal(cluster(True, True, True, False, False), 4) is None


def test_addition_needs_a_quorum_of_the_bigger_cluster_and_no_member_pending() -> None:
    assert membership.addition_refusal(cluster(True, True, True)) is None
    assert "remove the dead members first" in (membership.addition_refusal(cluster(True, True, False)) or "")
    assert membership.addition_refusal(cluster(True, True)) is None
    pending = [*cluster(True, True, True), M(99, "", ("https://10.0.0.9:8291",), False)]
    assert "never started" in (membership.addition_refusal(pending) or "")


def test_duplicates_and_finding_members() -> None:
    members = cluster(True, True, True)
    assert "exists already" in (membership.duplicate(members, "m1", "https://10.0.0.9:8291") or "")
    assert "peer URL" in (membership.duplicate(members, "m9", "https://10.0.0.2:8291") or "")
    assert membership.duplicate(members, "m9", "https://10.0.0.9:8291") is None
    assert membership.find(members, "m2") == members[2]
    assert membership.find(members, "2") == members[1]  # by hex id
    assert membership.find(members, "m9") is None and membership.find(members, "zz") is None


def test_initial_cluster_names_the_new_member() -> None:
    members = [*cluster(True, True), M(0xAB, "", ("https://10.0.0.9:8291",), False)]
    assert membership.initial_cluster(members, 0xAB, "m3") == (
        "m0=https://10.0.0.1:8291,m1=https://10.0.0.2:8291,m3=https://10.0.0.9:8291"
    )
    flags = membership.master_flags("m3", "https://10.0.0.9:8291", "m3=https://10.0.0.9:8291")
    assert flags[flags.index("--initial-cluster-state") + 1] == "existing"


def test_a_single_healthy_member_may_grow_but_a_dead_single_one_may_not() -> None:
    assert membership.addition_refusal(cluster(True)) is None
    assert "remove the dead members first" in (membership.addition_refusal(cluster(False)) or "")

"""Online membership (issue 17): a fourth master added to a running cluster, a follower removed, a
dead master replaced by one on a new host; each master in a network namespace of its own, over
mutual TLS with tokens, as on separate hosts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from rota.client.api import Client
from rota.client.errors import AccessDenied, RequestError

pytestmark = pytest.mark.etcd

JOB = {"name": "member-check", "task": [{"name": "t", "kind": "shell", "command": ["true"]}]}


def start(local_cluster, network):
    return local_cluster(network=network, tls=True, tokens=True, executors=1)


def job_runs(cluster) -> None:
    with cluster.client(timeout=20) as c:
        doc = c.run_job(JOB, timeout=60)
    assert doc["state"] == "SUCCEEDED", doc


def settled(cluster, c, names: set[str]):
    """A check that the masters ``names`` are all listed and answering, and their etcd members all
    started and healthy, and nothing else is."""

    def check():
        s = c.cluster_status()
        masters = {m["name"]: m["role"] for m in s["masters"]}
        members = c.list_members()
        ok = (
            set(masters) == names
            and "unreachable" not in masters.values()
            and s["leader"] is not None
            and {m["name"] for m in members} == names
            and all(m["started"] and m["healthy"] for m in members)
        )
        return (s, members) if ok else None

    return check


def cli(cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``master-client`` as an operator runs it, with the admin token and the cluster's TLS files."""
    tls = cluster.tls
    argv = [
        sys.executable, "-m", "rota.client.cli", "--master-addr", cluster.addresses,
        "--token-file", str(cluster.base_dir / "admin.token"),
        "--tls-ca", tls.ca, "--tls-cert", tls.cert, "--tls-key", tls.key, *args,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def join(cluster, c, name: str) -> dict:
    """``member add`` a master on a new host, then start it as the reply says."""
    _, peer_url = cluster.plan_master(name)
    reply = c.add_member(name, peer_url)
    assert reply["initial_cluster_state"] == "existing"
    assert f"{name}={peer_url}" in reply["initial_cluster"].split(",")
    assert reply["flags"][reply["flags"].index("--initial-cluster-state") + 1] == "existing"
    assert not reply["added"]["started"]
    # The same add again (its first answer lost, say) answers the same, adding nothing more.
    again = c.add_member(name, peer_url)
    assert again["initial_cluster"] == reply["initial_cluster"] and len(again["members"]) == len(
        reply["members"]
    )
    cluster.add_master(name, reply["initial_cluster"])
    return reply


def test_a_fourth_master_joins_a_running_cluster(network, local_cluster, wait_until):
    cluster = start(local_cluster, network)
    with cluster.client(timeout=20) as c:
        before = c.list_members()
        assert len(before) == 3 and all(m["healthy"] for m in before)
        assert sum(m["leader"] for m in before) == 1 and sum(m["raft_leader"] for m in before) == 1
        t0 = time.monotonic()
        reply = join(cluster, c, "m3")
        assert len(reply["initial_cluster"].split(",")) == 4
        s, members = wait_until("m3 to join", settled(cluster, c, {"m0", "m1", "m2", "m3"}), timeout=40)
        print(f"m3 joined and was listed healthy {time.monotonic() - t0:.1f}s after member add")
        assert {m["name"]: m["role"] for m in s["masters"]}["m3"] == "follower"
        assert len(s["etcd"]["members"]) == 4
        # A taken name or peer URL, and a role that may not, are refused; nothing is added.
        with pytest.raises(RequestError, match="exists already"):
            c.add_member("m3", "https://10.255.0.1:8291")
        with pytest.raises(RequestError, match="peer URL"):
            c.add_member("m9", cluster.master("m3").peer_url)
        with pytest.raises(RequestError, match="bad member name"):
            c.add_member("-x", "https://10.255.0.1:8291")
        reader, _ = c.create_token("read", "member-reader")
    with cluster.client(token=reader) as r, pytest.raises(AccessDenied):
        r.list_members()
    # A client that knows only the new master works through it.
    with Client(cluster.master("m3").addr, token=cluster.admin_token, tls=cluster.tls) as c:
        assert len(c.list_members()) == 4
        assert c.cluster_status()["leader"] is not None
    job_runs(cluster)


def test_removing_a_follower_drops_it_and_it_stops(network, local_cluster, wait_until):
    cluster = start(local_cluster, network)
    leader = cluster.wait_for_leader()
    follower = next(m for m in cluster.masters if m.name != leader)
    with cluster.client(timeout=20) as c:
        with pytest.raises(RequestError, match="no etcd member 'm7'") as e:
            c.remove_member("m7")
        assert e.value.not_found
        reply = c.remove_member(follower.name)
        assert reply["removed"]["name"] == follower.name and len(reply["members"]) == 2
        # Its master learns that its member was removed and stops by itself, cleanly.
        assert follower.wait(15) == 0, follower.log_tail()
        assert "was removed from the cluster" in follower.log_path.read_text()
        cluster.drop_master(follower.name)
        rest = {m.name for m in cluster.masters}
        s, members = wait_until("the cluster to settle", settled(cluster, c, rest), timeout=20)
        assert len(members) == 2 and follower.name not in {m["name"] for m in s["masters"]}
    job_runs(cluster)


def test_a_dead_master_is_replaced_on_a_new_host(network, local_cluster, wait_until):
    cluster = start(local_cluster, network)
    leader = cluster.wait_for_leader()
    dead, other = [m for m in cluster.masters if m.name != leader]
    dead.signal(signal.SIGKILL)
    assert dead.wait(5) is not None
    with cluster.client(timeout=20) as c:
        wait_until(
            "the dead member to show",
            lambda: not {m["name"]: m for m in c.list_members()}[dead.name]["healthy"],
        )
        # With one member dead, removing a live one would leave one of two answering: refused. Adding
        # first would make four members with two answering: refused too (remove the dead one first).
        with pytest.raises(RequestError, match="need 2 healthy for a quorum") as e:
            c.remove_member(other.name)
        assert not e.value.not_found
        with pytest.raises(RequestError, match="remove the dead members first"):
            c.add_member("m9", "https://10.255.0.1:8291")
        p = cli(cluster, "member", "remove", dead.name)
        assert p.returncode == 0 and f"removed member {dead.name}" in p.stdout, p.stderr
        cluster.drop_master(dead.name)
        t0 = time.monotonic()
        # Through the CLI: the human form names the flags, --json gives them to use.
        _, peer_url = cluster.plan_master("m3")
        p = cli(cluster, "--json", "member", "add", "m3", peer_url)
        assert p.returncode == 0, p.stderr
        reply = json.loads(p.stdout)
        cluster.add_master("m3", reply["initial_cluster"])
        assert dead.name not in reply["initial_cluster"]
        s, members = wait_until(
            "the replacement to join", settled(cluster, c, {leader, other.name, "m3"}), timeout=40
        )
        print(f"replacement m3 joined {time.monotonic() - t0:.1f}s after member add")
        assert cluster.master("m3").host is not None and cluster.master("m3").host.ip != dead.host.ip
        assert len(members) == 3
    p = cli(cluster, "member", "list")
    assert p.returncode == 0 and "m3" in p.stdout and "UNHEALTHY" not in p.stdout, p.stdout + p.stderr
    p = cli(cluster, "member", "add", "m3", "https://10.255.0.1:8291")
    assert p.returncode == 2 and "exists already" in p.stderr, p.stderr
    job_runs(cluster)

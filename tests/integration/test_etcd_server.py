"""The etcd launcher against real etcd members: cluster start, replication, member loss, dying with the
parent, and refusing unsafe binaries."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rota.common.procs import free_ports
from rota.devtools.etcdcluster import EtcdCluster
from rota.metastore.etcd_server import (
    EtcdBinaryError,
    EtcdMember,
    EtcdStartError,
    MemberConfig,
    check_etcd_version,
    find_etcd_binary,
)

pytestmark = pytest.mark.etcd

REPO = Path(__file__).resolve().parents[2]
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _post(endpoint: str, path: str, body: dict[str, str], timeout: float = 2.0) -> dict[str, object]:
    req = urllib.request.Request(
        endpoint + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with _http.open(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def kv_put(endpoint: str, key: str, value: str, timeout: float = 2.0) -> None:
    _post(endpoint, "/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, timeout)


def kv_get(endpoint: str, key: str) -> str | None:
    kvs = _post(endpoint, "/v3/kv/range", {"key": _b64(key)}).get("kvs")
    if not kvs:
        return None
    assert isinstance(kvs, list)
    return base64.b64decode(kvs[0]["value"]).decode()


def kv_put_retrying(endpoint: str, key: str, value: str, within: float = 5.0) -> None:
    """Writes fail while a new leader is elected; retry until `within` runs out."""
    deadline = time.monotonic() + within
    while True:
        try:
            kv_put(endpoint, key, value, timeout=0.5)
            return
        except (OSError, urllib.error.URLError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _pid_gone(pid: int) -> bool:
    """True once `pid` has exited; a zombie awaiting a reaper counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _is_etcd(pid: int) -> bool:
    try:
        return b"etcd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    base = tmp_path / "etcd"
    c = EtcdCluster(base, size=3)
    try:
        c.start(timeout=20)
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_cluster_members_are_healthy(cluster: EtcdCluster) -> None:
    assert len(cluster.endpoints) == 3 == len(set(cluster.endpoints))
    for endpoint in cluster.endpoints:
        with _http.open(endpoint + "/health", timeout=2) as resp:
            assert json.loads(resp.read())["health"] == "true"
    assert all(m.alive() for m in cluster.members)
    assert all((cluster.base_dir / f"{m.config.name}.log").stat().st_size > 0 for m in cluster.members)


def test_write_on_one_member_reads_on_another(cluster: EtcdCluster) -> None:
    first, second, third = cluster.endpoints
    kv_put(first, "/rota/test/k", "v1")
    assert kv_get(second, "/rota/test/k") == "v1"
    assert kv_get(third, "/rota/test/k") == "v1"
    assert kv_get(third, "/rota/test/missing") is None


def test_two_members_keep_serving_after_one_is_killed(cluster: EtcdCluster) -> None:
    victim = cluster.members[0]
    pid = victim.pid
    victim.kill()
    deadline = time.monotonic() + 5
    while victim.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not victim.alive() and pid is not None
    survivors = cluster.endpoints[1:]
    kv_put_retrying(survivors[0], "/rota/test/after-kill", "still-here")
    assert kv_get(survivors[1], "/rota/test/after-kill") == "still-here"

    assert any(m.is_leader() for m in cluster.members[1:])
    restarted = cluster.restart_member(0, timeout=10)
    assert restarted.alive() and restarted.pid != pid
    assert kv_get(cluster.endpoints[0], "/rota/test/after-kill") == "still-here"


def test_member_dies_with_its_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from rota.common.procs import free_ports
        from rota.metastore.etcd_server import EtcdMember, MemberConfig

        peer, client = (f"http://127.0.0.1:{p}" for p in free_ports(2))
        cfg = MemberConfig(
            name="orphan", data_dir=sys.argv[1], peer_urls=[peer], advertise_peer_urls=[peer],
            client_urls=[client], advertise_client_urls=[client], initial_cluster=f"orphan={peer}",
            heartbeat_ms=10, election_ms=100,
        )
        member = EtcdMember(cfg, log_path=sys.argv[2])
        member.start()
        member.wait_ready(10)
        print(member.pid, flush=True)
        time.sleep(60)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "orphan.etcd"), str(tmp_path / "orphan.log")],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    etcd_pid: int | None = None
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 15)
        assert ready, "the parent process did not report its etcd pid within 15s"
        line = parent.stdout.readline().decode().strip()
        assert line.isdigit(), f"unexpected output from the parent: {line!r}"
        etcd_pid = int(line)
        assert not _pid_gone(etcd_pid) and _is_etcd(etcd_pid)

        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while not _pid_gone(etcd_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _pid_gone(etcd_pid), f"etcd pid {etcd_pid} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if etcd_pid is not None and not _pid_gone(etcd_pid) and _is_etcd(etcd_pid):
            os.kill(etcd_pid, signal.SIGKILL)


def _single_member(tmp_path: Path, **overrides: object) -> MemberConfig:
    peer, client = (f"http://127.0.0.1:{p}" for p in free_ports(2))
    fields: dict[str, object] = {
        "name": "solo",
        "data_dir": str(tmp_path / "solo.etcd"),
        "peer_urls": [peer],
        "advertise_peer_urls": [peer],
        "client_urls": [client],
        "advertise_client_urls": [client],
        "initial_cluster": f"solo={peer}",
        "heartbeat_ms": 10,
        "election_ms": 100,
    }
    fields.update(overrides)
    return MemberConfig(**fields)  # type: ignore[arg-type]


def test_member_that_exits_reports_its_log(tmp_path: Path) -> None:
    cfg = _single_member(tmp_path)
    port = int(cfg.client_urls[0].rsplit(":", 1)[1])
    member = EtcdMember(cfg, log_path=str(tmp_path / "solo.log"))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        try:
            member.start()
            with pytest.raises(EtcdStartError, match="exited with code") as info:
                member.wait_ready(10)
            assert "address already in use" in str(info.value)
        finally:
            member.stop()


def test_member_without_quorum_times_out(tmp_path: Path) -> None:
    cfg = _single_member(tmp_path)
    cfg.initial_cluster += ",ghost1=http://127.0.0.1:1,ghost2=http://127.0.0.1:2"
    with EtcdMember(cfg, log_path=str(tmp_path / "solo.log")) as member:
        with pytest.raises(EtcdStartError, match="not healthy after"):
            member.wait_ready(1)
        assert member.alive()
    assert not member.alive()
    member.stop()


def _fake_etcd(tmp_path: Path, output: str, name: str = "etcd") -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return str(path)


def test_too_old_binary_is_refused(tmp_path: Path) -> None:
    fake = _fake_etcd(tmp_path, "etcd Version: 3.4.10")
    with pytest.raises(EtcdBinaryError, match="too old") as info:
        check_etcd_version(fake)
    assert fake in str(info.value) and "3.4.22" in str(info.value)


def test_data_loss_binary_is_refused(tmp_path: Path) -> None:
    fake = _fake_etcd(tmp_path, "etcd Version: 3.5.1")
    with pytest.raises(EtcdBinaryError, match="data-loss"):
        check_etcd_version(fake)
    member = EtcdMember(_single_member(tmp_path), binary=fake)
    with pytest.raises(EtcdBinaryError, match="data-loss"):
        member.start()
    assert member.pid is None


def test_unparseable_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EtcdBinaryError, match="did not print an etcd version"):
        check_etcd_version(_fake_etcd(tmp_path, "hello"))


def test_real_binary_is_accepted() -> None:
    assert check_etcd_version(find_etcd_binary()) >= (3, 4, 22)


def test_find_binary_order_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = _fake_etcd(tmp_path, "etcd Version: 3.4.23", "etcd-env")
    explicit = _fake_etcd(tmp_path, "etcd Version: 3.4.23", "etcd-explicit")
    monkeypatch.setenv("ROTA_ETCD_BIN", from_env)
    assert find_etcd_binary(explicit) == explicit
    assert find_etcd_binary() == from_env

    with pytest.raises(EtcdBinaryError, match="--etcd-bin"):
        find_etcd_binary(str(tmp_path / "missing"))
    not_exec = tmp_path / "not-exec"
    not_exec.write_text("")
    monkeypatch.setenv("ROTA_ETCD_BIN", str(not_exec))
    with pytest.raises(EtcdBinaryError, match="ROTA_ETCD_BIN"):
        find_etcd_binary()

    monkeypatch.delenv("ROTA_ETCD_BIN")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(EtcdBinaryError, match="apt-get install etcd-server"):
        find_etcd_binary()

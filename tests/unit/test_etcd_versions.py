"""Pure checks of the etcd version policy and the member command line: no processes, no files."""

from __future__ import annotations

import pytest

from rota.metastore.etcd_server import MemberConfig, parse_etcd_version, version_problem


@pytest.mark.parametrize("version", [(3, 4, 22), (3, 4, 23), (3, 5, 3), (3, 5, 17), (3, 6, 0), (4, 0, 0)])
def test_acceptable_versions(version: tuple[int, int, int]) -> None:
    assert version_problem(version) is None


@pytest.mark.parametrize("version", [(3, 4, 21), (3, 4, 10), (3, 3, 27), (2, 3, 8)])
def test_too_old(version: tuple[int, int, int]) -> None:
    problem = version_problem(version, "/opt/etcd")
    assert problem is not None
    assert "too old" in problem and ">= 3.4.22" in problem and "/opt/etcd" in problem
    assert "apt-get install etcd-server" in problem


@pytest.mark.parametrize("version", [(3, 5, 0), (3, 5, 1), (3, 5, 2)])
def test_data_loss_versions(version: tuple[int, int, int]) -> None:
    problem = version_problem(version)
    assert problem is not None
    assert "data-loss" in problem and "3.5.3" in problem


def test_parse_version() -> None:
    out = "etcd Version: 3.4.23\nGit SHA: Not provided\nGo Version: go1.19.8\n"
    assert parse_etcd_version(out) == (3, 4, 23)
    assert parse_etcd_version("etcdctl version: 3.4.23") is None
    assert parse_etcd_version("") is None


def _config(**overrides: object) -> MemberConfig:
    fields: dict[str, object] = {
        "name": "m0",
        "data_dir": "/var/lib/rota/m0",
        "peer_urls": ["http://0.0.0.0:8291"],
        "advertise_peer_urls": ["http://10.0.0.1:8291"],
        "client_urls": ["http://0.0.0.0:2379", "http://127.0.0.1:2380"],
        "advertise_client_urls": ["http://10.0.0.1:2379"],
        "initial_cluster": "m0=http://10.0.0.1:8291,m1=http://10.0.0.2:8291",
    }
    fields.update(overrides)
    return MemberConfig(**fields)  # type: ignore[arg-type]


def _flags(argv: list[str]) -> dict[str, str]:
    assert len(argv[1:]) % 2 == 0, argv
    return dict(zip(argv[1::2], argv[2::2], strict=True))


def test_argv_defaults() -> None:
    argv = _config().argv("/usr/bin/etcd")
    assert argv[0] == "/usr/bin/etcd"
    assert _flags(argv) == {
        "--name": "m0",
        "--data-dir": "/var/lib/rota/m0",
        "--listen-peer-urls": "http://0.0.0.0:8291",
        "--initial-advertise-peer-urls": "http://10.0.0.1:8291",
        "--listen-client-urls": "http://0.0.0.0:2379,http://127.0.0.1:2380",
        "--advertise-client-urls": "http://10.0.0.1:2379",
        "--initial-cluster": "m0=http://10.0.0.1:8291,m1=http://10.0.0.2:8291",
        "--initial-cluster-state": "new",
        "--initial-cluster-token": "rota",
        "--heartbeat-interval": "100",
        "--election-timeout": "1000",
        "--max-txn-ops": "1024",
        "--max-request-bytes": str(4 * 1024 * 1024),
        "--quota-backend-bytes": str(8 * 1024**3),
        "--auto-compaction-mode": "periodic",
        "--auto-compaction-retention": "1h",
        "--logger": "zap",
        "--log-outputs": "stderr",
    }


def test_argv_overrides_log_path_and_extra_args() -> None:
    cfg = _config(
        initial_cluster_state="existing",
        cluster_token="t",
        heartbeat_ms=10,
        election_ms=100,
        extra_args=["--snapshot-count", "5000"],
    )
    argv = cfg.argv("etcd", log_path="/tmp/m0.log")
    assert argv[-2:] == ["--snapshot-count", "5000"]
    flags = _flags(argv)
    assert flags["--initial-cluster-state"] == "existing"
    assert flags["--initial-cluster-token"] == "t"
    assert flags["--heartbeat-interval"] == "10"
    assert flags["--election-timeout"] == "100"
    assert flags["--log-outputs"] == "/tmp/m0.log"


def test_max_request_bytes_fits_large_requests() -> None:
    assert _config().max_request_bytes > 1.5 * 1024 * 1024


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="initial_cluster_state"):
        _config(initial_cluster_state="old")
    with pytest.raises(ValueError, match="election_ms"):
        _config(heartbeat_ms=100, election_ms=400)

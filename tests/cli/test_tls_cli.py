"""``master-client certs create`` and the --tls-* flags of every program (no etcd needed)."""

from __future__ import annotations

import stat

import pytest
from test_cli_errors import assert_usage_error, run

CLIENT = "rota.client.cli"


def test_certs_create_writes_a_ca_and_a_node_cert_then_refuses_to_overwrite(tmp_path):
    a = tmp_path / "a"
    p = run(CLIENT, "certs", "create", "--out", str(a), "--hosts", "127.0.0.1,localhost,host-a,10.0.0.5")
    assert p.returncode == 0, p.stderr
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in a.iterdir()}
    assert modes == {"ca.pem": 0o644, "ca-key.pem": 0o600, "node.pem": 0o644, "node-key.pem": 0o600}
    assert p.stdout.count("wrote ") == 4
    before = {f.name: f.read_bytes() for f in a.iterdir()}

    again = run(CLIENT, "certs", "create", "--out", str(a), "--hosts", "127.0.0.1")
    assert_usage_error(again, "refusing to overwrite", str(a / "ca.pem"))
    assert {f.name: f.read_bytes() for f in a.iterdir()} == before

    b = tmp_path / "b"
    p = run(CLIENT, "--json", "certs", "create", "--ca-dir", str(a), "--out", str(b), "--hosts", "host-b")
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in b.iterdir()) == ["ca.pem", "node-key.pem", "node.pem"]
    assert (b / "ca.pem").read_bytes() == before["ca.pem"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--hosts", "not a host"], ["--hosts", "neither"]),
        (["--hosts", "h", "--days", "0"], ["--days"]),
        (["--hosts", "h", "--ca-dir", "/nonexistent"], ["--ca-dir /nonexistent", "no ca.pem"]),
    ],
)
def test_certs_create_bad_input(tmp_path, args, needles):
    assert_usage_error(run(CLIENT, "certs", "create", "--out", str(tmp_path / "o"), *args), *needles)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize(
    "module, before, after",
    [
        ("rota.scheduler.master", ["--name", "m0"], []),
        ("rota.executor.main", ["--join", "127.0.0.1:1"], []),
        (CLIENT, [], ["list-jobs"]),
    ],
)
def test_a_partial_tls_set_is_refused(tmp_path, module, before, after):
    p = run(module, *before, "--tls-ca", str(tmp_path / "ca.pem"), *after)
    assert_usage_error(p, "missing --tls-cert, --tls-key")


def test_client_reads_tls_files_from_the_environment(tmp_path):
    env = {"ROTA_TLS_CERT": "x.pem", "ROTA_TLS_KEY": "x-key.pem"}
    assert_usage_error(run(CLIENT, "list-jobs", env=env), "missing --tls-ca")
    env["ROTA_TLS_CA"] = str(tmp_path / "none.pem")
    assert_usage_error(run(CLIENT, "list-jobs", env=env), "--tls-ca", "none.pem: no such file")


def test_master_tls_keys_in_a_config_file(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text(f'name = "m0"\ntls-ca = "{tmp_path}/ca.pem"\ntls-cert = "c"\ntls-key = "k"\n')
    assert_usage_error(run("rota.scheduler.master", "--config", str(f)), "--tls-ca", "no such file")

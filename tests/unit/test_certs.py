"""Certificates made by common/certs.py, the TLS files check and the --tls-* flag rules (no network)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from test_election_logic import _options

from rota.common import certs, rpc, tls
from rota.common.config import ConfigError
from rota.metastore.etcd_server import MemberConfig
from rota.scheduler.master import build_config


def _write(tmp_path, ca: certs.KeyPair, node: certs.KeyPair) -> tls.TlsFiles:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    (tmp_path / "node.pem").write_bytes(node.cert_pem())
    (tmp_path / "node-key.pem").write_bytes(node.key_pem())
    return tls.TlsFiles(str(tmp_path / "ca.pem"), str(tmp_path / "node.pem"), str(tmp_path / "node-key.pem"))


def test_node_cert_names_its_hosts_and_serves_both_ends():
    ca = certs.make_ca(days=3)
    node = certs.make_cert(ca, ["127.0.0.1", "localhost", "host-a", "10.0.0.5", "::1"], days=3)
    san = node.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "host-a"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    }
    eku = node.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not node.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    node.cert.verify_directly_issued_by(ca.cert)
    lifetime = node.cert.not_valid_after_utc - node.cert.not_valid_before_utc
    assert datetime.timedelta(days=3) <= lifetime < datetime.timedelta(days=3, minutes=10)


def test_not_before_makes_an_expired_cert():
    ca = certs.make_ca()
    old = certs.make_cert(
        ca, ["127.0.0.1"], days=1, not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    )
    assert old.cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc)


@pytest.mark.parametrize("hosts, needle", [("", "at least one"), ("a b", "neither"), ("x..y", "neither")])
def test_bad_hosts_are_named(hosts, needle):
    with pytest.raises(ConfigError, match=needle):
        certs.parse_hosts(hosts)


def test_bad_days_are_refused():
    with pytest.raises(ConfigError, match="--days"):
        certs.make_ca(days=0)


def test_create_writes_keys_private_and_never_overwrites(tmp_path):
    out = tmp_path / "a"
    written = certs.create(str(out), ["127.0.0.1", "host-a"], days=2)
    assert sorted(os.path.basename(p) for p in written) == [
        "ca-key.pem",
        "ca.pem",
        "node-key.pem",
        "node.pem",
    ]
    for name, mode in [
        ("ca.pem", 0o644),
        ("node.pem", 0o644),
        ("ca-key.pem", 0o600),
        ("node-key.pem", 0o600),
    ]:
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name
    before = (out / "node.pem").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        certs.create(str(out), ["127.0.0.1"])
    assert (out / "node.pem").read_bytes() == before

    # A second host's certificate from the same CA: the CA's certificate comes along, its key does not.
    certs.create(str(tmp_path / "b"), ["127.0.0.1", "host-b"], ca_dir=str(out))
    assert sorted(os.listdir(tmp_path / "b")) == ["ca.pem", "node-key.pem", "node.pem"]
    assert (tmp_path / "b" / "ca.pem").read_bytes() == (out / "ca.pem").read_bytes()
    ca = certs.load_ca(str(out))
    b = x509.load_pem_x509_certificate((tmp_path / "b" / "node.pem").read_bytes())
    b.verify_directly_issued_by(ca.cert)


def test_missing_ca_dir_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no ca.pem"):
        certs.create(str(tmp_path / "out"), ["127.0.0.1"], ca_dir=str(tmp_path / "nothing"))
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_tls_files_load_into_both_ends(tmp_path):
    ca = certs.make_ca()
    files = _write(tmp_path, ca, certs.make_cert(ca, ["127.0.0.1"]))
    assert files.check() is files
    assert isinstance(tls.server_context(files), ssl.SSLContext)
    assert tls.server_credentials(files) is not None and tls.channel_credentials(files) is not None


def test_tls_files_name_the_bad_file(tmp_path):
    ca = certs.make_ca()
    files = _write(tmp_path, ca, certs.make_cert(ca, ["127.0.0.1"]))
    with pytest.raises(ConfigError, match=r"--tls-ca .*nope: no such file"):
        tls.TlsFiles(str(tmp_path / "nope"), files.cert, files.key).check()
    with pytest.raises(ConfigError, match=r"--tls-cert .*node-key.pem: not a PEM certificate"):
        tls.TlsFiles(files.ca, files.key, files.key).check()
    with pytest.raises(ConfigError, match=r"--tls-key .*node.pem: not a PEM private key"):
        tls.TlsFiles(files.ca, files.cert, files.cert).check()
    other = certs.make_cert(ca, ["127.0.0.1"])
    (tmp_path / "other-key.pem").write_bytes(other.key_pem())
    with pytest.raises(ConfigError, match="do not make a usable pair"):
        tls.TlsFiles(files.ca, files.cert, str(tmp_path / "other-key.pem")).check()


@pytest.mark.parametrize(
    "given, missing",
    [({"tls_ca": "a"}, "--tls-cert, --tls-key"), ({"tls_cert": "b", "tls_key": "c"}, "--tls-ca")],
)
def test_tls_flags_come_all_three_or_none(given, missing):
    assert tls.from_options({"tls_ca": None, "tls_cert": None, "tls_key": ""}) is None
    with pytest.raises(ConfigError, match=f"missing {missing}$"):
        tls.from_options(given)


def test_master_with_tls_defaults_to_https_etcd(tmp_path):
    ca = certs.make_ca()
    files = _write(tmp_path, ca, certs.make_cert(ca, ["127.0.0.1"]))
    flags = {"tls_ca": files.ca, "tls_cert": files.cert, "tls_key": files.key}
    conf = build_config(_options(name="m0", **flags))
    assert conf.tls == files and conf.member is not None and conf.member.tls == files
    assert conf.member.initial_cluster == "m0=https://127.0.0.1:8291"
    assert conf.etcd_endpoints == ["https://127.0.0.1:2379"]
    argv = conf.member.argv("etcd")
    assert argv[argv.index("--cert-file") + 1] == files.cert
    assert argv[argv.index("--peer-trusted-ca-file") + 1] == files.ca
    assert "--client-cert-auth=true" in argv and "--peer-client-cert-auth=true" in argv

    with pytest.raises(ConfigError, match=r"--peer-urls http://127.0.0.1:1: use https://"):
        build_config(_options(name="m0", peer_urls="http://127.0.0.1:1", **flags))
    with pytest.raises(
        ConfigError, match=r"--etcd-client-urls https://127.0.0.1:1: use http:// .*needs --tls"
    ):
        build_config(_options(name="m0", etcd_client_urls="https://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="--etcd-endpoints with https:// needs --tls-ca"):
        build_config(_options(name="m0", etcd_endpoints="https://a:1"))
    external = build_config(_options(name="m0", etcd_endpoints="https://a:1", **flags))
    assert external.member is None and external.etcd_endpoints == ["https://a:1"]


def test_member_without_tls_has_no_tls_flags():
    conf = MemberConfig(
        name="m0", data_dir="/d", peer_urls=["http://h:1"], advertise_peer_urls=["http://h:1"],
        client_urls=["http://h:2"], advertise_client_urls=["http://h:2"], initial_cluster="m0=http://h:1",
    )  # fmt: skip
    assert not any("cert" in a for a in conf.argv("etcd"))


def test_a_refused_handshake_gets_a_hint_and_other_errors_do_not():
    files = tls.TlsFiles("ca", "cert", "key")
    assert rpc.explain("connection refused", None) == "connection refused"
    assert "give --tls-ca" in rpc.explain("ipv4:127.0.0.1:1: Socket closed", None)
    assert "refused this certificate" in rpc.explain("Tls handshake failed", files)

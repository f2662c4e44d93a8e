"""A whole cluster over mutual TLS: three masters with embedded etcd, two executors, clients.

Jobs run, task logs and the https API answer to holders of a certificate from the cluster's CA;
a plain client, a certificate from another CA and an expired one are refused and write nothing,
an executor without a good certificate never attaches, and etcd refuses a client without one.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from rota.client.api import Client, NoMasterReachable, RequestError
from rota.common import certs
from rota.common.tls import TlsFiles, client_context
from rota.devtools.localcluster import LocalCluster, tls_args
from rota.metastore import keys
from rota.metastore.client import EtcdClient, EtcdError
from rota.protos import rota_pb2, rota_pb2_grpc

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
MASTER_CLIENT = ROOT / "bin" / "master-client"
ECHO_JOB = {
    "name": "tls-echo",
    "task": [{"name": "say", "kind": "shell", "command": "echo over-tls", "count": 4}],
}
LONG_AGO = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)


def _open(url: str, context: ssl.SSLContext | None = None) -> Any:
    """urlopen past any proxy of the environment: the cluster is on 127.0.0.1."""
    handlers: list[Any] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers).open(url, timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("tls"), executors=2, tls=True)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _files(directory: Path, ca: certs.KeyPair, trusted: certs.KeyPair, node: certs.KeyPair) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(trusted.cert_pem())
    (directory / "node.pem").write_bytes(node.cert_pem())
    (directory / "node-key.pem").write_bytes(node.key_pem())
    os.chmod(directory / "node-key.pem", 0o600)
    return TlsFiles(str(directory / "ca.pem"), str(directory / "node.pem"), str(directory / "node-key.pem"))


@pytest.fixture(scope="module")
def bad_files(cluster: LocalCluster) -> dict[str, TlsFiles]:
    """Certificates the cluster must refuse, each in its own directory."""
    assert cluster.tls is not None
    base = cluster.base_dir / "bad"
    ours = certs.load_ca(str(Path(cluster.tls.ca).parent))
    other = certs.make_ca()
    hosts = ["127.0.0.1", "localhost"]
    return {
        # Another CA through and through: the client also refuses the masters' certificates.
        "other-ca": _files(base / "other-ca", other, other, certs.make_cert(other, hosts)),
        # Trusts our CA but shows another's certificate: only the server can refuse it.
        "other-ca-cert": _files(base / "other-ca-cert", other, ours, certs.make_cert(other, hosts)),
        "expired": _files(base / "expired", ours, ours, certs.make_cert(ours, hosts, 1, not_before=LONG_AGO)),
    }


def test_a_job_runs_and_its_logs_are_read_over_tls(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        assert {e["name"] for e in c.list_executors()} == {"e0", "e1"}
        done = c.run_job(ECHO_JOB, timeout=60)
        assert done["state"] == "SUCCEEDED", done
        assert {t["executor"] for t in done["tasks"]} <= {e["id"] for e in c.list_executors()}
        assert list(c.task_logs(done["id"], "0")) == [("stdout", b"over-tls\n")]
    assert cluster.tls is not None
    env = {
        **os.environ,
        "ROTA_TLS_CA": cluster.tls.ca,
        "ROTA_TLS_CERT": cluster.tls.cert,
        "ROTA_TLS_KEY": cluster.tls.key,
    }
    p = subprocess.run(
        [str(MASTER_CLIENT), "--master-addr", cluster.addresses, "logs", done["id"], "3"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert (p.returncode, p.stdout) == (0, "over-tls\n"), p.stderr


def test_the_http_api_answers_over_https_only(cluster: LocalCluster) -> None:
    assert cluster.tls is not None
    url = cluster.masters[1].http_url
    assert url.startswith("https://")
    # A browser or curl shows no client certificate: the HTTP port does not ask for one.
    browser = client_context(ca=cluster.tls.ca)
    with _open(f"{url}/api/v1/cluster", browser) as resp:
        doc = json.loads(resp.read())
    assert doc["answered_by"] == "m1" and doc["leader"] is not None and doc["executors"] == 2
    curl = subprocess.run(
        ["curl", "-sS", "--cacert", cluster.tls.ca, f"{url}/api/v1/jobs?limit=1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert curl.returncode == 0 and isinstance(json.loads(curl.stdout), list), curl.stderr
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _open(url.replace("https://", "http://") + "/api/v1/cluster")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _open(f"{url}/api/v1/cluster")  # the system CAs do not know ours


def _submit_refused(cluster: LocalCluster, tls: TlsFiles | None, job_id: str) -> str:
    with Client(cluster.addresses, timeout=2.0, tls=tls) as c:
        with pytest.raises(NoMasterReachable) as e:
            c.submit_job(ECHO_JOB, job_id=job_id)
    return str(e.value)


def _assert_no_job(cluster: LocalCluster, job_id: str) -> None:
    with cluster.client() as c:
        with pytest.raises(RequestError) as e:
            c.get_job(job_id)
        assert e.value.not_found, e.value
        assert job_id not in {j["id"] for j in c.list_jobs()}


@pytest.mark.parametrize("variant", [None, "other-ca", "other-ca-cert", "expired"])
def test_a_client_without_a_good_certificate_writes_nothing(
    cluster: LocalCluster, bad_files: dict[str, TlsFiles], variant: str | None
) -> None:
    job_id = f"refused-{variant or 'plain'}"
    message = _submit_refused(cluster, bad_files[variant] if variant else None, job_id)
    assert "no master reachable" in message
    if variant is None:
        assert "if the cluster uses TLS, give --tls-ca" in message, message
    elif variant == "other-ca":
        assert "CERTIFICATE_VERIFY_FAILED" in message, message
    else:
        assert "the peer refused this certificate" in message, message
    _assert_no_job(cluster, job_id)


def test_a_client_showing_no_certificate_is_refused(cluster: LocalCluster) -> None:
    """TLS that trusts the masters but shows nothing: the masters demand a certificate."""
    assert cluster.tls is not None
    creds = grpc.ssl_channel_credentials(root_certificates=Path(cluster.tls.ca).read_bytes())
    with grpc.secure_channel(cluster.masters[0].addr, creds) as ch:
        with pytest.raises(grpc.RpcError) as e:
            rota_pb2_grpc.MasterStub(ch).GetClusterStatus(rota_pb2.ClusterStatusRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value


def test_the_cli_without_tls_says_what_is_missing(cluster: LocalCluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTA_TLS_")}
    p = subprocess.run(
        [str(MASTER_CLIENT), "--master-addr", cluster.masters[0].addr, "--timeout", "2s", "submit-job",
         "--id", "refused-cli", "--config", str(ROOT / "sample" / "jobs" / "hello.toml")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    assert "give --tls-ca, --tls-cert and --tls-key" in p.stderr and "Traceback" not in p.stderr
    _assert_no_job(cluster, "refused-cli")


def test_executors_without_a_good_certificate_never_attach(
    cluster: LocalCluster, bad_files: dict[str, TlsFiles], wait_until
) -> None:
    procs = [cluster.add_executor(name="plain", cluster_tls=False)] + [
        cluster.add_executor(name=name, args=tls_args(bad_files[name]), cluster_tls=False)
        for name in ("other-ca-cert", "expired")
    ]
    try:
        for p in procs:
            wait_until(f"{p.name} to give up a round", lambda p=p: "no master took" in p.log_tail(50), 30)
            assert p.alive()
        with cluster.client() as c:
            assert {e["name"] for e in c.list_executors()} == {"e0", "e1"}
        assert "if the cluster uses TLS" in procs[0].log_tail(50)
        assert "the peer refused this certificate" in procs[1].log_tail(50)
    finally:
        for p in procs:
            p.stop()
            cluster.executors.remove(p)


def test_etcd_refuses_a_client_without_a_certificate(cluster: LocalCluster) -> None:
    endpoints = cluster.etcd_endpoints
    assert all(e.startswith("https://") for e in endpoints)

    async def probe() -> tuple[bool, bool]:
        async with (
            EtcdClient(endpoints, timeout=2) as plain,
            EtcdClient(endpoints, timeout=5, tls=cluster.tls) as ok,
        ):
            with pytest.raises(EtcdError):
                await plain.get(keys.LEADER)
            return await plain.healthy(timeout=1), await ok.healthy(timeout=5)

    assert asyncio.run(probe()) == (False, True)
    assert cluster.tls is not None
    with pytest.raises(OSError, match="(?i)certificate"):  # refused at the handshake or at the first read
        _open(f"{endpoints[0]}/health", client_context(ca=cluster.tls.ca))
    with _open(f"{endpoints[0]}/health", client_context(cluster.tls)) as r:
        assert json.loads(r.read())["health"] == "true"


def test_mutual_tls_and_tokens_together(local_cluster) -> None:
    """The secure mode as `make demo` runs it: TLS decides who may connect, tokens what they may do."""
    from rota.client.errors import AccessDenied

    secure = local_cluster(masters=3, executors=1, tls=True, tokens=True)
    with secure.client() as admin:
        doc = admin.run_job(ECHO_JOB, timeout=60)
        assert doc["state"] == "SUCCEEDED" and doc["owner"], doc
        reader, _ = admin.create_token("read", "tls-reader")
        before = len(admin.list_jobs())
    with secure.client(token=reader) as c:
        out = b"".join(d for s, d in c.task_logs(doc["id"], "0") if s == "stdout")
        assert b"over-tls" in out
        with pytest.raises(AccessDenied, match="SubmitJob"):
            c.submit_job(ECHO_JOB)
    with Client(secure.addresses, timeout=10, token="", tls=secure.tls) as nobody:
        with pytest.raises(AccessDenied, match="needs a token") as e:
            nobody.list_jobs()
        assert e.value.unauthenticated
    with pytest.raises(NoMasterReachable):
        with Client(secure.addresses, timeout=3, token=secure.admin_token) as plain:
            plain.list_jobs()
    with secure.client() as admin:
        assert len(admin.list_jobs()) == before

"""Tokens with roles on a real cluster (issue 13): every refusal has the right status, a message,
and writes nothing; what a role allows still works, through a follower too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rota.client.api import Client
from rota.client.errors import AccessDenied
from rota.common import tokens
from rota.common.procs import free_ports
from rota.devtools.localcluster import LocalCluster
from rota.protos import rota_pb2, rota_pb2_grpc

pytestmark = pytest.mark.etcd

LONG = {"name": "long", "task": [{"name": "s", "kind": "sleep", "seconds": 60}]}
QUICK = {"name": "quick", "task": [{"name": "t", "kind": "noop"}]}
PRINTS = {"name": "prints", "task": [{"name": "p", "kind": "shell", "command": "echo secret-output"}]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("tokens"), executors=1, executor_slots=2, tokens=True)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def made(cluster: LocalCluster) -> dict[str, str]:
    """One token of each role (two submit tokens), made by the admin."""
    out = {}
    with cluster.client() as c:
        for name, role in (("alice", "submit"), ("bob", "submit"), ("reader", "read"), ("ex", "executor")):
            out[name], _ = c.create_token(role, name)
    return out


def job_count(cluster: LocalCluster) -> int:
    with cluster.client() as c:
        return len(c.list_jobs())


def follower(cluster: LocalCluster) -> str:
    leader = cluster.leader()
    return next(m.addr for m in cluster.masters if m.name != leader.name)


def raw_call(addr: str, method: str, request: object, token: str | None) -> grpc.RpcError | object:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(addr) as ch:
        try:
            return getattr(rota_pb2_grpc.MasterStub(ch), method)(request, metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            return e


def test_calls_without_a_valid_token_are_refused_on_every_master_and_write_nothing(cluster, made):
    before = job_count(cluster)
    real = tokens.parse(made["alice"])
    wrong_secret = str(tokens.Token(real.id, tokens.generate().secret))
    submit = rota_pb2.SubmitJobRequest(spec_json=json.dumps(QUICK).encode(), id="refused-1")
    for m in cluster.masters:
        for token, needle in ((None, "needs a token"), (wrong_secret, "unknown or revoked"),
                              (str(tokens.generate()), "unknown or revoked"), ("rota_nonsense", "not a Rota token")):  # fmt: skip
            e = raw_call(m.addr, "SubmitJob", submit, token)
            assert isinstance(e, grpc.RpcError), (m.name, token)
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (m.name, token, e.details())
            assert needle in e.details(), e.details()
        e = raw_call(m.addr, "ListJobs", rota_pb2.ListJobsRequest(), None)
        assert isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.UNAUTHENTICATED
    # What finds the leader needs no token, and tells nothing secret.
    info = raw_call(cluster.masters[0].addr, "GetMasterInfo", rota_pb2.MasterInfoRequest(), None)
    assert isinstance(info, rota_pb2.MasterInfo)
    assert job_count(cluster) == before
    with cluster.client() as c:
        with pytest.raises(Exception, match="not found|no job"):
            c.get_job("refused-1")


def test_each_role_does_what_it_may_and_is_refused_the_rest(cluster, made):
    before = job_count(cluster)
    with Client(cluster.addresses, token=made["reader"]) as reader:
        assert reader.whoami()["role"] == "read"
        with pytest.raises(AccessDenied, match="role 'read', which may not call SubmitJob") as e:
            reader.submit_job(QUICK)
        assert not e.value.unauthenticated
        reader.list_jobs()
        reader.cluster_status()
        with pytest.raises(AccessDenied, match="CreateToken"):
            reader.create_token("admin", "escalate")
    assert job_count(cluster) == before
    with Client(cluster.addresses, token=made["ex"]) as ex:
        with pytest.raises(AccessDenied, match="may not call ListJobs"):
            ex.list_jobs()
    with Client(cluster.addresses, token=made["alice"]) as alice:
        with pytest.raises(AccessDenied, match="ListTokens"):
            alice.list_tokens()
        with pytest.raises(AccessDenied, match="DrainExecutor"):
            alice.drain_executor("e0")
    # A submit token through a follower: forwarded with its token, owned by it.
    alice_id = tokens.parse(made["alice"]).id
    with Client(follower(cluster), token=made["alice"]) as alice:
        doc = alice.run_job(QUICK, timeout=30)
    assert doc["state"] == "SUCCEEDED" and doc["owner"] == alice_id


def test_a_submit_token_cancels_its_own_jobs_only(cluster, made):
    with (
        Client(cluster.addresses, token=made["alice"]) as alice,
        Client(cluster.addresses, token=made["bob"]) as bob,
    ):
        job = alice.submit_job(LONG)["id"]
        for client in (bob, Client(follower(cluster), token=made["bob"])):
            with pytest.raises(AccessDenied, match="submitted by another token") as e:
                client.cancel_job(job)
            assert not e.value.unauthenticated
        assert alice.get_job(job)["state"] in ("PENDING", "RUNNING")
        assert alice.cancel_job(job)["state"] == "CANCELLED"
        other = bob.submit_job(LONG)["id"]
    with cluster.client() as admin:
        assert admin.cancel_job(other)["state"] == "CANCELLED"


def test_a_revoked_token_is_refused_by_every_master(cluster, made, wait_until):
    with cluster.client() as admin:
        text, rec = admin.create_token("read", "temp")
    for m in cluster.masters:
        with Client(m.addr, token=text) as c:
            c.list_jobs()
    with cluster.client() as admin:
        assert admin.revoke_token(rec["id"])["name"] == "temp"
        assert rec["id"] not in [r["id"] for r in admin.list_tokens()]
        with pytest.raises(Exception, match="no token"):
            admin.revoke_token(rec["id"])

    def refused_everywhere() -> bool:
        for m in cluster.masters:
            e = raw_call(m.addr, "ListJobs", rota_pb2.ListJobsRequest(), text)
            if not (isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.UNAUTHENTICATED):
                return False
        return True

    wait_until("the revoked token to be refused by every master", refused_everywhere, timeout=5)


def test_tokens_are_stored_hashed(cluster, made):
    import asyncio

    from rota.metastore import keys
    from rota.metastore.client import EtcdClient

    async def stored() -> bytes:
        async with EtcdClient(cluster.etcd_endpoints, timeout=20) as client:
            kvs, _ = await client.get_prefix(keys.TOKENS)
            return b"".join(kv.value for kv in kvs)

    blob = asyncio.run(stored())
    for text in made.values():
        t = tokens.parse(text)
        assert t.id.encode() in blob and t.secret.encode() not in blob
        assert tokens.digest(t.secret).encode() in blob


def test_executors_need_a_join_token(cluster, made, wait_until):
    bad_file = Path(cluster.base_dir) / "submit.token"
    bad_file.write_text(made["alice"] + "\n")
    no_token = cluster.add_executor(args=["--token-file", ""], name="no-token")
    wrong_role = cluster.add_executor(args=["--token-file", str(bad_file)], name="wrong-role")
    try:
        wait_until(
            "the unlicensed executor to be refused", lambda: "needs a token" in no_token.log_tail(50), 20
        )
        wait_until(
            "the submit-token executor to be refused",
            lambda: "may not call Attach" in wrong_role.log_tail(50),
            20,
        )
        with cluster.client() as c:
            names = {e["name"] for e in c.list_executors()}
        assert names == {"e0"}, names
    finally:
        for p in (no_token, wrong_role):
            p.stop()
            cluster.executors.remove(p)


def test_task_output_needs_a_read_token_at_the_executor(cluster, made):
    with cluster.client() as admin:
        doc = admin.run_job(PRINTS, timeout=30)
        assert doc["state"] == "SUCCEEDED", doc
        ex = admin.list_executors()[0]
    with Client(cluster.addresses, token=made["reader"]) as reader:
        out = b"".join(
            data for stream, data in reader._run(lambda: _collect(reader, doc["id"])) if stream == "stdout"
        )
    assert b"secret-output" in out
    req = rota_pb2.TaskLogsRequest(job_id=doc["id"], index=0, attempt=0)
    for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED), (str(tokens.generate()), grpc.StatusCode.UNAUTHENTICATED),
                        (made["ex"], grpc.StatusCode.PERMISSION_DENIED)):  # fmt: skip
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        with grpc.insecure_channel(ex["addr"]) as ch:
            with pytest.raises(grpc.RpcError) as e:
                list(rota_pb2_grpc.ExecutorStub(ch).TaskLogs(req, metadata=metadata, timeout=10))
        assert e.value.code() == code, (token, e.value.details())


async def _collect(client: Client, job_id: str) -> list[tuple[str, bytes]]:
    return [item async for item in client._async.task_logs(job_id)]


def test_the_http_api_asks_for_a_bearer_token(cluster, made):
    url = cluster.masters[0].http_url + "/api/v1/jobs"
    before = job_count(cluster)

    def post(token: str | None) -> tuple[int, dict]:
        req = urllib.request.Request(url, data=json.dumps(QUICK).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 401:
                assert e.headers["WWW-Authenticate"].startswith("Bearer")
            return e.code, json.loads(e.read())

    for token, status in ((None, 401), ("junk", 401), (str(tokens.generate()), 401), (made["reader"], 403)):
        code, body = post(token)
        assert code == status, (token, code, body)
        assert body["error"], body
    assert job_count(cluster) == before
    code, body = post(made["alice"])
    assert code == 201, body
    with cluster.client() as admin:
        assert admin.get_job(body["id"])["owner"] == tokens.parse(made["alice"]).id
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {made['reader']}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert any(j["id"] == body["id"] for j in json.loads(r.read()))


def cli(cluster: LocalCluster, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTA_TOKEN")}
    if token:
        env["ROTA_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "rota.client.cli", "--master-addr", cluster.addresses, *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_the_cli_manages_tokens_and_exits_5_when_refused(cluster, made, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('name = "cli"\n[[task]]\nname = "t"\nkind = "noop"\n')
    r = cli(cluster, "submit-job", "--config", str(job))
    assert r.returncode == 5 and "refused" in r.stderr and "needs a token" in r.stderr, r
    r = cli(cluster, "submit-job", "--config", str(job), token=made["reader"])
    assert r.returncode == 5 and "SubmitJob" in r.stderr, r
    r = cli(
        cluster,
        "--json",
        "token",
        "create",
        "--role",
        "read",
        "--name",
        "from-cli",
        token=cluster.admin_token,
    )
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["role"] == "read" and tokens.parse(created["token"]).id == created["id"]
    r = cli(cluster, "token", "whoami", token=created["token"])
    assert r.returncode == 0 and "role read" in r.stdout, r
    r = cli(cluster, "token", "list", token=cluster.admin_token)
    assert r.returncode == 0 and "from-cli" in r.stdout and created["token"] not in r.stdout, r
    r = cli(cluster, "token", "create", "--role", "root", "--name", "x", token=cluster.admin_token)
    assert r.returncode == 2 and "root" in r.stderr, r
    r = cli(cluster, "token", "revoke", created["id"], token=cluster.admin_token)
    assert r.returncode == 0 and "revoked" in r.stdout, r
    time.sleep(0.2)
    r = cli(cluster, "token", "whoami", token=created["token"])
    assert r.returncode == 5, r
    token_file = tmp_path / "t"
    token_file.write_text("not a token\n")
    r = cli(cluster, "--token-file", str(token_file), "list-jobs")
    assert r.returncode == 2 and "not a Rota token" in r.stderr, r
    r = subprocess.run(
        [sys.executable, "-m", "rota.client.cli", "token", "generate"], capture_output=True, text=True
    )
    assert r.returncode == 0 and tokens.parse(r.stdout)


def test_a_master_without_tokens_may_not_join_a_cluster_that_checks_them(cluster, tmp_path):
    (port,) = free_ports(1)
    r = subprocess.run(
        [sys.executable, "-m", "rota.scheduler.master", "--name", "intruder", "--master-addr", f"127.0.0.1:{port}",
         "--http-addr", "off", "--etcd-endpoints", ",".join(cluster.etcd_endpoints), "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0 and "--admin-token-file" in r.stdout + r.stderr, r


CHROMIUM = os.environ.get("ROTA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def page(cluster: LocalCluster):  # the cluster starts first: Playwright runs an event loop
    assert os.path.exists(CHROMIUM), "Chromium is missing: apt-get install chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page()
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            browser.close()


def http(cluster: LocalCluster, path: str, token: str, doc: dict | None = None) -> dict:
    """The HTTP API with a token (no gRPC Client here: Playwright's sync API runs an event loop)."""
    req = urllib.request.Request(cluster.masters[0].http_url + "/api/v1" + path,
                                 data=json.dumps(doc).encode() if doc is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_the_dashboard_asks_for_a_token_and_keeps_it_out_of_cookies_and_storage(cluster, made, page):
    job = http(cluster, "/jobs", made["alice"], LONG)["id"]
    try:
        page.goto(cluster.masters[1].http_url + "/")
        page.wait_for_selector("#token-form:not([hidden])")
        assert "needs a token" in page.locator("#error").inner_text()
        assert page.locator("#masters tbody tr").count() == 0
        page.fill("#token-input", made["reader"])
        page.click("#token-form button")
        page.wait_for_selector(f'#jobs tr:has-text("{job}")')
        assert page.locator("#masters tbody tr").count() == 3
        assert page.locator("#token-form").is_hidden()
        assert page.context.cookies() == []
        assert page.evaluate("localStorage.length + sessionStorage.length") == 0
        # A read token may look, not cancel: the refusal is shown and the job keeps running.
        page.locator(f'#jobs tr:has-text("{job}") button:has-text("Cancel")').click()
        page.wait_for_function("document.querySelector('#error').textContent.includes('CancelJob')")
        assert http(cluster, f"/jobs/{job}", made["reader"])["state"] in ("PENDING", "RUNNING")
    finally:
        http(cluster, f"/jobs/{job}/cancel", made["alice"], {})


def test_revoking_an_executors_token_closes_its_stream(cluster, wait_until):
    with cluster.client() as admin:
        text, rec = admin.create_token("executor", "to-revoke")
    token_file = Path(cluster.base_dir) / "to-revoke.token"
    token_file.write_text(text + "\n")
    ex = cluster.add_executor(args=["--token-file", str(token_file)], name="revokee")
    try:

        def state() -> str | None:
            with cluster.client() as c:
                return next((e["state"] for e in c.list_executors() if e["name"] == "revokee"), None)

        wait_until("the executor to attach", lambda: state() == "ready", 20)
        with cluster.client() as admin:
            admin.revoke_token(rec["id"])
        wait_until("the revoked executor to lose its stream", lambda: state() != "ready", 10)
        wait_until("the executor to be refused", lambda: "unknown or revoked" in ex.log_tail(50), 10)
    finally:
        ex.stop()
        cluster.executors.remove(ex)


def test_no_token_is_made_while_the_cluster_is_open(local_cluster):
    """A token minted while anyone may call would still be good once tokens are turned on."""
    from rota.client.errors import RequestError

    open_cluster = local_cluster(masters=1)
    with open_cluster.client() as c:
        for call in (
            lambda: c.create_token("admin", "early"),
            c.list_tokens,
            lambda: c.revoke_token("0" * 12),
        ):
            with pytest.raises(RequestError, match="does not check tokens"):
                call()
        assert c.whoami() == {"tokens": False}

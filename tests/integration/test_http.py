"""The HTTP port of a real three-master cluster: JSON API on every master, and /metrics checked by promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from rota.common.procs import die_with_parent, free_ports
from rota.devtools.localcluster import LocalCluster

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "sample" / "jobs" / "hello.toml"


def request(
    url: str, method: str = "GET", body: bytes | None = None, content_type: str | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one HTTP request; 4xx and 5xx are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in ctype else raw.decode()


def follower_url(c: LocalCluster) -> str:
    status = c.client().cluster_status()
    leader = status["leader"]["name"]
    return next(m.http_url for m in c.masters if m.name != leader)


def wait_for_state(url: str, job_id: str, states: set[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, doc = request(f"{url}/api/v1/jobs/{job_id}")
        assert status == 200, doc
        if doc["state"] in states or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def test_every_master_answers_the_cluster_status_with_the_same_leader(cluster: LocalCluster) -> None:
    leaders = set()
    for m in cluster.masters:
        status, doc = request(f"{m.http_url}/api/v1/cluster")
        assert status == 200
        assert doc["answered_by"] == m.name
        assert doc["etcd"]["healthy"] is True
        assert sorted(x["name"] for x in doc["masters"]) == ["m0", "m1", "m2"]
        leaders.add(doc["leader"]["name"])
    assert len(leaders) == 1
    status, executors = request(f"{cluster.masters[0].http_url}/api/v1/executors")
    assert status == 200 and len(executors) == 2
    assert all(e["state"] == "ready" and e["last_heartbeat"] > time.time() - 30 for e in executors)


def test_curl_posts_a_job_file_to_a_follower_and_it_runs(cluster: LocalCluster) -> None:
    assert shutil.which("curl"), "curl is missing: apt-get install curl (make test does)"
    url = follower_url(cluster)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/toml",
            "--data-binary",
            f"@{HELLO}",
            f"{url}/api/v1/jobs",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    body, code = out.rsplit("\n", 1)
    reply = json.loads(body)
    assert code == "201" and reply["created"] is True
    doc = wait_for_state(url, reply["id"], {"SUCCEEDED", "FAILED", "CANCELLED"})
    assert doc["state"] == "SUCCEEDED"
    assert [t["result"]["stdout"] for t in doc["tasks"]][0].startswith("hello")


def test_json_submission_with_an_id_is_idempotent_and_listed(cluster: LocalCluster) -> None:
    url = cluster.masters[2].http_url
    job = {"name": "json-job", "task": [{"name": "t", "kind": "noop", "count": 3}]}
    body = json.dumps(job).encode()
    first = request(f"{url}/api/v1/jobs?id=json-1", "POST", body, "application/json")
    again = request(f"{url}/api/v1/jobs?id=json-1", "POST", body, "application/json")
    assert first == (201, {"id": "json-1", "created": True})
    assert again == (200, {"id": "json-1", "created": False})
    assert wait_for_state(url, "json-1", {"SUCCEEDED"})["counts"] == {"SUCCEEDED": 3}
    status, listed = request(f"{url}/api/v1/jobs?state=SUCCEEDED")
    assert status == 200 and "json-1" in [j["id"] for j in listed]
    assert all("tasks" not in j for j in listed)


def test_cancel_stops_a_running_job(cluster: LocalCluster) -> None:
    url = follower_url(cluster)
    toml = b'name = "long"\n[[task]]\nname = "s"\nkind = "sleep"\nseconds = 60\n'
    status, reply = request(f"{url}/api/v1/jobs", "POST", toml, "application/toml")
    assert status == 201
    wait_for_state(url, reply["id"], {"RUNNING"})
    status, doc = request(f"{url}/api/v1/jobs/{reply['id']}/cancel", "POST")
    assert status == 200 and doc["state"] == "CANCELLED"
    assert wait_for_state(url, reply["id"], {"CANCELLED"})["tasks"][0]["state"] == "CANCELLED"


def test_a_tasks_output_comes_from_its_executor(cluster: LocalCluster) -> None:
    url = follower_url(cluster)
    job = {
        "name": "out",
        "task": [{"name": "talk", "kind": "shell", "command": "echo to-out; echo to-err >&2"}],
    }
    status, reply = request(f"{url}/api/v1/jobs", "POST", json.dumps(job).encode(), "application/json")
    assert status == 201
    wait_for_state(url, reply["id"], {"SUCCEEDED"})
    status, doc = request(f"{url}/api/v1/jobs/{reply['id']}/tasks/talk/logs")
    assert status == 200, doc
    assert (doc["stdout"], doc["stderr"], doc["attempt"], doc["truncated"]) == (
        "to-out\n",
        "to-err\n",
        1,
        False,
    )
    assert doc["task"] == f"{reply['id']}/0" and doc["executor"]
    status, doc = request(f"{url}/api/v1/jobs/{reply['id']}/tasks/nope/logs")
    assert status == 404 and "talk" in doc["error"]


TOML = "application/toml"


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "status", "message"),
    [
        ("POST", "/api/v1/jobs", b"", TOML, 400, "empty"),
        ("POST", "/api/v1/jobs", b"name = = 1", TOML, 400, "TOML"),
        ("POST", "/api/v1/jobs", b'name = "x"\nbogus = 1\n[[task]]\nkind = "noop"\nname = "t"', TOML, 400, "bogus"),
        ("POST", "/api/v1/jobs", b'name = "x"\n[[task]]\nname = "t"\nkind = "warp"', TOML, 400, "warp"),
        ("POST", "/api/v1/jobs", b'{"name": "x", "task": []}', "application/json", 400, "task"),
        ("POST", "/api/v1/jobs", b'{"name": "x", "task": [{"name": "a", "kind": "noop", "after": ["b"]}, '
         b'{"name": "b", "kind": "noop", "after": ["a"]}]}', "application/json", 400, "a cycle: 'a' -> 'b'"),
        ("POST", "/api/v1/jobs?id=bad%20id", b'name = "x"\n[[task]]\nname = "t"\nkind = "noop"', TOML, 400, "id"),
        # What a web page may post to another site without asking first is never read as a job.
        ("POST", "/api/v1/jobs", b'{"name": "x", "task": [{"name": "t", "kind": "noop"}]}', "text/plain", 415,
         "application/json, application/toml or application/yaml"),
        ("POST", "/api/v1/jobs", b'name = "x"\n[[task]]\nname = "t"\nkind = "noop"', None, 415, "Content-Type"),
        ("GET", "/api/v1/jobs?state=DONE", None, None, 400, "DONE"),
        ("GET", "/api/v1/jobs/no-such-job", None, None, 404, "no-such-job"),
        ("POST", "/api/v1/jobs/no-such-job/cancel", None, None, 404, "no-such-job"),
        ("GET", "/api/v1/nothing-here", None, None, 404, "Not Found"),
        ("DELETE", "/api/v1/jobs", None, None, 405, "Not Allowed"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_clear_4xx_and_write_nothing(
    cluster: LocalCluster,
    method: str,
    path: str,
    body: bytes | None,
    ctype: str | None,
    status: int,
    message: str,
) -> None:
    url = follower_url(cluster)
    before = request(f"{url}/api/v1/jobs")[1]
    got, doc = request(url + path, method, body, ctype)
    assert got == status
    assert message in doc["error"]
    assert request(f"{url}/api/v1/jobs")[1] == before


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample of an exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_metrics_of_every_program_pass_promtool_and_count_real_work(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run does)"
    with cluster.client() as c:
        job = c.submit_job(
            {"name": "m", "task": [{"name": "t", "kind": "shell", "command": "true", "count": 5}]}
        )
        assert c.wait_job(job["id"], timeout=60)["state"] == "SUCCEEDED"
        leader = c.cluster_status()["leader"]["name"]
        # Ten long tasks on four slots: six wait in the queue at their priority while we scrape.
        queued = c.submit_job(
            {
                "name": "q",
                "priority": 90,
                "task": [{"name": "s", "kind": "sleep", "seconds": 30, "count": 10}],
            }
        )
    urls = {p.name: p.http_url for p in [*cluster.masters, *cluster.executors]}
    scraped = {}
    texts = []
    for name, url in urls.items():
        status, text = request(f"{url}/metrics")
        assert status == 200
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"
        scraped[name] = _samples(text)
        texts.append(text)
        (tmp_path / f"{name}.prom").write_text(text)
    with cluster.client() as c:
        c.cancel_job(queued["id"])
    lead = scraped[leader]
    assert lead['rota_queue_depth{priority="90"}'] == 6
    assert lead["rota_leader"] == 1
    assert all(scraped[m.name]["rota_leader"] == 0 for m in cluster.masters if m.name != leader)
    assert lead['rota_tasks{state="SUCCEEDED"}'] >= 5
    assert lead['rota_jobs{state="SUCCEEDED"}'] >= 1
    assert lead["rota_task_attempts_total"] >= 5
    assert lead["rota_task_wait_seconds_count"] >= 5 and lead["rota_task_run_seconds_count"] >= 5
    assert lead["rota_etcd_txn_seconds_count"] >= 1 and lead["rota_etcd_txn_ops_sum"] >= 5
    assert lead["rota_executors"] == 2
    assert (
        'rota_jobs{state="SUCCEEDED"}' not in scraped[next(n for n in urls if n not in (leader, "e0", "e1"))]
    )
    ran = sum(
        v
        for e in ("e0", "e1")
        for k, v in scraped[e].items()
        if re.match(r'rota_executor_tasks_total\{kind="shell",outcome="succeeded"\}', k)
    )
    assert ran >= 5
    assert all(scraped[e]["rota_executor_attached"] == 1 for e in ("e0", "e1"))
    # Every series the Grafana dashboard in deploy/ queries is one these programs export.
    exported = {re.sub(r"\{.*", "", k) for s in scraped.values() for k in s}
    for text in texts:  # families with no sample now (an empty queue) still count
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
            exported |= {name, *(f"{name}{x}" for x in ("_bucket", "_sum", "_count") if kind == "histogram")}
    grafana = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for p in grafana["panels"]
        for t in p["targets"]
        for name in re.findall(r"\b(rota_[a-z_]+)", t["expr"])
    }
    assert queried and queried <= exported, queried - exported


def test_the_prometheus_config_in_deploy_is_valid() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (.ci/run does)"
    check = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_real_prometheus_scrapes_every_program(cluster: LocalCluster, tmp_path: Path) -> None:
    """Debian's Prometheus server, configured like deploy/prometheus.yml, scrapes the cluster."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: apt-get install prometheus (.ci/run does)"
    masters = [m.http_url.removeprefix("http://") for m in cluster.masters]
    executors = [e.http_url.removeprefix("http://") for e in cluster.executors]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n"
        f"  - job_name: rota-master\n    static_configs: [{{targets: {json.dumps(masters)}}}]\n"
        f"  - job_name: rota-executor\n    static_configs: [{{targets: {json.dumps(executors)}}}]\n"
    )
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent(),
    )
    try:
        api = f"http://127.0.0.1:{port}/api/v1/query?query="
        deadline = time.monotonic() + 60
        while True:
            try:
                up = request(api + "up")[1]["data"]["result"]
                leaders = request(api + "sum(rota_leader)")[1]["data"]["result"]
                attached = request(api + "sum(rota_executor_attached)")[1]["data"]["result"]
            except (OSError, KeyError, TypeError):
                up, leaders, attached = [], [], []
            if len(up) == 5 and all(r["value"][1] == "1" for r in up) and leaders and attached:
                break
            assert time.monotonic() < deadline, f"targets not all up after 60 s: {up}"
            time.sleep(0.5)
        assert leaders[0]["value"][1] == "1"
        assert attached[0]["value"][1] == "2"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_task_in_taskandgos_shape_and_a_job_in_yaml(cluster: LocalCluster) -> None:
    """Issue 16's seed formats: POST /api/v1/tasks makes a one-task job named by its task_id (a
    second post of that id is refused, 409); a job posted as YAML runs as its TOML twin would."""
    url = follower_url(cluster)
    task = {"task_id": "tag-1", "priority": 90, "data": "python:print(6 * 7)"}
    status, reply = request(f"{url}/api/v1/tasks", "POST", json.dumps(task).encode(), "application/json")
    assert (status, reply) == (201, {"id": "tag-1", "created": True})
    doc = wait_for_state(url, "tag-1", {"SUCCEEDED", "FAILED"})
    assert doc["state"] == "SUCCEEDED" and doc["priority"] == 90
    assert doc["tasks"][0]["result"]["stdout"] == "42\n"
    status, again = request(f"{url}/api/v1/tasks", "POST", json.dumps(task).encode(), "application/json")
    assert status == 409 and "tag-1" in again["error"]
    status, bad = request(
        f"{url}/api/v1/tasks", "POST", b'{"task_id": "t", "data": "ruby:1"}', "application/json"
    )
    assert status == 400 and "ruby" in bad["error"]
    body = b"name: yaml-job\ntask:\n  - name: hi\n    kind: shell\n    command: echo from yaml\n"
    status, reply = request(f"{url}/api/v1/jobs", "POST", body, "application/yaml")
    assert status == 201, reply
    doc = wait_for_state(url, reply["id"], {"SUCCEEDED", "FAILED"})
    assert doc["tasks"][0]["result"]["stdout"] == "from yaml\n"

"""Reading a long history a page at a time: list-jobs and get-job through gRPC, the CLI, the Python
API and HTTP, on a real three-master cluster (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest

from rota.devtools.localcluster import LocalCluster
from rota.protos import rota_pb2, rota_pb2_grpc

pytestmark = pytest.mark.etcd


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rota.client.cli", "--master-addr", cluster.addresses, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def http_get(url: str) -> tuple[int, Any, str]:
    """(status, JSON body, Link header) of one GET; 4xx is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("Link", "")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), ""


def next_url(base: str, link: str) -> str:
    assert link.endswith('>; rel="next"'), link
    return base + link[1 : link.index(">")]


def test_list_jobs_pages_from_newest_to_oldest_everywhere(local_cluster):
    cluster = local_cluster(executors=1, executor_slots=2)
    with cluster.client(timeout=30) as c:
        ids = [
            c.submit_job({"name": f"j{i}", "task": [{"name": "t", "kind": "noop"}]})["id"] for i in range(7)
        ]
        for job_id in ids:
            c.wait_job(job_id, timeout=60)
        running = c.submit_job({"name": "r", "task": [{"name": "t", "kind": "sleep", "seconds": 60}]})["id"]
        ids.append(running)

        # Python API: pages are the newest first, each printed oldest first, and they meet exactly.
        seen: list[str] = []
        before = None
        pages = 0
        while True:
            page, more = c.list_jobs_page(limit=3, before=before)
            pages += 1
            assert len(page) <= 3
            seen[:0] = [d["id"] for d in page]
            if not more:
                break
            before = page[0]["id"]
        assert seen == ids and pages == 3
        assert [d["id"] for d in c.list_jobs()] == ids  # under the default limit: everything
        assert [d["id"] for d in c.list_jobs(state="SUCCEEDED", limit=2)] == ids[5:7]
        assert [d["id"] for d in c.list_jobs(state="RUNNING", limit=2)] in ([running], [])

    # CLI: the next page is named on stderr; bad limits are usage errors; an unknown cursor says so.
    p = cli(cluster, "list-jobs", "--limit", "2")
    assert p.returncode == 0, p.stderr
    assert f"--before {ids[6]}" in p.stderr
    p = cli(cluster, "--json", "list-jobs", "--limit", "2", "--before", ids[6])
    assert p.returncode == 0 and [d["id"] for d in json.loads(p.stdout)] == ids[4:6]
    for bad in ("0", "10001", "x"):
        p = cli(cluster, "list-jobs", "--limit", bad)
        assert p.returncode == 2 and "--limit" in p.stderr, (bad, p.stderr)
    p = cli(cluster, "list-jobs", "--before", "no-such-job")
    assert p.returncode != 0 and "no job 'no-such-job' to list from" in p.stderr

    # HTTP: a Link header leads to the older page, and out-of-range values are 400s.
    base = cluster.masters[1].http_url
    status, page, link = http_get(f"{base}/api/v1/jobs?limit=5")
    assert status == 200 and [d["id"] for d in page] == ids[3:]
    status, page, link = http_get(next_url(base, link))
    assert status == 200 and [d["id"] for d in page] == ids[:3] and link == ""
    for query in ("limit=0", "limit=abc", "limit=10001"):
        status, body, _ = http_get(f"{base}/api/v1/jobs?{query}")
        assert status == 400 and "limit" in body["error"], query

    # gRPC: the bounds hold for callers that bypass the clients.
    with grpc.insecure_channel(cluster.masters[0].addr) as ch:
        stub = rota_pb2_grpc.MasterStub(ch)
        reply = stub.ListJobs(rota_pb2.ListJobsRequest(limit=1), timeout=10)
        assert [d["id"] for d in json.loads(reply.json)] == [running] and reply.more
        with pytest.raises(grpc.RpcError) as e:
            stub.ListJobs(rota_pb2.ListJobsRequest(limit=-1), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_million_task_job_is_read_page_by_page(local_cluster):
    """No executor: the job stays PENDING while it is read, page by page, through every surface."""
    n = 1_000_000
    cluster = local_cluster()
    with cluster.client(timeout=60) as c:
        job_id = c.submit_job({"name": "huge", "task": [{"name": "n", "kind": "noop", "count": n}]})["id"]
    with cluster.client(timeout=10) as c:
        seen = 0
        while seen < n:
            doc = c.get_job(job_id, tasks_from=seen, task_limit=10_000)
            assert doc["counts"] == {"PENDING": n}
            assert doc["tasks"][0]["id"] == f"{job_id}/{seen}" and len(doc["tasks"]) == 10_000
            seen += len(doc["tasks"])
        assert c.get_job(job_id, tasks_from=n, task_limit=5)["tasks"] == []
        with pytest.raises(ValueError, match="task_limit"):
            c.get_job(job_id, task_limit=10_001)

    p = cli(cluster, "--json", "get-job", job_id, "--tasks-from", str(n - 3), "--task-limit", "10")
    assert p.returncode == 0, p.stderr
    assert [t["name"] for t in json.loads(p.stdout)["tasks"]] == [f"n-{i}" for i in range(n - 3, n)]
    p = cli(cluster, "get-job", job_id, "--tasks-from", "500")
    assert p.returncode == 0 and "n-500" in p.stdout and f"{n - 520} more tasks (--tasks-from 520" in p.stdout
    p = cli(cluster, "get-job", job_id, "--task-limit", "10001")
    assert p.returncode == 2 and "--task-limit" in p.stderr

    base = cluster.masters[2].http_url
    status, doc, link = http_get(f"{base}/api/v1/jobs/{job_id}")
    assert status == 200 and len(doc["tasks"]) == 10_000
    status, doc, link = http_get(next_url(base, link))
    assert status == 200 and doc["tasks"][0]["id"] == f"{job_id}/10000"
    status, doc, link = http_get(f"{base}/api/v1/jobs/{job_id}?tasks_from={n - 1}&task_limit=2")
    assert status == 200 and [t["id"] for t in doc["tasks"]] == [f"{job_id}/{n - 1}"] and link == ""
    status, body, _ = http_get(f"{base}/api/v1/jobs/{job_id}?tasks_from=-1")
    assert status == 400 and "tasks_from" in body["error"]

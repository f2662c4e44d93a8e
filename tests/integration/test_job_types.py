"""Job types on a real cluster: a fanout job from the CLI and over HTTP, and its type after a failover."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from rota.devtools.localcluster import LocalCluster

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
FANOUT = ROOT / "sample" / "jobs" / "fanout.toml"


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rota.client.cli", "--master-addr", cluster.addresses, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def post_toml(url: str, text: str) -> tuple[int, Any]:
    req = urllib.request.Request(f"{url}/api/v1/jobs", data=text.encode(), method="POST")
    req.add_header("Content-Type", "application/toml")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def outputs(doc: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["result"]["stdout"] for t in doc["tasks"]}


def test_fanout_job_runs_each_item_once_and_keeps_its_type_across_a_failover(local_cluster):
    cluster: LocalCluster = local_cluster(executors=1, executor_slots=2)
    p = cli(cluster, "--json", "submit-job", "--config", str(FANOUT), "--wait")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert (doc["state"], doc["type"], doc["name"]) == ("SUCCEEDED", "fanout", "fanout-example")
    assert outputs(doc) == {
        "fanout-shard0": "item 0: apple\nitem 2: cherry\n",
        "fanout-shard1": "item 1: banana\nitem 3: damson\n",
    }

    # Over HTTP the master expands the job itself; the item that fails fails its shard.
    status, reply = post_toml(
        cluster.masters[1].http_url,
        'type = "fanout"\nname = "odd"\ncommand = \'echo "$FANOUT_ITEM"; [ "$FANOUT_ITEM" != b ]\'\n'
        'items = ["a", "b", "c"]\nmax-attempts = 1\n',
    )
    assert status == 201, reply
    status, bad = post_toml(
        cluster.masters[1].http_url, 'type = "fanout"\nname = "x"\ncommand = "true"\nitems = "a"\n'
    )
    assert status == 400 and "items: expected an array of strings" in json.dumps(bad), bad

    with cluster.client(timeout=20) as c:
        odd = c.wait_job(reply["id"], timeout=60)
        assert odd["state"] == "FAILED" and odd["type"] == "fanout"
        assert [t["state"] for t in odd["tasks"]] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
        assert outputs(odd) == {"fanout-shard0": "a\n", "fanout-shard1": "b\n", "fanout-shard2": "c\n"}

        # A new leader rebuilds both ended jobs from etcd, with their type and tasks as run.
        old = cluster.leader()
        old.signal(signal.SIGKILL)
        cluster.wait_for_leader(exclude=old.name, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                again = c.get_job(doc["id"])
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert again["type"] == "fanout" and outputs(again) == outputs(doc)
        assert c.get_job(reply["id"])["type"] == "fanout"
    p = cli(cluster, "get-job", doc["id"])
    assert p.returncode == 0 and "type:     fanout" in p.stdout, p.stdout

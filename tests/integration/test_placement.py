"""Placement by labels and resources on a real cluster (issue 16): a task constrained to zone=b
never runs on the zone=a executor; tasks asking for the one GPU run one at a time, the others
waiting with the reason; a task asking for more memory than any executor has is refused at
submit with the reason, by the CLI (exit 2) and over gRPC."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rota.client.errors import RequestError

pytestmark = [pytest.mark.etcd, pytest.mark.usefixtures("taskfuncs_importable")]

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def test_labels_and_resources_decide_where_and_when(local_cluster, wait_until, tmp_path):
    cluster = local_cluster()
    a = cluster.add_executor(
        slots=4, name="ea", args=["--labels", "zone=a", "--resources", "cpu=4,memory=1GiB"]
    )
    b = cluster.add_executor(
        slots=4, name="eb", args=["--labels", "zone=b", "--resources", "cpu=4,memory=1GiB,gpu=1"]
    )
    cluster.wait_for_executors(2)
    stamps = tmp_path / "stamps"
    job = {
        "name": "placed",
        "task": [
            {"name": "in-b", "kind": "call", "function": "taskfuncs:stamp", "args": [str(stamps), "b", 0.0],
             "count": 8, "constraints": {"zone": "b"}},
            {"name": "not-b", "kind": "call", "function": "taskfuncs:stamp", "args": [str(stamps), "a", 0.0],
             "count": 4, "constraints": {"zone": {"not-in": ["b"]}}},
            {"name": "gpu", "kind": "call", "function": "taskfuncs:step", "args": [str(stamps) + ".gpu", "g", 1.0],
             "count": 3, "resources": {"gpu": 1}},
        ],
    }  # fmt: skip
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(job)["id"]
        waiting = wait_until(
            "a gpu task waiting for the gpu",
            lambda: next(
                (t for t in c.get_job(job_id)["tasks"] if "gpu" in t.get("pending_reason", "")), None
            ),
        )
        assert waiting["name"].startswith("gpu-")
        assert waiting["pending_reason"] == "waiting for: gpu 1: the most an executor has free is 0 (eb)"
        doc = c.wait_job(job_id, timeout=60)
        executors = {e["name"]: e for e in c.list_executors()}
    assert doc["state"] == "SUCCEEDED"
    ran_on = {t["name"]: t["executor"] for t in doc["tasks"]}
    ids = {name: e["id"] for name, e in executors.items()}
    assert all(ran_on[f"in-b-{i}"] == ids["eb"] for i in range(8))
    assert all(ran_on[f"not-b-{i}"] == ids["ea"] for i in range(4))
    assert all(ran_on[f"gpu-{i}"] == ids["eb"] for i in range(3))
    spans = sorted(
        tuple(map(float, line.split()[1:])) for line in (tmp_path / "stamps.gpu").read_text().splitlines()
    )
    assert len(spans) == 3 and all(s2 >= e1 for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False))
    assert executors["eb"]["resources"] == {"cpu": 4, "memory": 2**30, "gpu": 1}
    assert executors["eb"]["resources_free"]["gpu"] == 1
    assert a.alive() and b.alive()


def test_more_memory_than_any_executor_has_is_refused_at_submit(local_cluster, tmp_path):
    cluster = local_cluster()
    cluster.add_executor(name="small", args=["--resources", "cpu=2,memory=1GiB"])
    cluster.wait_for_executors(1)
    path = tmp_path / "big.toml"
    path.write_text(
        'name = "big"\n[[task]]\nname = "train"\nkind = "shell"\ncommand = "true"\nresources = { memory = "64GiB" }\n'
    )
    p = subprocess.run(
        [sys.executable, "-m", "rota.client.cli", "--master-addr", cluster.addresses, "submit-job", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert (
        "task[0] (train) can run on no executor: memory 64GiB: the most an executor has is 1GiB (small)"
        in p.stderr
    )
    with cluster.client(timeout=30) as c:
        with pytest.raises(RequestError, match="no executor has labels zone=c"):
            c.submit_job(
                {
                    "name": "c",
                    "task": [{"name": "t", "kind": "shell", "command": "true", "constraints": {"zone": "c"}}],
                }
            )
        assert c.list_jobs() == []

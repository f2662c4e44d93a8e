"""The dataflow job type end to end (issue 15): a small flow runs to SUCCEEDED and its sink files
hold every record exactly once, in order, DDL barriers respected; so too when the executor running a
binlog task is SIGKILLed mid-flow (after the sinks have written something)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from rota.common.jobspec import load_job
from rota.dataflow.config import parse
from rota.dataflow.report import check

pytestmark = pytest.mark.etcd

FAST_LEASE = ["--keepalive-ttl", "2s", "--keepalive-interval", "200ms"]
TABLES, SERVERS = 3, 2
SLOTS = TABLES + 2 * SERVERS + 1


def _flow(out: Path, **extra) -> dict:
    return {
        "flow-id": "flow",
        "table-num": TABLES,
        "servers": ["a", "b"],
        "rcd-cnt": 2000,
        "ddl-freq": 500,
        "out-dir": str(out),
        **extra,
    }


def _report(doc: dict) -> dict:
    report = next(t for t in doc["tasks"] if t["name"] == "report")
    return json.loads(report["result"]["stdout"].strip().splitlines()[-1])


def _sinks_written(out: Path) -> bool:
    return any(p.stat().st_size > 0 for p in out.glob("flow/chain_*/table_*"))


def test_a_flow_runs_to_success_with_every_record_exactly_once(local_cluster, tmp_path):
    cluster = local_cluster()
    cluster.add_executor(slots=SLOTS)
    cluster.wait_for_executors(1)
    flow = _flow(tmp_path / "out", pace=0)
    with cluster.client(timeout=30) as c:
        doc = c.wait_job(c.submit_job(load_job(flow).to_dict())["id"], timeout=120)
    assert doc["state"] == "SUCCEEDED", doc
    report = _report(doc)
    assert report["check"] == "ok" and report["records"] == TABLES * 2000, report
    assert report["records_per_s"] > 0 and report["latency_ms"]["end_to_end"]["max"] > 0
    recheck = check(parse({k: v for k, v in flow.items() if k != "type"}))
    assert recheck["check"] == "ok" and recheck["records"] == TABLES * 2000, recheck


def test_an_endless_flow_streams_until_cancelled_and_what_it_wrote_is_in_order(
    local_cluster, tmp_path, wait_until
):
    """rcd-cnt = 0: the flow runs (DDL barriers included) until cancelled; the files then hold a
    gap-free prefix of each chain's records, in order, DDL rule kept."""
    cluster = local_cluster()
    cluster.add_executor(slots=SLOTS)
    cluster.wait_for_executors(1)
    out = tmp_path / "out"
    flow = _flow(out, **{"rcd-cnt": 0, "ddl-freq": 400, "pace": 1000})
    cfg = parse({k: v for k, v in flow.items() if k != "type"})
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(load_job(flow).to_dict())["id"]
        wait_until(
            "the sinks past two DDL records",
            lambda: any(int(line.split()[1]) >= 2 for line in _lines(out)),
            60,
        )
        c.cancel_job(job_id)
        doc = c.wait_job(job_id, timeout=60)
    assert doc["state"] == "CANCELLED", doc
    report = check(cfg)
    assert report["check"] == "ok" and report["records"] > 800 * TABLES, report


def _lines(out: Path) -> list[str]:
    """The last complete line of each sink file."""
    return [line for p in out.glob("flow/chain_*/table_*") for line in p.read_text().split("\n")[:-1][-1:]]


def _process_running(cluster, c, job_id: str, task_name: str):
    """The executor process that runs ``task_name`` of the job now."""
    task = next(t for t in c.get_job(job_id)["tasks"] if t["name"] == task_name)
    name = next(e["name"] for e in c.list_executors() if e["id"] == task["executor"])
    return next(p for p in cluster.executors if p.name == name)


@pytest.mark.parametrize("fault", ["stage1", "binlog", "stage2", "twice", "leader"])
def test_kills_at_any_stage_lose_and_double_nothing(local_cluster, tmp_path, wait_until, fault):
    """Two executors with room for the whole gang each. stage1: the executor of a producer dies as
    the flow starts; binlog: the executor of binlog 0 dies once the sinks wrote (its tasks run again
    on the other, from their checkpoints); stage2: the executor of a chain dies while the sinks
    write; twice: a binlog's executor, then (a fresh executor joined) the one
    running a chain; leader: the leader master. Each time every record is in the sink files
    exactly once, in order, DDL rule kept, and the job's report says so."""
    cluster = local_cluster()
    for _ in range(2):
        cluster.add_executor(slots=SLOTS, args=FAST_LEASE)
    cluster.wait_for_executors(2)
    out = tmp_path / "out"
    # Twice: slower, so that the second kill still finds the flow running (10 s, not 4).
    flow = _flow(out, **{"rcd-cnt": 6000, "ddl-freq": 1500, "pace": 600 if fault == "twice" else 1500})
    chain0_before = 0
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(load_job(flow).to_dict())["id"]
        if fault == "stage1":
            wait_until(
                "the producers running",
                lambda: all(
                    t["state"] == "RUNNING"
                    for t in c.get_job(job_id)["tasks"]
                    if t["name"].startswith("producer")
                ),
                60,
            )
            _process_running(cluster, c, job_id, "producer-shard0").signal(signal.SIGKILL)
        else:
            wait_until("the sinks writing", lambda: _sinks_written(out), 60)
        if fault == "binlog":
            _process_running(cluster, c, job_id, "binlog-shard0").signal(signal.SIGKILL)
        elif fault == "stage2":
            _process_running(cluster, c, job_id, "chain-shard1").signal(signal.SIGKILL)
        elif fault == "twice":
            _process_running(cluster, c, job_id, "binlog-shard1").signal(signal.SIGKILL)
            cluster.add_executor(slots=SLOTS, args=FAST_LEASE)
            cluster.wait_for_executors(2)

            def binlog_back() -> bool:
                doc = c.get_job(job_id)
                assert doc["state"] == "RUNNING", f"the flow ended before the second kill: {doc['state']}"
                task = next(t for t in doc["tasks"] if t["name"] == "binlog-shard1")
                return task["attempt"] >= 2 and task["state"] == "RUNNING"

            wait_until("binlog 1 running again", binlog_back, 60)
            chain0_before = next(t for t in c.get_job(job_id)["tasks"] if t["name"] == "chain-shard0")[
                "attempt"
            ]
            _process_running(cluster, c, job_id, "chain-shard0").signal(signal.SIGKILL)
        elif fault == "leader":
            old = cluster.leader()
            old.signal(signal.SIGKILL)
            cluster.wait_for_leader(exclude=old.name, timeout=30)
        doc = c.wait_job(job_id, timeout=180)
    assert doc["state"] == "SUCCEEDED", doc
    report = doc["report"]
    assert report == _report(doc)
    assert report["check"] == "ok" and report["records"] == TABLES * 6000, report
    recheck = check(parse({k: v for k, v in flow.items() if k != "type"}))
    assert recheck["check"] == "ok" and recheck["records"] == TABLES * 6000, recheck
    if fault == "binlog":
        moved = next(t for t in doc["tasks"] if t["name"] == "binlog-shard0")
        assert moved["restarts"] >= 1 and moved["attempt"] >= 2, moved
    if fault == "twice":
        tasks = {t["name"]: t for t in doc["tasks"]}
        assert tasks["binlog-shard1"]["attempt"] >= 2, tasks["binlog-shard1"]
        assert tasks["chain-shard0"]["attempt"] > chain0_before, (chain0_before, tasks["chain-shard0"])
    if fault != "leader":
        assert sum(t.get("restarts", 0) for t in doc["tasks"]) >= 1, doc["tasks"]

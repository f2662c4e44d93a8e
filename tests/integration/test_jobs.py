"""Jobs end to end on a real cluster: three masters, embedded etcd, two executors (issue 3)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from rota.client.api import Client
from rota.devtools.localcluster import LocalCluster
from rota.protos import rota_pb2, rota_pb2_grpc

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample" / "jobs"


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rota.client.cli", "--master-addr", cluster.addresses, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def etcd_revision(cluster: LocalCluster) -> int:
    """The store revision, read straight from one embedded member's JSON gateway."""
    argv = cluster.masters[0].argv
    url = argv[argv.index("--etcd-client-urls") + 1]
    req = urllib.request.Request(url + "/v3/kv/range", data=json.dumps({"key": "AA=="}).encode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=5) as resp:
        return int(json.loads(resp.read())["header"]["revision"])


def test_every_kind_end_to_end(cluster):
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain on PATH here (.ci/run installs golang-go)")
    with cluster.client(timeout=10) as c:
        job = c.submit_job(SAMPLES / "all-kinds.toml")
        doc = c.wait_job(job["id"], timeout=180)
    tasks = {t["name"]: t for t in doc["tasks"]}
    assert doc["state"] == "SUCCEEDED", json.dumps(doc, indent=1)
    assert all(t["state"] == "SUCCEEDED" and t["attempt"] == 1 for t in tasks.values())
    assert tasks["shell-list"]["result"]["stdout"] == "argv without a shell\n"
    assert tasks["shell-string"]["result"]["stdout"] == f"JOB {job['id'].upper()}\n"
    assert tasks["python"]["result"]["stdout"].startswith("python 3.")
    assert tasks["call"]["result"]["value"] == 42
    assert tasks["go"]["result"]["stdout"] == "hello from go\n"


def test_the_etl_sample_runs_its_graph_and_reports(cluster):
    with cluster.client(timeout=10) as c:
        doc = c.wait_job(c.submit_job(SAMPLES / "etl.toml")["id"], timeout=120)
    assert doc["state"] == "SUCCEEDED", [(t["name"], t["state"], t["result"]) for t in doc["tasks"]]
    assert doc["report"] == {"rows": 100, "sum_of_squares": sum(r * r for r in range(1, 101))}


def test_shards_spread_over_both_executors_and_see_their_index(cluster):
    with cluster.client(timeout=10) as c:
        doc = c.wait_job(c.submit_job(SAMPLES / "split.toml")["id"], timeout=60)
    assert doc["state"] == "SUCCEEDED"
    assert len({t["executor"] for t in doc["tasks"]}) == 2
    outputs = sorted(t["result"]["stdout"] for t in doc["tasks"])
    assert all(f"shard {i} of 4" in outputs[i] for i in range(4)), outputs


def test_call_batch_and_failures_are_reported(cluster):
    job = {
        "name": "mixed",
        "max-attempts": 2,
        "task": [
            {"name": "mul", "kind": "call", "function": "operator:mul", "args": [6, 7], "count": 20},
            {"name": "bad", "kind": "shell", "command": ["sh", "-c", "echo oops >&2; exit 3"]},
        ],
    }
    with cluster.client(timeout=10) as c:
        doc = c.wait_job(c.submit_job(job)["id"], timeout=60)
    assert doc["state"] == "FAILED"
    assert doc["counts"] == {"SUCCEEDED": 20, "FAILED": 1}
    bad = next(t for t in doc["tasks"] if t["name"] == "bad")
    assert bad["attempt"] == 2 and bad["result"]["exit_code"] == 3 and bad["result"]["stderr"] == "oops\n"
    assert {t["result"]["value"] for t in doc["tasks"] if t["name"].startswith("mul")} == {42}


def test_same_id_twice_makes_one_job(cluster):
    with cluster.client(timeout=10) as c:
        first = c.submit_job(SAMPLES / "hello.toml", job_id="same-id-1")
        second = c.submit_job(SAMPLES / "hello.toml", job_id="same-id-1")
        jobs = [j for j in c.list_jobs() if j["id"] == "same-id-1"]
    assert first == {"id": "same-id-1", "created": True}
    assert second == {"id": "same-id-1", "created": False}
    assert len(jobs) == 1


def test_cancel_kills_a_running_task(cluster, tmp_path, pid_alive):
    pid_file = tmp_path / "pid"
    job = {
        "name": "long",
        "task": [{"name": "s", "kind": "shell", "command": f"echo $$ > {pid_file}; exec sleep 60"}],
    }
    with cluster.client(timeout=10) as c:
        job_id = c.submit_job(job)["id"]
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        doc = c.cancel_job(job_id)
        assert doc["state"] == "CANCELLED"
        deadline = time.monotonic() + 10
        while pid_alive(pid):
            assert time.monotonic() < deadline, "the cancelled task's process still runs"
            time.sleep(0.05)
        assert c.get_job(job_id)["tasks"][0]["state"] == "CANCELLED"
    p = cli(cluster, "wait-job", job_id)
    assert p.returncode == 1, p.stderr


@pytest.mark.parametrize(
    "content, needle",
    [
        ("name = 'x'\n[[task]\n", "invalid TOML"),
        ("name = 'x'\ncolour = 1\n[[task]]\nname='t'\nkind='noop'\n", "unknown key 'colour'"),
        ("name = 'x'\n[[task]]\nname='t'\nkind='sleep'\nseconds='long'\n", "task[0].seconds"),
        ("name = 'x'\n[[task]]\nname='t'\nkind='teleport'\n", "unknown kind 'teleport'"),
        ("", "no tasks"),
        ("name = 'x'\n[[task]]\nname='t'\nkind='noop'\ncount=2000000\n", "1000000"),
    ],
    ids=["syntax", "unknown-key", "wrong-type", "unknown-kind", "empty", "oversize"],
)
def test_bad_job_files_exit_2_and_write_nothing(cluster, tmp_path, content, needle):
    f = tmp_path / "bad.toml"
    f.write_text(content)
    before = etcd_revision(cluster)
    p = cli(cluster, "submit-job", "--config", str(f))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle in p.stderr and str(f) in p.stderr and "Traceback" not in p.stderr
    assert etcd_revision(cluster) == before


def test_master_rejects_a_bad_spec_with_invalid_argument(cluster):
    before = etcd_revision(cluster)
    for m in cluster.masters:  # the leader and the followers alike
        with grpc.insecure_channel(m.addr) as ch:
            stub = rota_pb2_grpc.MasterStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.SubmitJob(
                    rota_pb2.SubmitJobRequest(spec_json=b'{"name": "x", "task": []}', id="x1"), timeout=10
                )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no tasks" in e.value.details()
    assert etcd_revision(cluster) == before


def test_cli_submit_wait_get_list(cluster):
    p = cli(cluster, "--json", "submit-job", "--config", str(SAMPLES / "hello.toml"), "--wait")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["state"] == "SUCCEEDED" and doc["counts"] == {"SUCCEEDED": 2}
    assert set(doc) == {"id", "name", "state", "priority", "counts", "tasks"}
    assert set(doc["tasks"][0]) == {
        "id",
        "name",
        "state",
        "attempt",
        "failures",
        "lost",
        "executor",
        "result",
    }
    assert set(doc["tasks"][0]["result"]) >= {"exit_code", "stdout", "stderr", "value", "error"}
    p = cli(cluster, "get-job", doc["id"])
    assert p.returncode == 0 and "hello from rota" in p.stdout and "SUCCEEDED" in p.stdout
    p = cli(cluster, "--json", "list-jobs", "--state", "succeeded")
    assert p.returncode == 0 and doc["id"] in {j["id"] for j in json.loads(p.stdout)}
    assert all("tasks" not in j for j in json.loads(p.stdout))
    p = cli(cluster, "--json", "list-executors")
    executors = json.loads(p.stdout)
    assert len(executors) == 2 and all(
        set(e) >= {"id", "name", "addr", "slots", "running", "labels", "state"} for e in executors
    )
    p = cli(cluster, "get-job", "no-such-job")
    assert p.returncode == 2 and "no job 'no-such-job'" in p.stderr
    with Client(cluster.masters[1].addr, timeout=10) as c:  # a follower or the leader: same answer
        assert c.get_job(doc["id"])["state"] == "SUCCEEDED"


REPORT_JOB = """name = "reported"
[[task]]
name = "work"
kind = "noop"
count = 2
[[task]]
name = "sum"
kind = "python"
report = true
code = '''
print("records  42")
print('{"records": 42, "latency_ms": {"p50": 1.5, "p99": 4}}')
'''
"""


def test_a_report_task_makes_the_jobs_report(cluster, tmp_path):
    job = tmp_path / "report.toml"
    job.write_text(REPORT_JOB)
    p = cli(cluster, "submit-job", "--config", str(job), "--wait")
    assert p.returncode == 0, p.stderr
    assert p.stdout.rstrip().endswith("report:\n  records:    42\n  latency_ms: p50=1.5  p99=4"), p.stdout
    job_id = p.stdout.split()[1]
    p = cli(cluster, "--json", "get-job", job_id)
    assert json.loads(p.stdout)["report"] == {"records": 42, "latency_ms": {"p50": 1.5, "p99": 4}}
    p = cli(cluster, "get-job", job_id, "--tasks-from", "1")
    assert "report:\n  records:    42" in p.stdout, p.stdout
    with Client(cluster.masters[1].addr, timeout=10) as c:
        call = {
            "name": "r",
            "kind": "call",
            "function": "builtins:dict",
            "kwargs": {"ok": True},
            "report": True,
        }
        assert c.run_job({"name": "by-call", "task": [call]}, timeout=60)["report"] == {"ok": True}
        assert "report" not in c.run_job(
            {"name": "plain", "task": [{"name": "n", "kind": "noop"}]}, timeout=60
        )
    two = tmp_path / "two.toml"
    two.write_text(
        'name = "two"\n[[task]]\nname = "a"\nkind = "noop"\nreport = true\n[[task]]\nname = "b"\nkind = "noop"\nreport = true\n'
    )
    p = cli(cluster, "submit-job", "--config", str(two))
    assert p.returncode == 2 and "task[1].report" in p.stderr, p.stderr


def test_priority_high_runs_before_low_on_one_slot(local_cluster):
    cluster = local_cluster(executors=1, executor_slots=1)

    def stamp(name, priority):
        return {"name": name, "priority": priority,
                "task": [{"name": "t", "kind": "python", "code": "import time; print(time.time())"}]}  # fmt: skip

    with cluster.client(timeout=10) as c:
        blocker = c.submit_job({"name": "blocker", "task": [{"name": "b", "kind": "sleep", "seconds": 1.5}]})
        deadline = time.monotonic() + 20
        while c.get_job(blocker["id"])["state"] != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        low = c.submit_job(stamp("low", "low"))
        high = c.submit_job(stamp("high", "high"))
        t_low = float(c.wait_job(low["id"], timeout=60)["tasks"][0]["result"]["stdout"])
        t_high = float(c.wait_job(high["id"], timeout=60)["tasks"][0]["result"]["stdout"])
    assert t_high < t_low


def test_priority_holds_with_work_queued_on_the_executors(local_cluster, tmp_path, monkeypatch):
    """Default flow control queues short tasks on the executors; a later, more urgent task must still
    start before the queued ones instead of waiting for a credit to free up behind them."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    )
    cluster = local_cluster(executors=2, executor_slots=1)
    stamps = tmp_path / "stamps"

    def job(label, count, seconds, priority):
        return {"name": label, "priority": priority, "task": [
            {"name": label, "kind": "call", "function": "taskfuncs:stamp", "count": count,
             "args": [str(stamps), label, seconds]}]}  # fmt: skip

    def started():
        lines = stamps.read_text().splitlines() if stamps.exists() else []
        return [(line.split()[0], float(line.split()[1])) for line in lines]

    with cluster.client(timeout=10) as c:
        low = c.submit_job(job("low", 300, 0.03, 10))
        deadline = time.monotonic() + 60
        while len(started()) < 60:  # long enough for the executors' credit to fill their queues
            assert time.monotonic() < deadline, "the low-priority job does not progress"
            time.sleep(0.05)
        queued = sum(e["running"] for e in c.list_executors())
        submitted = time.time()
        high = c.submit_job(job("high", 6, 0.0, 90))
        assert c.wait_job(high["id"], timeout=60)["state"] == "SUCCEEDED"
        c.cancel_job(low["id"])
    highs = [t for label, t in started() if label == "high"]
    assert min(highs) > submitted
    # Counted from the first urgent start, not from the submission: how long the submission takes
    # to reach the executors depends on the machine's load, and low tasks keep starting meanwhile.
    overtaken = [t for label, t in started() if label == "low" and min(highs) < t < max(highs)]
    assert queued > 2, f"nothing was queued on the executors ({queued} tasks held)"
    # Once the urgent tasks are there they go first: at most one low task per executor slips in
    # (one that was starting as they arrived); waiting for credit instead would interleave a low
    # task with each urgent one.
    assert len(overtaken) <= 2, f"{len(overtaken)} low-priority tasks started among the urgent ones"


def test_a_wait_longer_than_the_client_timeout_is_not_cut_short(local_cluster):
    """A WaitJob call is held by the master for the wait itself: each try gets that on top of the
    client's timeout, or waiting on any job longer than a few seconds fails on every master."""
    cluster = local_cluster(executors=1, executor_slots=1)
    with cluster.client(timeout=1) as c:
        job = c.submit_job({"name": "long", "task": [{"name": "s", "kind": "sleep", "seconds": 30}]})
        t0 = time.monotonic()
        seen = []
        with pytest.raises(TimeoutError, match="still"):
            c.wait_job(job["id"], timeout=5, progress=seen.append)
        assert time.monotonic() - t0 >= 4.9
        # While the job runs, the waits carry its counts, never its tasks.
        assert seen and all("tasks" not in doc and doc["counts"] for doc in seen)
        c.cancel_job(job["id"])


def test_submit_and_wait_in_one_call(local_cluster):
    """run_job commits and waits in one SubmitJob call; a job outliving that hold is then waited for,
    and a retried submission of the same id stays one job."""
    cluster = local_cluster(executors=1, executor_slots=1)
    with cluster.client(timeout=10) as c:
        doc = c.run_job({"name": "quick", "task": [{"name": "t", "kind": "call", "function": "operator:mul",
                                                     "args": [6, 7]}]}, job_id="quick-1")  # fmt: skip
        assert doc["state"] == "SUCCEEDED" and doc["tasks"][0]["result"]["value"] == 42
        assert c.run_job({"name": "other", "task": [{"name": "t", "kind": "noop"}]}, job_id="quick-1") == doc
        seen = []
        slow = {"name": "slow", "task": [{"name": "s", "kind": "sleep", "seconds": 1.2}]}
        doc = c.run_job(slow, job_id="slow-1", progress=seen.append)
        assert doc["state"] == "SUCCEEDED" and doc["tasks"][0]["attempt"] == 1
        assert seen and seen[0]["state"] in ("PENDING", "RUNNING") and "tasks" not in seen[0]
        with pytest.raises(TimeoutError, match="still"):
            c.run_job({**slow, "task": [{**slow["task"][0], "seconds": 30}]}, job_id="slow-2", timeout=0.5)
        c.cancel_job("slow-2")
        assert c.get_job("slow-2")["state"] == "CANCELLED"
    before = etcd_revision(cluster)
    with grpc.insecure_channel(cluster.masters[0].addr) as ch:
        stub = rota_pb2_grpc.MasterStub(ch)
        for bad in (-1.0, float("nan"), float("inf"), 301.0):
            spec = b'{"name": "x", "task": [{"name": "t", "kind": "noop"}]}'
            with pytest.raises(grpc.RpcError) as e:
                stub.SubmitJob(rota_pb2.SubmitJobRequest(spec_json=spec, id="held", wait=bad), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "wait must be" in e.value.details()
            with pytest.raises(grpc.RpcError) as e:
                stub.WaitJob(rota_pb2.WaitJobRequest(id="quick-1", timeout=bad), timeout=10)
            assert (
                e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "timeout must be" in e.value.details()
            )
    assert etcd_revision(cluster) == before


def test_executor_refuses_kinds_not_allowed(local_cluster):
    cluster = local_cluster(executors=1, executor_slots=1, executor_args=["--allow-kinds", "noop,sleep"])
    with cluster.client(timeout=10) as c:
        (ex,) = c.list_executors()
        assert ex["kinds"] == ["noop", "sleep"]
        shell = c.submit_job({"name": "s", "task": [{"name": "t", "kind": "shell", "command": ["true"]}]})
        noop = c.submit_job({"name": "n", "task": [{"name": "t", "kind": "noop"}]})
        assert c.wait_job(noop["id"], timeout=30)["state"] == "SUCCEEDED"
        time.sleep(0.5)
        doc = c.get_job(shell["id"])
    assert doc["state"] == "PENDING" and doc["tasks"][0]["attempt"] == 0


def test_wait_job_on_a_hundred_thousand_tasks_works_with_a_one_second_client_timeout(local_cluster):
    """Every call stays small: waiting polls carry counts, and the whole document comes in pages."""
    cluster = local_cluster(executors=2, executor_slots=2)
    with cluster.client(timeout=30) as c:
        job = c.submit_job({"name": "big", "task": [{"name": "n", "kind": "noop", "count": 100_000}]})
        assert job["created"]
    p = cli(cluster, "--timeout", "1", "--json", "wait-job", job["id"])
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["counts"] == {"SUCCEEDED": 100_000}
    assert [t["id"] for t in doc["tasks"]] == [f"{job['id']}/{i}" for i in range(100_000)]
    assert all(t["attempt"] == 1 and t["state"] == "SUCCEEDED" for t in doc["tasks"])
    with cluster.client(timeout=1) as c:
        assert c.get_job(job["id"])["tasks"] == doc["tasks"]
    with grpc.insecure_channel(cluster.masters[0].addr) as ch:
        stub = rota_pb2_grpc.MasterStub(ch)
        page = json.loads(
            stub.GetJob(rota_pb2.GetJobRequest(id=job["id"], task_offset=99_999, task_limit=5)).json
        )
        assert [t["id"] for t in page["tasks"]] == [f"{job['id']}/99999"]
        with pytest.raises(grpc.RpcError) as e:
            stub.GetJob(rota_pb2.GetJobRequest(id=job["id"], task_offset=-1, task_limit=5), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "task_offset" in e.value.details()


def test_leader_change_mid_job_completes_each_task_once(local_cluster, tmp_path):
    cluster = local_cluster(executors=2, executor_slots=4)
    log = tmp_path / "side-effects.log"
    code = (
        "import os, time; time.sleep(0.2); "
        f"open({str(log)!r}, 'a').write(os.environ['ROTA_TASK_ID'] + ' ' + os.environ['ROTA_ATTEMPT'] + '\\n')"
    )
    job = {"name": "through-failover", "task": [{"name": "w", "kind": "python", "code": code, "count": 120}]}
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(job)["id"]
        deadline = time.monotonic() + 60
        while c.get_job(job_id)["counts"].get("SUCCEEDED", 0) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        leader = cluster.leader()
        leader.signal(signal.SIGKILL)
        cluster.wait_for_leader(exclude=leader.name, timeout=30)
        doc = c.wait_job(job_id, timeout=180)
    assert doc["state"] == "SUCCEEDED" and doc["counts"] == {"SUCCEEDED": 120}
    lines = log.read_text().splitlines()
    ids = [line.split()[0] for line in lines]
    assert sorted(set(ids)) == sorted(t["id"] for t in doc["tasks"])
    twice = sorted({i for i in ids if ids.count(i) > 1})
    logs = "\n".join(f"--- {p.name}\n{p.log_tail(40)}" for p in [*cluster.executors, *cluster.masters])
    assert not twice, f"{twice} ran twice although no executor was lost\n{logs}"


def test_every_master_address_works_for_jobs(cluster):
    """Promise 7: followers forward job calls to the leader."""
    leader = cluster.leader()
    followers = [m for m in cluster.masters if m is not leader]
    assert len(followers) == 2
    for m in followers:
        with Client(m.addr, timeout=10) as c:  # this one master only, so no failover hides a refusal
            assert c.master_info(m.addr)["role"] == "follower"
            job = c.submit_job({"name": f"via-{m.name}", "task": [{"name": "t", "kind": "noop"}]})
            doc = c.wait_job(job["id"], timeout=30)
            assert doc["state"] == "SUCCEEDED" and c.get_job(job["id"])["id"] == job["id"]
            assert job["id"] in {j["id"] for j in c.list_jobs()}
            assert len(c.list_executors()) == 2

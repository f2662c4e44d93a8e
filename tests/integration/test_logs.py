"""``master-client logs`` on a real cluster: output streamed from the executor while the task runs,
read whole after it ended, and clear refusals (exit 2) when there is nothing to read."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc
import pytest

from rota.devtools.localcluster import LocalCluster
from rota.protos import rota_pb2, rota_pb2_grpc

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
MASTER_CLIENT = ROOT / "bin" / "master-client"

# Eight lines on each stream over two seconds; after the first ones it waits (a minute at most) for the
# test to create the file GO, so they are known to reach the client while the task runs.
CHATTY = (
    'echo "out 1"; echo "err 1" >&2; n=0; while [ ! -e "{go}" ] && [ $n -lt 1200 ]; do sleep 0.05; '
    'n=$((n+1)); done; for i in 2 3 4 5 6 7 8; do sleep 0.25; echo "out $i"; echo "err $i" >&2; done'
)
OUT = "".join(f"out {i}\n" for i in range(1, 9))
ERR = "".join(f"err {i}\n" for i in range(1, 9))


def logs_cli(cluster: LocalCluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MASTER_CLIENT), "--master-addr", cluster.addresses, "logs", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def assert_refused(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def without_notes(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(keepends=True) if not line.startswith("master-client:"))


def pump(stream: IO[str], into: queue.Queue[tuple[float, str | None]]) -> None:
    """Each line with the time it arrived; None at EOF."""
    for line in stream:
        into.put((time.monotonic(), line))
    into.put((time.monotonic(), None))


def drain(lines: queue.Queue[tuple[float, str | None]]) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    while (item := lines.get(timeout=5))[1] is not None:
        out.append((item[0], item[1]))
    return out


Lines = queue.Queue[tuple[float, str | None]]


@contextlib.contextmanager
def following(cluster: LocalCluster, job_id: str) -> Iterator[tuple[subprocess.Popen[str], Lines, Lines]]:
    """``master-client logs JOB --follow`` running, its stdout and stderr lines arriving on two queues."""
    proc = subprocess.Popen(
        [str(MASTER_CLIENT), "--master-addr", cluster.addresses, "logs", job_id, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        out: Lines = queue.Queue()
        err: Lines = queue.Queue()
        for stream, into in ((proc.stdout, out), (proc.stderr, err)):
            threading.Thread(target=pump, args=(stream, into), daemon=True).start()
        yield proc, out, err
    finally:
        proc.kill()
        proc.wait()


def test_follow_streams_while_the_task_runs_then_the_whole_output_stays(local_cluster, tmp_path):
    cluster: LocalCluster = local_cluster(executors=2)
    go = tmp_path / "GO"
    talk = {"name": "talk", "kind": "shell", "command": CHATTY.format(go=go)}
    with cluster.client(timeout=10) as c:
        job_id = c.submit_job({"name": "chatty", "task": [talk]})["id"]
        with following(cluster, job_id) as (follower, lines, err_lines):
            first_at, first = lines.get(timeout=60)
            assert first == "out 1\n", first
            # The first line has reached the client while the task waits for GO.
            task = c.get_job(job_id)["tasks"][0]
            assert task["state"] == "RUNNING", task
            go.touch()
            assert follower.wait(timeout=60) == 0
            received = [(first_at, first), *drain(lines)]
            stderr = "".join(line for _, line in drain(err_lines))
        assert "".join(line for _, line in received) == OUT
        assert without_notes(stderr) == ERR
        # Lines 2 to 8 are printed over 1.75 s: they come as printed, not all at the end.
        assert received[-1][0] - received[1][0] > 1.0, "lines came all at once, not as they were printed"
        doc = c.wait_job(job_id, timeout=30)
        assert doc["state"] == "SUCCEEDED" and doc["tasks"][0]["result"]["stdout"] == OUT

        # After the end: the whole output again, by default, by name, by id and by index.
        for args in ([job_id], [job_id, "talk"], [job_id, f"{job_id}/0"], [job_id, "0"]):
            p = logs_cli(cluster, *args)
            assert (p.returncode, p.stdout, p.stderr) == (0, OUT, ERR), args
        p = subprocess.run(
            [str(MASTER_CLIENT), "--master-addr", cluster.addresses, "--json", "logs", job_id],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == {
            "job": job_id,
            "task": f"{job_id}/0",
            "name": "talk",
            "attempt": 1,
            "executor": doc["tasks"][0]["executor"],
            "stdout": OUT,
            "stderr": ERR,
            "notices": [],
        }
        # The Python API is the same code path.
        chunks = list(c.task_logs(job_id, "talk"))
        assert b"".join(d for s, d in chunks if s == "stdout").decode() == OUT
        assert b"".join(d for s, d in chunks if s == "stderr").decode() == ERR


def test_nothing_to_read_is_refused_with_the_reason(local_cluster, tmp_path):
    cluster: LocalCluster = local_cluster(executors=2)
    with cluster.client(timeout=10) as c:
        two = c.submit_job(
            {
                "name": "two",
                "task": [
                    {"name": "a", "kind": "shell", "command": "echo a"},
                    {"name": "b", "kind": "shell", "command": "echo b"},
                ],
            }
        )["id"]
        assert c.wait_job(two, timeout=60)["state"] == "SUCCEEDED"
        assert_refused(logs_cli(cluster, two, "nosuch"), "no task 'nosuch'", "a, b")
        assert_refused(logs_cli(cluster, two), "has 2 tasks", "a, b")
        assert_refused(logs_cli(cluster, "no-such-job"), "no-such-job")
        assert logs_cli(cluster, two, "b").stdout == "b\n"
        # The executor's own RPC refuses bad input.
        addr = c.list_executors()[0]["addr"]
        for bad in (
            rota_pb2.TaskLogsRequest(job_id="../etc", index=0),
            rota_pb2.TaskLogsRequest(job_id="j", index=-1),
        ):
            with pytest.raises(grpc.RpcError) as e:
                with grpc.insecure_channel(addr) as ch:
                    list(rota_pb2_grpc.ExecutorStub(ch).TaskLogs(bad, timeout=10))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value

        # Both one-slot executors busy until the test creates FREE: a new task stays PENDING till then.
        free = tmp_path / "FREE"
        hold = f'n=0; while [ ! -e "{free}" ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done'
        busy = c.submit_job(
            {"name": "busy", "task": [{"name": "s", "kind": "shell", "command": hold, "count": 2}]}
        )
        deadline = time.monotonic() + 30
        while sum(t["state"] == "RUNNING" for t in c.get_job(busy["id"])["tasks"]) < 2:
            assert time.monotonic() < deadline, c.get_job(busy["id"])
            time.sleep(0.05)
        later = c.submit_job(
            {"name": "later", "task": [{"name": "t", "kind": "shell", "command": "echo late"}]}
        )
        assert_refused(logs_cli(cluster, later["id"]), "has not started yet (PENDING)", "--follow")
        with following(cluster, later["id"]) as (follower, out, err):
            _, note = err.get(timeout=60)
            assert note is not None and "PENDING: waiting for it to start" in note, note
            free.touch()
            assert follower.wait(timeout=60) == 0
            assert [line for _, line in drain(out)] == ["late\n"]

        # The executor that ran it is gone, and its logs with it.
        ran_on = c.get_job(later["id"])["tasks"][0]["executor"]
        name = next(e["name"] for e in c.list_executors() if e["id"] == ran_on)
        victim = next(e for e in cluster.executors if e.name == name)
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        line = assert_refused(logs_cli(cluster, later["id"]), "executor")
        assert "left the cluster" in line or "does not answer" in line, line

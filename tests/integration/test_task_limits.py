"""Tasks kept in bounds (issue 13): a task that runs past a limit fails with a reason naming it,
and the executor survives to run the next job. Run in rlimit mode (``--cgroup off``) always, and in
cgroup v2 mode where this machine allows one (root, and a cgroup v2 root offering memory and pids).

Every misbehaving task is bounded on its own too (a fork bomb stops at 2000 children, a memory hog
asks for 1 GiB, a writer for 100 MiB, a timeout on each), so a limit that fails cannot hurt the machine.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.etcd

CGROUP_ROOT = "/sys/fs/cgroup"

FORK_BOMB = """
import os, sys, time
for i in range(2000):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
    except OSError as e:
        sys.exit(f"fork {i} failed: {e}")
time.sleep(30)
"""
HOG = "x = b'x' * (1 << 30)\nprint(len(x))"
WRITER = """
with open("big", "wb") as f:
    for _ in range(100):
        f.write(b"x" * (1 << 20))
"""
SPINNER = "while True:\n    pass"
ESCAPE = f"{sys.executable} -c 'import os, time; os.setsid(); time.sleep(300)' </dev/null >/dev/null 2>&1 & echo $!"


def _usable_cgroup_root() -> bool:
    try:
        with open(os.path.join(CGROUP_ROOT, "cgroup.subtree_control")) as f:
            enabled = set(f.read().split())
    except OSError:
        return False
    return os.geteuid() == 0 and {"memory", "pids"} <= enabled


@pytest.fixture(params=["rlimits", "cgroup"])
def mode_args(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    if request.param == "rlimits":
        yield ["--cgroup", "off"]
        return
    if not _usable_cgroup_root():
        pytest.skip("no cgroup v2 root with the memory and pids controllers, or not root")
    path = os.path.join(CGROUP_ROOT, f"rota-test-{os.getpid()}-{time.monotonic_ns()}")
    os.mkdir(path)
    try:
        yield ["--cgroup", path]
    finally:
        for sub, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):
            try:
                os.rmdir(sub)
            except OSError:
                pass


def _task(name: str, code: str, **limits: object) -> dict[str, object]:
    return {"name": name, "kind": "python", "code": code, "timeout": "30s", "limits": limits}


def test_tasks_past_their_limits_fail_naming_the_limit(local_cluster, mode_args, pid_alive, wait_until):
    cluster = local_cluster()
    cluster.add_executor(slots=6, args=[*mode_args, "--task-max-limits", "memory=1GiB"])
    cluster.wait_for_executors(1)
    job = {
        "name": "bounds",
        "max-attempts": 1,
        "task": [
            _task("fork-bomb", FORK_BOMB, processes=32),
            _task("hog", HOG, memory="64MiB"),
            _task("writer", WRITER, **{"file-size": "1MiB"}),
            _task("spinner", SPINNER, cpu="1s"),
            _task("greedy", "print('never runs')", memory="2GiB"),
            {
                "name": "call-hog",
                "kind": "call",
                "function": "builtins:bytearray",
                "args": [1 << 30],
                "limits": {"memory": "64MiB"},
            },
        ],
    }
    with cluster.client(timeout=30) as c:
        doc = c.run_job(job, timeout=90)
        errors = {t["name"]: (t["state"], (t["result"] or {}).get("error") or "") for t in doc["tasks"]}
        assert all(state == "FAILED" for state, _ in errors.values()), errors
        assert errors["fork-bomb"][1].startswith("process limit 32 reached"), errors
        assert errors["hog"][1].startswith("memory limit 64MiB exceeded"), errors
        assert errors["writer"][1].startswith("file-size limit 1MiB exceeded"), errors
        assert errors["spinner"][1] == "cpu limit 1s exceeded (SIGXCPU)", errors
        assert "memory 2GiB is over this executor's maximum of 1GiB" in errors["greedy"][1], errors
        assert errors["call-hog"][1].startswith("memory limit 64MiB exceeded"), errors

        # The executor survives all that, still attached, and runs the next job; a task's setsid
        # child goes with it when the task is cancelled.
        running = c.submit_job(
            {"name": "cancelled", "task": [{"name": "t", "kind": "shell", "command": f"{ESCAPE}; sleep 300"}]}
        )["id"]

        def printed() -> bytes:
            try:
                return b"".join(d for s, d in c.task_logs(running, "t") if s == "stdout").strip()
            except Exception:
                return b""

        escaped = int(wait_until("the task to print its child's pid", printed, every=0.1).split()[0])
        time.sleep(0.5)  # the child has called setsid() by now
        assert pid_alive(escaped)
        c.cancel_job(running)
        wait_until("the cancelled task's setsid child to go", lambda: not pid_alive(escaped), timeout=10)
        after = c.run_job({"name": "after", "task": [{"name": "ok", "kind": "python", "code": "print(1)"}]})
        assert after["state"] == "SUCCEEDED", after
        assert len(cluster.wait_for_executors(1)) == 1

"""``--run-as``: tasks run as another user, who cannot read the executor's secrets or signal it."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
import tempfile

import pytest

pytestmark = pytest.mark.etcd


@pytest.fixture
def work_dir():
    """A work dir nobody can pass through to (under /tmp, not under pytest's root-only dirs)."""
    path = tempfile.mkdtemp(prefix="rota-run-as-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_tasks_run_as_the_user_and_cannot_reach_the_executors_secrets(local_cluster, work_dir, tmp_path):
    assert os.geteuid() == 0, "run as root, as CI does: --run-as switches users"
    nobody = pwd.getpwnam("nobody")
    secret = tmp_path / "executor-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    cluster = local_cluster(masters=1)
    ex = cluster.add_executor(args=["--run-as", "nobody", "--work-dir", work_dir])
    cluster.wait_for_executors(1)
    script = (
        f"id -u; id -g; echo home=$HOME user=$USER; touch mine && echo wrote; "
        f"cat {secret} 2>&1 || echo secret-refused; "
        f"cat /proc/{ex.pid}/environ > /dev/null 2>&1 || echo environ-refused; "
        f"kill -0 {ex.pid} 2>&1 || echo signal-refused; "
        # its own calls (rota.task) reach the executor's socket through the 0711 work dir
        '"$ROTA_TASK_CLI" progress 0.5 as-nobody && echo progress-ok || echo progress-failed'
    )
    job = {
        "name": "run-as",
        "task": [
            {"name": "sh", "kind": "shell", "command": script},
            {"name": "fn", "kind": "call", "function": "os:getuid"},
            {
                "name": "calls",
                "kind": "call",
                "function": "rota.task:progress",
                "args": [1, "call as nobody"],
            },
        ],
    }
    with cluster.client(30) as c:
        doc = c.run_job(job, timeout=60)
    assert doc["state"] == "SUCCEEDED", doc
    out = doc["tasks"][0]["result"]["stdout"].split()
    assert out[:2] == [str(nobody.pw_uid), str(nobody.pw_gid)], out
    assert f"home={nobody.pw_dir}" in out and "user=nobody" in out and "wrote" in out, out
    assert "s3cret" not in out and "secret-refused" in out, out
    assert "environ-refused" in out and "signal-refused" in out, out
    if others_can_run(sys.executable):  # not so with an interpreter under /root (pyenv)
        assert "progress-ok" in out and doc["tasks"][0]["progress"] == {
            "fraction": 0.5,
            "message": "as-nobody",
        }
    assert doc["tasks"][2]["progress"] == {"fraction": 1.0, "message": "call as nobody"}, doc["tasks"][2]
    assert doc["tasks"][1]["result"]["value"] == nobody.pw_uid, doc["tasks"][1]
    tasks_root = os.path.join(work_dir, "tasks")
    # Root's, so the user cannot swap what the executor hands it for a link; its own folders inside.
    assert os.stat(tasks_root).st_uid == 0 and os.stat(tasks_root).st_mode & 0o777 == 0o711
    assert os.stat(os.path.join(tasks_root, "shared")).st_uid == nobody.pw_uid
    assert os.stat(work_dir).st_mode & 0o777 == 0o711
    # Other jobs' output is the executor's alone.
    assert os.stat(os.path.join(work_dir, "logs")).st_mode & 0o777 == 0o700


def others_can_run(program: str) -> bool:
    """Whether a user other than the owner may execute ``program`` (every folder above it passable)."""
    path = os.path.realpath(program)
    if not os.stat(path).st_mode & stat.S_IXOTH:
        return False
    while (parent := os.path.dirname(path)) != path:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
        path = parent
    return True


def test_run_as_names_a_real_other_user_and_a_reachable_work_dir(tmp_path):
    import subprocess

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rota.executor.main", "--join", "127.0.0.1:1", "--http-addr", "off", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    for args, needle in (
        (["--run-as", "no-such-user-here"], "no such user"),
        (["--run-as", "root"], "other than root"),
        (["--run-as", "nobody", "--work-dir", str(tmp_path / "w")], "cannot pass through"),
    ):
        p = run(*args)
        assert p.returncode == 2 and needle in p.stderr, (args, p.stderr)

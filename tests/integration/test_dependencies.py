"""Tasks that run after others, on a real cluster (issue 16): a diamond runs in order and passes
what each task gave to the next, across a leader SIGKILL too; a failed branch skips what runs
after it; a cycle is refused at submit with the names, by the CLI and by the masters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.etcd, pytest.mark.usefixtures("taskfuncs_importable")]

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def step(stamps: Path, name: str, seconds: float, **more) -> dict:
    return {
        "name": name,
        "kind": "call",
        "function": "taskfuncs:step",
        "args": [str(stamps), name, seconds],
        **more,
    }


def stamped(stamps: Path) -> dict[str, list[tuple[float, float]]]:
    """label -> [(start, end)] of every attempt that ran to its end."""
    out: dict[str, list[tuple[float, float]]] = {}
    for line in stamps.read_text().splitlines() if stamps.exists() else []:
        label, start, end = line.split()
        out.setdefault(label, []).append((float(start), float(end)))
    return out


@pytest.mark.parametrize("leader_kill", [False, True], ids=["steady", "leader-sigkill"])
def test_a_diamond_runs_in_order_and_passes_results(local_cluster, wait_until, tmp_path, leader_kill):
    """extract; transform (a shell task, two copies) and count after it; load after both. With
    ``leader_kill`` the leader is SIGKILLed while count runs: every task still runs once."""
    cluster = local_cluster(executors=2, executor_slots=2)
    stamps = tmp_path / "stamps"
    job = {
        "name": "etl",
        "max-attempts": 1,
        "task": [
            step(stamps, "extract", 0.2),
            {"name": "transform", "kind": "shell", "count": 2, "after": ["extract"],
             "command": f'echo "transform $(date +%s.%N) $(date +%s.%N)" >> {stamps}; echo "$ROTA_AFTER"'},
            step(stamps, "count", 3.0 if leader_kill else 0.5, after=["extract"]),
            step(stamps, "load", 0.1, after=["transform", "count"]),
        ],
    }  # fmt: skip
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(job)["id"]
        if leader_kill:
            wait_until("count running", lambda: c.get_job(job_id)["tasks"][3]["state"] == "RUNNING")
            old = cluster.leader()
            old.signal(signal.SIGKILL)
            cluster.wait_for_leader(exclude=old.name, timeout=30)
        doc = c.wait_job(job_id, timeout=90)
    assert doc["state"] == "SUCCEEDED", [(t["name"], t["state"], t["result"]) for t in doc["tasks"]]
    runs = stamped(stamps)
    assert {k: len(v) for k, v in runs.items()} == {"extract": 1, "transform": 2, "count": 1, "load": 1}
    assert min(s for s, _ in runs["transform"] + runs["count"]) >= runs["extract"][0][1]
    assert runs["load"][0][0] >= max(e for _, e in runs["transform"] + runs["count"])
    by_name = {t["name"]: t for t in doc["tasks"]}
    extract_gave = by_name["extract"]["result"]["value"]
    assert extract_gave == {"label": "extract", "after": {}}
    load_got = by_name["load"]["result"]["value"]["after"]
    assert load_got == {
        "transform-0": {"extract": extract_gave},
        "transform-1": {"extract": extract_gave},
        "count": {"label": "count", "after": {"extract": extract_gave}},
    }


def test_a_failed_branch_skips_what_runs_after_it(local_cluster, tmp_path):
    cluster = local_cluster(executors=1, executor_slots=2)
    stamps = tmp_path / "stamps"
    job = {
        "name": "broken",
        "max-attempts": 1,
        "task": [
            step(stamps, "a", 0.0),
            {"name": "b", "kind": "shell", "command": "exit 3", "after": ["a"]},
            step(stamps, "c", 0.0, after=["a"]),
            step(stamps, "d", 0.0, after=["b", "c"]),
            step(stamps, "e", 0.0, after=["d"]),
            step(stamps, "cleanup", 0.0, after=["b"], **{"on-failure": "run"}),
        ],
    }
    with cluster.client(timeout=30) as c:
        doc = c.run_job(job, timeout=60)
    states = {t["name"]: t["state"] for t in doc["tasks"]}
    assert states == {"a": "SUCCEEDED", "b": "FAILED", "c": "SUCCEEDED", "d": "SKIPPED", "e": "SKIPPED",
                      "cleanup": "SUCCEEDED"}  # fmt: skip
    assert doc["state"] == "FAILED" and doc["counts"]["SKIPPED"] == 2
    d = next(t for t in doc["tasks"] if t["name"] == "d")
    assert "'b'" in d["result"]["error"] and d["attempt"] == 0
    assert sorted(stamped(stamps)) == ["a", "c", "cleanup"]  # d and e never ran
    cleanup = next(t for t in doc["tasks"] if t["name"] == "cleanup")
    assert cleanup["result"]["value"]["after"] == {"b": None}


def test_a_cycle_is_refused_by_the_cli_with_the_names(local_cluster, tmp_path):
    cluster = local_cluster(executors=0)
    path = tmp_path / "cycle.toml"
    path.write_text(
        'name = "loop"\n'
        '[[task]]\nname = "x"\nkind = "noop"\nafter = ["z"]\n'
        '[[task]]\nname = "y"\nkind = "noop"\nafter = ["x"]\n'
        '[[task]]\nname = "z"\nkind = "noop"\nafter = ["y"]\n'
    )
    addrs = ",".join(m.addr for m in cluster.masters)
    p = subprocess.run(
        [sys.executable, "-m", "rota.client.cli", "--master-addr", addrs, "submit-job", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "a cycle: 'x' -> 'z' -> 'y'" in p.stderr and "Traceback" not in p.stderr
    with cluster.client(timeout=30) as c:
        assert c.list_jobs() == []
        with pytest.raises(Exception, match="no task named 'w'"):
            c.submit_job(json.loads('{"name": "j", "task": [{"name": "x", "kind": "noop", "after": ["w"]}]}'))

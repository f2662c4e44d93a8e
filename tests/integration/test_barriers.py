"""Barriers on a real cluster (issue 14): five tasks meet at rota.task.barrier("start", 5); a task
that is SIGKILLed before arriving, or gives up after arriving, runs again and rejoins counted once; the
arrivals survive a leader SIGKILL, and a task run again after the release passes straight through."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytestmark = pytest.mark.etcd

#: Each task appends "before <i>", waits at the barrier, appends "after <i>".
PRELUDE = """
import os, sys, time, rota.task
i = int(os.environ["ROTA_TASK_ID"].rsplit("/", 1)[1])
attempt = int(os.environ["ROTA_ATTEMPT"])
log = {log!r}
go = {go!r}

def line(text):
    with open(log, "a") as f:
        f.write(text + "\\n")

def wait_for(check):
    while not check():
        time.sleep(0.05)

"""

RESCHEDULED = """
if i == 4 and attempt == 1:
    line("crash 4")
    os.kill(os.getpid(), 9)  # SIGKILLed before it arrives
if i == 4:  # the second attempt arrives last, once task 3 gave up after arriving and came back
    wait_for(lambda: open(log).read().splitlines().count("before 3") == 2)
    time.sleep(1)  # for task 3's second call to reach the leader
line(f"before {i}")
try:
    rota.task.barrier("start", 5, timeout=1.5 if i == 3 and attempt == 1 else None)
except rota.task.TaskCallError as e:
    line("gave up 3")
    sys.exit(f"gave up: {e}")
line(f"after {i}")
"""

ACROSS_FAILOVER = """
if i == 3 and attempt == 1:
    line("before 3")
    try:
        rota.task.barrier("start", 5, timeout=1)
    except rota.task.TaskCallError:
        line("gave up 3")
        sys.exit(1)
if i == 3:  # run again: calls only once the barrier is released, which needs its first arrival
    line("rejoining 3")
    wait_for(lambda: any(x.startswith("after") for x in open(log).read().splitlines()))
    rota.task.barrier("start", 5)
    line("after 3")
    sys.exit(0)
if i == 4:
    wait_for(lambda: os.path.exists(go))
line(f"before {i}")
rota.task.barrier("start", 5)
line(f"after {i}")
"""


def job(code: str, tmp_path: Path) -> dict:
    log, go = tmp_path / "log", tmp_path / "go"
    log.touch()
    source = PRELUDE.format(log=str(log), go=str(go)) + code
    return {
        "name": "meet",
        "max-attempts": 2,
        "task": [{"name": "t", "kind": "python", "count": 5, "code": source}],
    }


def lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "log").read_text().splitlines()


def check_order(log: list[str]) -> None:
    """Every "after" comes after the first "before" of every task: no task passed early."""
    afters = [n for n, x in enumerate(log) if x.startswith("after")]
    assert sorted(log[n] for n in afters) == [f"after {i}" for i in range(5)], log
    last_before = max(log.index(f"before {i}") for i in range(5))
    assert min(afters) > last_before, log


def test_five_tasks_meet_and_rescheduled_ones_rejoin_counted_once(local_cluster, tmp_path):
    cluster = local_cluster(executors=1, executor_slots=6)
    with cluster.client(timeout=30) as c:
        doc = c.run_job(job(RESCHEDULED, tmp_path), timeout=120)
    log = lines(tmp_path)
    assert doc["state"] == "SUCCEEDED", (doc, log)
    attempts = [t["attempt"] for t in doc["tasks"]]
    assert attempts == [1, 1, 1, 2, 2], (attempts, log)
    check_order(log)
    # Task 3's second arrival did not count again: had it, the barrier would have opened before task 4.
    assert log.index("gave up 3") < log.index("before 4") < min(log.index(f"after {i}") for i in range(5))
    assert log.count("before 3") == 2


def test_a_barrier_survives_a_leader_sigkill(local_cluster, tmp_path, wait_until):
    cluster = local_cluster(executors=1, executor_slots=6)
    with cluster.client(timeout=30) as c:
        job_id = c.submit_job(job(ACROSS_FAILOVER, tmp_path))["id"]

        def four_arrived():
            doc = c.get_job(job_id)
            return doc.get("barriers") == [
                {"name": "start", "parties": 5, "arrived": 4, "released": False}
            ] and ("rejoining 3" in lines(tmp_path))

        wait_until("tasks 0-3 at the barrier, task 3 run again", four_arrived, 60, every=0.1)
        old = cluster.leader()
        old.signal(signal.SIGKILL)
        cluster.wait_for_leader(exclude=old.name, timeout=30)
        # Task 3's arrival is only in etcd now (its attempt ended): the new leader has it.
        wait_until("the new leader's barrier", four_arrived, 60, every=0.1)
        (tmp_path / "go").touch()
        doc = c.wait_job(job_id, timeout=120)
    log = lines(tmp_path)
    assert doc["state"] == "SUCCEEDED", (doc, log)
    assert [t["attempt"] for t in doc["tasks"]] == [1, 1, 1, 2, 1], log
    check_order(log)
    assert log.index("rejoining 3") < log.index("before 4")


def run_three_task_2_twice(local_cluster, code: str, tmp_path: Path) -> list[str]:
    """Run ``code`` as three tasks to SUCCEEDED, task 2 in two attempts; the log lines."""
    cluster = local_cluster(executors=1, executor_slots=4)
    spec = job(code, tmp_path)
    spec["task"][0]["count"] = 3
    with cluster.client(timeout=30) as c:
        doc = c.run_job(spec, timeout=120)
    log = lines(tmp_path)
    assert doc["state"] == "SUCCEEDED", (doc, log)
    assert [t["attempt"] for t in doc["tasks"]] == [1, 1, 2], log
    return log


#: Three tasks pass rounds 0..4 of one cyclic barrier; task 2 fails after round 2 and its second
#: attempt goes through the rounds again from 0: those released pass at once, round 3 waits for it.
CYCLIC = """
for r in range(5):
    line(f"before {r} {i} {attempt}")
    rota.task.barrier("step", 3, round=r)
    line(f"after {r} {i} {attempt}")
    if i == 2 and attempt == 1 and r == 2:
        sys.exit("failing on purpose after round 2")
"""


def test_three_tasks_pass_cyclic_rounds_in_lockstep_and_a_restarted_one_rejoins(local_cluster, tmp_path):
    log = run_three_task_2_twice(local_cluster, CYCLIC, tmp_path)
    for r in range(5):
        befores = [n for n, x in enumerate(log) if x.startswith(f"before {r} ")]
        afters = [n for n, x in enumerate(log) if x.startswith(f"after {r} ")]
        # Each task reached round r (task 2's second attempt too, for every round) before anyone passed it.
        assert {log[n].split()[2] for n in afters} == {"0", "1", "2"}, log
        first_of = {i: min(n for n in befores if log[n].split()[2] == i) for i in "012"}
        assert min(afters) > max(first_of.values()), (r, log)
    # The second attempt passed rounds 0-2 at once (released already) and was needed for round 3.
    rejoined = log.index("before 0 2 2")
    assert all(log.index(f"after {r} 2 2") > rejoined for r in range(5))
    assert not any(x.startswith("after 3") for x in log[:rejoined]), log


#: Each arrival carries a checkpoint naming its round; task 2 fails after round 2, and its second
#: attempt loads what its last arrival carried.
CARRIED = """
if attempt == 2:
    line(f"loaded {i} {rota.task.checkpoint.load().decode()}")
    sys.exit(0)
for r in range(3):
    rota.task.barrier("step", 3, round=r, checkpoint=f"round {r} of {i}".encode())
    line(f"after {r} {i}")
if i == 2:
    sys.exit("failing on purpose after round 2")
"""


def test_a_checkpoint_carried_by_an_arrival_is_saved_with_it(local_cluster, tmp_path):
    log = run_three_task_2_twice(local_cluster, CARRIED, tmp_path)
    assert log[-1] == "loaded 2 round 2 of 2", log
    assert sorted(log[:-1]) == sorted(f"after {r} {i}" for r in range(3) for i in range(3)), log

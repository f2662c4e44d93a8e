"""The history checker (devtools/history.py) on histories written by hand: each promise it checks
holds on a clean history and is reported broken on one that breaks it."""

from __future__ import annotations

from rota.devtools import history
from rota.devtools.history import Effect


def run(task: str, attempt: int, where: str, start: float, end: float, done: bool = True) -> list[Effect]:
    out = [Effect("start", task, attempt, where, start), Effect("beat", task, attempt, where, end)]
    return out + ([Effect("done", task, attempt, where, end)] if done else [])


def doc(job: str, attempts: list[int], state: str = "SUCCEEDED") -> dict:
    tasks = [{"id": f"{job}/{i}", "state": "SUCCEEDED", "attempt": a} for i, a in enumerate(attempts)]
    return {"id": job, "state": state, "tasks": tasks}


def verdicts(acked, final, effects, orders=((5, "1/1"), (6, "1/2"))) -> dict[str, bool]:
    return {v.name: v.ok for v in history.check(acked, final, effects, list(orders), 0.2)}


CLEAN = run("j/0", 1, "e0", 0.0, 1.0) + run("j/1", 1, "e1", 0.0, 1.0)


def test_a_clean_history_passes_every_check():
    assert all(verdicts(["j"], {"j": doc("j", [1, 1])}, CLEAN).values())


def test_a_lost_or_unfinished_job_fails():
    assert not verdicts(["j"], {"j": None}, CLEAN)["acknowledged jobs kept and finished"]
    assert not verdicts(["j"], {"j": doc("j", [1, 1], "RUNNING")}, CLEAN)[
        "acknowledged jobs kept and finished"
    ]


def test_a_task_done_twice_fails_but_a_lost_attempt_that_finished_is_counted_apart():
    twice = CLEAN + [Effect("done", "j/0", 1, "e0", 1.1)]
    assert not verdicts(["j"], {"j": doc("j", [1, 1])}, twice)["no task completed twice"]
    after = CLEAN + run("j/0", 2, "e1", 2.0, 3.0)
    assert not verdicts(["j"], {"j": doc("j", [1, 1])}, after)["no task completed twice"]
    lost = CLEAN + run("j/0", 2, "e1", 2.0, 3.0)
    (v,) = [v for v in history.check(["j"], {"j": doc("j", [2, 1])}, lost, [], 0.2) if "twice" in v.name]
    assert v.ok and "1 lost attempts had also finished" in v.detail


def test_two_executors_running_a_task_at_once_fails_beyond_the_window():
    overlap = run("j/0", 1, "e0", 0.0, 3.0, done=False) + run("j/0", 2, "e1", 2.0, 4.0)
    effects = overlap + run("j/1", 1, "e1", 0.0, 1.0)
    assert not verdicts(["j"], {"j": doc("j", [2, 1])}, effects)["no task on two executors at once"]
    within = run("j/0", 1, "e0", 0.0, 2.1, done=False) + run("j/0", 2, "e1", 2.0, 4.0)
    effects = within + run("j/1", 1, "e1", 0.0, 1.0)
    assert verdicts(["j"], {"j": doc("j", [2, 1])}, effects)["no task on two executors at once"]


def test_an_older_term_writing_after_a_newer_one_fails():
    good = [(5, f"{1:020d}/{1:020d}"), (6, f"{1:020d}/{2:020d}"), (9, f"{3:020d}/{0:020d}")]
    assert verdicts(["j"], {"j": doc("j", [1, 1])}, CLEAN, good)["one leader writing at a time"]
    late = [*good, (10, f"{1:020d}/{3:020d}")]
    assert not verdicts(["j"], {"j": doc("j", [1, 1])}, CLEAN, late)["one leader writing at a time"]


def test_effect_lines_parse_and_a_torn_line_is_skipped():
    text = "start j/0 1 e0 1700000000.25\nbeat j/0 1 e0 1700000000.35\ndone j/0 1 e0 17000\nstart j/1 2 e"
    effects = history.parse_effects(text)
    assert [e.kind for e in effects] == ["start", "beat", "done"] and effects[0].where == "e0"


def test_a_record_with_fewer_terms_than_leaders_seen_fails():
    orders = [(5, f"{1:020d}/{1:020d}"), (6, f"{1:020d}/{2:020d}")]
    (v,) = [
        v
        for v in history.check(["j"], {"j": doc("j", [1, 1])}, CLEAN, orders, 0.2, leaders=2)
        if "leader" in v.name
    ]
    assert not v.ok and "2 leaders were seen" in v.detail


def test_documents_without_their_tasks_fail_rather_than_pass_on_nothing():
    empty = {"j": {"id": "j", "state": "SUCCEEDED", "tasks": []}}
    assert not verdicts(["j"], empty, CLEAN)["no task completed twice"]

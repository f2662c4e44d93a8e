"""A history checker in the style of Jepsen, for runs with faults (issue 17).

A run records what clients saw (each submission and its acknowledgement, the final read of each
job), what the tasks did (``start``, ``beat`` and ``done`` lines they append to a shared file,
with the time and the executor they ran on), and every value of the leader's write order in
etcd (``keys.WRITE_ORDER``, in revision order). ``check`` then gives one verdict per promise.
It is pure: the same inputs give the same verdicts, and the unit tests feed it histories by hand.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The shell lines a checked task runs: a start, a beat every BEAT seconds for SECONDS, a done.
BEAT = 0.1
EFFECT_LINE = re.compile(r"^(start|beat|done) (\S+) (\d+) (\S+) (\d+(?:\.\d+)?)$")


def task_command(effects_file: str, seconds: float) -> str:
    """A shell task that leaves its side effects in ``effects_file``: the executor it ran on is
    read from its work dir (``.../<executor>-work/...``)."""
    beats = max(1, round(seconds / BEAT))
    line = f'"$ROTA_TASK_ID $ROTA_ATTEMPT $w $(date +%s.%N)" >> {effects_file}'
    return (
        f"w=${{PWD%%-work*}}; w=${{w##*/}}; echo start {line}; "
        f"for i in $(seq {beats}); do sleep {BEAT}; echo beat {line}; done; echo done {line}"
    )


@dataclass(frozen=True)
class Effect:
    kind: str  # start, beat or done
    task: str  # JOB/N
    attempt: int
    where: str  # the executor's name
    t: float  # seconds since the epoch


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def parse_effects(text: str) -> list[Effect]:
    """The lines of an effects file; a line cut short by a kill is skipped."""
    out = []
    for line in text.splitlines():
        m = EFFECT_LINE.match(line.strip())
        if m:
            out.append(Effect(m.group(1), m.group(2), int(m.group(3)), m.group(4), float(m.group(5))))
    return out


def _kept(acked: Sequence[str], final: Mapping[str, dict[str, Any] | None]) -> Verdict:
    lost = [j for j in acked if final.get(j) is None]
    docs = [(j, doc) for j in acked if (doc := final.get(j)) is not None]
    unfinished = [f"{j} {doc['state']}" for j, doc in docs if doc["state"] != "SUCCEEDED"]
    n = len(acked)
    if lost or unfinished:
        return Verdict(
            "acknowledged jobs kept and finished", False, f"lost {lost}, not finished {unfinished}"
        )
    return Verdict("acknowledged jobs kept and finished", True, f"{n} acknowledged, all SUCCEEDED")


def _once(final: Mapping[str, dict[str, Any] | None], effects: list[Effect]) -> Verdict:
    """Each succeeded task's taken attempt finished exactly once, and no attempt after it ran to
    its end. An earlier attempt that finished on an executor cut off from the masters, whose result
    could not reach them before the task was run again, is counted apart: the side effects of such
    a lost attempt are at-least-once by nature (promise 5)."""
    taken: dict[str, int] = {}
    bad = [f"{j}: its document lists no tasks" for j, doc in final.items() if doc and not doc.get("tasks")]
    for doc in final.values():
        for task in (doc or {}).get("tasks", []):
            if task["state"] == "SUCCEEDED":
                taken[task["id"]] = task["attempt"]
    done = collections.Counter((e.task, e.attempt) for e in effects if e.kind == "done")
    lost_finished = 0
    for task, attempt in taken.items():
        if done[(task, attempt)] != 1:
            bad.append(f"{task} attempt {attempt} finished {done[(task, attempt)]} times")
    for (task, attempt), n in done.items():
        if task not in taken:
            continue
        if n > 1:
            bad.append(f"{task} attempt {attempt} finished {n} times")
        if attempt > taken[task]:
            bad.append(f"{task} attempt {attempt} finished after attempt {taken[task]} was taken")
        elif attempt < taken[task]:
            lost_finished += n
    detail = f"{len(taken)} tasks finished once; {lost_finished} lost attempts had also finished"
    return Verdict("no task completed twice", not bad, "; ".join(bad[:5]) or detail)


def _alone(effects: list[Effect], window: float) -> Verdict:
    """No two attempts of a task ran at once on different executors for more than ``window``."""
    spans: dict[tuple[str, int, str], list[float]] = {}
    for e in effects:
        span = spans.setdefault((e.task, e.attempt, e.where), [e.t, e.t])
        span[0], span[1] = min(span[0], e.t), max(span[1], e.t)
    by_task: dict[str, list[tuple[float, float, str, int]]] = collections.defaultdict(list)
    for (task, attempt, where), (start, end) in spans.items():
        by_task[task].append((start, end, where, attempt))
    worst, bad = 0.0, []
    for task, runs in by_task.items():
        runs.sort()
        for i, (_start, end, where, attempt) in enumerate(runs):
            for later in runs[i + 1 :]:
                if later[2] == where:
                    continue
                overlap = min(end, later[1]) - later[0]
                worst = max(worst, overlap)
                if overlap > window:
                    bad.append(
                        f"{task}: attempt {attempt} on {where} and {later[3]} on {later[2]} for {overlap:.2f}s"
                    )
    detail = f"largest overlap {max(worst, 0.0):.2f}s (allowed {window:.2f}s)"
    return Verdict("no task on two executors at once", not bad, "; ".join(bad[:5]) or detail)


def _one_writer(orders: list[tuple[int, str]], leaders: int) -> Verdict:
    """The write order only moves forward, revision by revision: once a leader's term wrote, no
    older term wrote again, and a term's own writes landed in its order. Each of the ``leaders``
    seen must have written (its term's start at least), or the record has a hole."""
    bad, terms, last = [], set(), (0, 0)
    for revision, value in orders:
        term_text, _, seq_text = value.partition("/")
        now = (int(term_text), int(seq_text or 0))
        terms.add(now[0])
        if now <= last:
            bad.append(f"revision {revision}: {now[0]}/{now[1]} after {last[0]}/{last[1]}")
        last = max(last, now)
    if len(terms) < leaders:
        bad.append(f"writes of {len(terms)} terms recorded, but {leaders} leaders were seen")
    detail = f"{len(orders)} writes by {len(terms)} leaders' terms, in order"
    return Verdict("one leader writing at a time", not bad, "; ".join(bad[:5]) or detail)


def check(
    acked: Iterable[str],
    final: Mapping[str, dict[str, Any] | None],
    effects: list[Effect],
    write_orders: list[tuple[int, str]],
    window: float,
    leaders: int = 1,
) -> list[Verdict]:
    """``acked``: ids of jobs whose submission was acknowledged; ``final``: each one's get-job
    document after the run (None: not found); ``write_orders``: (revision, value) of every write
    of keys.WRITE_ORDER; ``window``: how long two attempts may overlap (a beat and a margin);
    ``leaders``: how many leaders the run saw at least (each must have written)."""
    acked = list(acked)
    return [
        _kept(acked, final),
        _once(final, effects),
        _alone(effects, window),
        _one_writer(write_orders, leaders),
    ]

"""Schedules as plain state: which fires are due, catch-up after an outage, overlap, pause.
No I/O: times are given, the job states are a set."""

from __future__ import annotations

import datetime as dt

import pytest

from rota.common.cron import CronError, fire_stamp, parse
from rota.common.jobspec import JobSpecError, parse_job_text
from rota.scheduler.schedules import Schedule, Schedules

T0 = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.timezone.utc).timestamp()


def schedule(expr: str = "*/5 * * * *", **keys: object) -> Schedule:
    lines = [f'schedule = "{expr}"', *(f"{k} = {v!r}" for k, v in keys.items())]
    spec = parse_job_text("\n".join(["name = 'etl'", *lines, "[[task]]", "name = 't'", "kind = 'noop'"]))
    s = Schedule("etl", spec, created=T0 - 1)
    s.plan()
    return s


def state(*schedules: Schedule) -> Schedules:
    st = Schedules()
    for s in schedules:
        st.add(s)
    return st


def fire_all(st: Schedules, now: float, running: set[str] = frozenset()) -> list[tuple[str, str]]:  # type: ignore[assignment]
    out = []
    for f in st.due(now, lambda job_id: job_id in running):
        Schedules.after_fire(f, now)
        out.append((fire_stamp(f.time), f.action))
    return out


def test_a_fire_is_due_at_its_time_once() -> None:
    s = schedule()
    st = state(s)
    assert st.next_wake() == T0
    assert fire_all(st, T0 - 0.5) == []
    assert fire_all(st, T0) == [("20261202T100000Z", "run")]
    assert fire_all(st, T0 + 10) == []
    assert s.last_job == "etl.20261202T100000Z" and s.fired == 1
    assert st.next_wake() == T0 + 300


def test_after_an_outage_only_the_newest_catch_up_fires_run_and_the_rest_are_counted() -> None:
    s = schedule(overlap="allow", **{"catch-up": 2})
    st = state(s)
    fires = fire_all(st, T0 + 3600 + 1)  # an hour down: 13 fires owed
    assert fires == [("20261202T105500Z", "run"), ("20261202T110000Z", "run")]
    assert s.missed == 11 and s.fired == 2
    # overlap = "skip": the first caught-up job would still run at the second's time
    s = schedule(**{"catch-up": 2})
    assert fire_all(state(s), T0 + 3600 + 1) == [("20261202T105500Z", "run"), ("20261202T110000Z", "skip")]


def test_overlap_skip_skips_while_the_last_job_runs_and_allow_does_not() -> None:
    skip, allow = schedule(), schedule(overlap="allow")
    allow.id = "other"
    st = state(skip, allow)
    fire_all(st, T0)
    running = {skip.last_job, allow.last_job}
    assert fire_all(st, T0 + 300, running) == [("20261202T100500Z", "skip"), ("20261202T100500Z", "run")]
    assert skip.skipped == 1 and skip.last_job == "etl.20261202T100000Z"


def test_cancel_old_names_the_job_to_cancel() -> None:
    s = schedule(overlap="cancel-old")
    st = state(s)
    fire_all(st, T0)
    [fire] = st.due(T0 + 300, lambda job_id: True)
    assert fire.action == "run" and fire.cancel == "etl.20261202T100000Z"


def test_a_paused_schedule_fires_nothing_and_resumes_from_now() -> None:
    s = schedule()
    st = state(s)
    s.paused = True
    assert st.next_wake() is None and fire_all(st, T0 + 3600) == []
    Schedules.resumed(s, T0 + 3601)
    assert fire_all(st, T0 + 3601) == []  # the fires while paused are not owed
    assert s.next == T0 + 3900


def test_time_zones_and_six_fields() -> None:
    paris = schedule("0 3 * * *", **{"time-zone": "Europe/Paris"})
    assert fire_stamp(paris.next) == "20261203T020000Z"  # 03:00 in Paris is 02:00 UTC in winter
    secs = schedule("*/10 * * * * *")
    assert secs.next == T0  # seconds first: every 10 s


def test_a_schedule_record_round_trips() -> None:
    s = schedule(overlap="allow")
    st = state(s)
    fire_all(st, T0)
    again = Schedule.from_record(s.record())
    assert again.record() == s.record() and again.next == s.next


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"schedule": "* * *"}, r"schedule: '\* \* \*' has 3 fields"),
        ({"schedule": "61 * * * *"}, "not a valid cron expression"),
        ({"schedule": "0 0 30 2 *"}, "never fires"),
        ({"schedule": "* * * * *", "time-zone": "Mars/Olympus"}, "time-zone: unknown zone"),
        ({"schedule": "* * * * *", "overlap": "queue"}, "overlap: expected one of"),
        ({"schedule": "* * * * *", "catch-up": 0}, "catch-up: expected an integer from 1 to 100"),
        ({"overlap": "skip"}, "overlap: only for a scheduled job"),
    ],
)
def test_bad_schedules_are_refused_naming_the_key(keys: dict[str, object], message: str) -> None:
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in keys.items()]
    with pytest.raises(JobSpecError, match=message):
        parse_job_text("\n".join(["name = 'x'", *lines, "[[task]]", "name = 't'", "kind = 'noop'"]))


def test_parse_normalises_spaces() -> None:
    assert parse("*/5  *  * * *", "UTC", "skip", 1).expr == "*/5 * * * *"
    with pytest.raises(CronError):
        parse("", "UTC", "skip", 1)

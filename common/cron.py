"""Cron schedules of jobs: the job file's ``schedule``, ``time-zone``, ``overlap``, ``catch-up``
keys, and the fire times they give. Time arithmetic is croniter's (day-of-week names, ranges,
steps, daylight-saving shifts in the schedule's zone); this module bounds what a schedule may cost.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

OVERLAP = ("skip", "allow", "cancel-old")
DEFAULT_OVERLAP = "skip"
DEFAULT_CATCH_UP = 1
MAX_CATCH_UP = 100
#: Fires missed in an outage are counted by walking them, at most this many (then "at least").
MAX_MISSED_WALK = 1000
MAX_EXPR = 200


class CronError(ValueError):
    """A schedule that cannot be used: the message says which part and why."""


@dataclass(frozen=True)
class CronSpec:
    """``expr``: five fields (minute hour day-of-month month day-of-week), or six with seconds first."""

    expr: str
    time_zone: str = "UTC"
    overlap: str = DEFAULT_OVERLAP
    catch_up: int = DEFAULT_CATCH_UP

    def to_dict(self) -> dict[str, object]:
        return {
            "schedule": self.expr,
            "time-zone": self.time_zone,
            "overlap": self.overlap,
            "catch-up": self.catch_up,
        }

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def _iter(self, start: float) -> croniter:
        when = dt.datetime.fromtimestamp(start, self.zone)
        return croniter(self.expr, when, second_at_beginning=len(self.expr.split()) == 6)

    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t`` (Unix seconds)."""
        return float(self._iter(t).get_next(float))

    def owed(self, since: float, now: float) -> tuple[list[float], int]:
        """The fires due in (``since``, ``now``] to run, oldest first: the newest ``catch_up`` of
        them; and how many older ones are left out (counted up to MAX_MISSED_WALK)."""
        newest: list[float] = []
        it = self._iter(now + 1e-3)  # a fire at ``now`` itself is due
        while len(newest) <= self.catch_up:
            t = float(it.get_prev(float))
            if t <= since:
                break
            newest.append(t)
        if len(newest) <= self.catch_up:
            return sorted(newest), 0
        run = sorted(newest[: self.catch_up])
        missed, it = 0, self._iter(since)
        while missed < MAX_MISSED_WALK and float(it.get_next(float)) < run[0]:
            missed += 1
        return run, missed


def parse(expr: object, time_zone: object, overlap: object, catch_up: object) -> CronSpec:
    """A validated CronSpec; CronError names the bad value (the caller adds the key)."""
    if not isinstance(expr, str) or not expr.strip():
        raise CronError("schedule: expected a cron expression such as '*/5 * * * *'")
    expr = " ".join(expr.split())
    if len(expr) > MAX_EXPR:
        raise CronError(f"schedule: at most {MAX_EXPR} characters")
    fields = len(expr.split())
    if fields not in (5, 6):
        raise CronError(
            f"schedule: {expr!r} has {fields} fields; give 5 (minute hour day month weekday) "
            "or 6 (second first)"
        )
    if not croniter.is_valid(expr, second_at_beginning=fields == 6):
        raise CronError(f"schedule: {expr!r} is not a valid cron expression")
    if not isinstance(time_zone, str):
        raise CronError("time-zone: expected a zone name such as 'Europe/Paris' or 'UTC'")
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(
            f"time-zone: unknown zone {time_zone[:70]!r} (an IANA name such as 'Europe/Paris')"
        ) from None
    if overlap not in OVERLAP:
        raise CronError(
            f"overlap: expected one of {', '.join(map(repr, OVERLAP))}, got {str(overlap)[:70]!r}"
        )
    if isinstance(catch_up, bool) or not isinstance(catch_up, int) or not 1 <= catch_up <= MAX_CATCH_UP:
        raise CronError(f"catch-up: expected an integer from 1 to {MAX_CATCH_UP}, got {str(catch_up)[:70]!r}")
    spec = CronSpec(expr, time_zone, str(overlap), catch_up)
    try:
        spec.next_after(0.0)
    except (ValueError, KeyError, OverflowError) as e:  # e.g. February 30th: never fires
        raise CronError(f"schedule: {expr!r} never fires ({e})") from None
    return spec


def fire_stamp(t: float) -> str:
    """A fire time as it appears in the id of the job it made: ``20261202T103000Z`` (UTC)."""
    return dt.datetime.fromtimestamp(round(t), dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()

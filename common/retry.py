"""Retry policies: the job file's ``retry`` table, and what it decides after a failed attempt.

    retry = { backoff = "exponential", initial = "1s", max = "5m", never-on-exit-codes = [2] }

Pure: parsed by the job file parser, applied by the leader's core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKOFFS = ("exponential", "fixed")
KEYS = ("backoff", "initial", "max", "on-exit-codes", "never-on-exit-codes")
#: Exit codes one list may name.
MAX_CODES = 64
#: A task's latest retry reasons kept (in its record): the newest last.
KEEP_REASONS = 10
#: Characters of one reason at most.
REASON_CHARS = 300


@dataclass(frozen=True)
class RetryPolicy:
    backoff: str = "exponential"
    initial: float = 0.5
    max: float = 10.0
    #: Only these exit codes are retried (empty: any).
    on_exit_codes: tuple[int, ...] = ()
    #: These exit codes fail the task at once.
    never_on_exit_codes: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backoff": self.backoff, "initial": self.initial, "max": self.max}
        if self.on_exit_codes:
            out["on-exit-codes"] = list(self.on_exit_codes)
        if self.never_on_exit_codes:
            out["never-on-exit-codes"] = list(self.never_on_exit_codes)
        return out

    @staticmethod
    def from_stored(raw: Any) -> RetryPolicy | None:
        if not isinstance(raw, dict):
            return None
        return RetryPolicy(
            str(raw.get("backoff", "exponential")), float(raw.get("initial", 0.5)), float(raw.get("max", 10.0)),
            tuple(int(c) for c in raw.get("on-exit-codes", ())),
            tuple(int(c) for c in raw.get("never-on-exit-codes", ())),
        )  # fmt: skip

    def delay(self, failures: int) -> float:
        """Seconds before the next attempt after ``failures`` failed ones (>= 1). The exponent is
        capped before the power: a float power overflows past 2**1023."""
        if self.backoff == "fixed":
            return self.initial
        return min(self.max, self.initial * 2 ** min(max(0, failures - 1), 32))

    def refusal(self, exit_code: int | None) -> str:
        """Why a failed attempt with this exit code must not be retried ("" when it may be)."""
        if exit_code is None:
            return ""
        if exit_code in self.never_on_exit_codes:
            return f"exit code {exit_code} is in never-on-exit-codes: not retried"
        if self.on_exit_codes and exit_code not in self.on_exit_codes:
            return f"exit code {exit_code} is not in on-exit-codes: not retried"
        return ""


DEFAULT = RetryPolicy()


def outcome(attempt: int, result: dict[str, Any] | None) -> str:
    """``attempt 3 exited with code 2``, or ``attempt 3 <its error>``."""
    result = result or {}
    code = result.get("exit_code")
    return f"attempt {attempt} " + (
        f"exited with code {code}" if code is not None else str(result.get("error") or "failed")
    )


def reason(attempt: int, result: dict[str, Any] | None, delay: float, policy: RetryPolicy) -> str:
    """One line for get-job: why attempt ``attempt`` is retried, and when."""
    return cut(f"{outcome(attempt, result)}; retried after {delay:g}s ({policy.backoff} backoff)")


def cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def parse(raw: Any, seconds: Any) -> RetryPolicy:
    """A validated policy; ValueError names the key (``max: ...``). ``seconds(value, key)``
    parses a duration as the job file does."""
    if not isinstance(raw, dict):
        raise ValueError(
            f': expected a table such as {{ backoff = "exponential", initial = "1s" }}, got {type(raw).__name__}'
        )
    for key in raw:
        if key not in KEYS:
            raise ValueError(f".{key}: unknown key (expected one of {', '.join(KEYS)})")
    backoff = raw.get("backoff", "exponential")
    if backoff not in BACKOFFS:
        raise ValueError(
            f".backoff: expected one of {', '.join(map(repr, BACKOFFS))}, got {str(backoff)[:40]!r}"
        )
    initial = seconds(raw["initial"], "initial") if "initial" in raw else DEFAULT.initial
    cap = seconds(raw["max"], "max") if "max" in raw else max(DEFAULT.max, initial)
    if cap < initial:
        raise ValueError(f".max: {cap:g}s is less than initial ({initial:g}s)")
    codes = {}
    for key in ("on-exit-codes", "never-on-exit-codes"):
        value = raw.get(key, [])
        if (
            not isinstance(value, list)
            or len(value) > MAX_CODES
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
        ):
            raise ValueError(f".{key}: expected a list of at most {MAX_CODES} exit codes from 0 to 255")
        codes[key] = tuple(value)
    if codes["on-exit-codes"] and codes["never-on-exit-codes"]:
        raise ValueError(".never-on-exit-codes: give on-exit-codes or never-on-exit-codes, not both")
    return RetryPolicy(str(backoff), initial, cap, codes["on-exit-codes"], codes["never-on-exit-codes"])

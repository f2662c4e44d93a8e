"""Task resource limits: the job file's ``limits`` table and the executor's defaults and maxima.

One parser for both, so a value a job may ask for is written the way an operator writes it.
Every value is bounded here; the executor enforces them (``rota.executor.confine``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from rota.common.config import ConfigError, parse_duration, parse_size

#: Keys of a job's ``limits`` table. ``file_size`` is accepted as a spelling of ``file-size``.
TASK_KEYS = ("cpu", "memory", "processes", "file-size")
#: Keys of the executor's --task-default-limits and --task-max-limits: a task's, plus its wall-clock timeout.
EXECUTOR_KEYS = (*TASK_KEYS, "timeout")
_ALIASES = {"file_size": "file-size"}
#: The longest CPU time or timeout: a week, as for a task's timeout.
MAX_SECONDS = 7 * 24 * 3600.0
#: Below this nothing starts (an interpreter alone needs more); a smaller memory limit is a typo.
MIN_MEMORY = 4 * 1024 * 1024
#: The largest memory or file size: 1 PiB, more than any machine has and far from integer overflow.
MAX_BYTES = 1 << 50
#: The most processes a task may be allowed (Linux's own pid_max is at most 4194304).
MAX_PROCESSES = 4_194_304


@dataclass(frozen=True)
class Limits:
    """What bounds one task; None means unbounded. Seconds and bytes."""

    cpu: float | None = None
    memory: int | None = None
    processes: int | None = None
    file_size: int | None = None
    #: Wall clock; only the executor's defaults and maxima carry it here (a task's is its ``timeout``).
    timeout: float | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (numbers), as a job's ``limits`` is stored."""
        return {_key(f.name): v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    def describe(self) -> str:
        """``cpu=30s,memory=512MiB``: the flag syntax, for logs and --help."""
        return ",".join(
            f"{_key(f.name)}={show(_key(f.name), v)}"
            for f in fields(self)
            if (v := getattr(self, f.name)) is not None
        )


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def show(key: str, value: float | int) -> str:
    """A limit as a person writes it: ``64MiB``, ``1s``, ``32``."""
    if key in ("memory", "file-size"):
        return format_size(int(value))
    if key in ("cpu", "timeout"):
        return f"{value:g}s"
    return str(value)


def format_size(n: int) -> str:
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return f"{n}B"


def parse_value(key: str, value: Any) -> float | int:
    """One limit, checked against its bounds; ConfigError names what is wrong (not the key)."""
    if isinstance(value, bool):
        raise ConfigError(f"expected {_WANTED[key]}, got a boolean")
    if key in ("cpu", "timeout"):
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"expected {_WANTED[key]}, got {type(value).__name__}")
        seconds = parse_duration(value)
        if not math.isfinite(seconds) or not 0 < seconds <= MAX_SECONDS:
            raise ConfigError(f"expected a positive duration of at most {MAX_SECONDS:g}s, got {value!r}")
        return seconds
    if key in ("memory", "file-size"):
        if not isinstance(value, (str, int)):
            raise ConfigError(f"expected {_WANTED[key]}, got {type(value).__name__}")
        size = parse_size(value)
        least = MIN_MEMORY if key == "memory" else 1
        if not least <= size <= MAX_BYTES:
            raise ConfigError(
                f"expected a size from {format_size(least)} to {format_size(MAX_BYTES)}, got {value!r}"
            )
        return size
    if key == "processes":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"expected {_WANTED[key]}, got {value!r}")
        if not 1 <= value <= MAX_PROCESSES:
            raise ConfigError(f"expected an integer from 1 to {MAX_PROCESSES}, got {value}")
        return value
    raise ConfigError(f"unknown limit {key!r}")


_WANTED = {
    "cpu": "CPU seconds as a duration like '30s'",
    "timeout": "a duration like '24h'",
    "memory": "a size like '512MiB'",
    "file-size": "a size like '1GiB'",
    "processes": "an integer",
}


def parse_table(table: Mapping[str, Any], allowed: tuple[str, ...] = TASK_KEYS) -> Limits:
    """A table of limits into Limits; a bad entry raises ConfigError whose message starts with its key."""
    values: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = _ALIASES.get(raw_key, raw_key) if isinstance(raw_key, str) else raw_key
        if key not in allowed:
            hint = difflib.get_close_matches(str(raw_key), allowed, n=1)
            guess = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"unknown limit {raw_key!r} (known: {', '.join(allowed)}){guess}")
        if value is None:
            continue
        try:
            values[key.replace("-", "_")] = parse_value(key, value)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
    return Limits(**values)


def parse_flag(value: str | Mapping[str, Any] | None) -> Limits:
    """``--task-default-limits cpu=30s,memory=512MiB,...`` (or a TOML table) into Limits."""
    if value is None or value == "":
        return Limits()
    if isinstance(value, Limits):
        return value
    if isinstance(value, Mapping):
        table: Mapping[str, Any] = value
    else:
        table = {}
        for item in str(value).split(","):
            if not item.strip():
                continue
            key, sep, val = item.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ConfigError(
                    f"malformed limit {item.strip()!r}: expected key=value ({', '.join(EXECUTOR_KEYS)})"
                )
            table = {**table, key.strip(): val.strip()}
    return parse_table(table, EXECUTOR_KEYS)


class OverMaximum(ValueError):
    """A task asks for more than the executor allows: the attempt fails with this message."""


def effective(asked: Limits, defaults: Limits, maxima: Limits) -> Limits:
    """What bounds one attempt: each limit the task asked for, else the executor's default, else its
    maximum. A task asking for more than a maximum is refused (OverMaximum), not silently cut down:
    a task that needs 8GiB and gets 2GiB would only fail later, and less clearly."""
    out: dict[str, Any] = {}
    for f in fields(Limits):
        ask, top = getattr(asked, f.name), getattr(maxima, f.name)
        if ask is not None and top is not None and ask > top:
            key = _key(f.name)
            raise OverMaximum(
                f"{key} {show(key, ask)} is over this executor's maximum of {show(key, top)} "
                "(its --task-max-limits)"
            )
        value = ask if ask is not None else getattr(defaults, f.name)
        out[f.name] = value if value is not None else top
    return replace(Limits(), **out)


def check_executor(defaults: Limits, maxima: Limits) -> None:
    """An executor's defaults must be within its maxima."""
    try:
        effective(defaults, Limits(), maxima)
    except OverMaximum as e:
        raise ConfigError(f"--task-default-limits: {e}") from None

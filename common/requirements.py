"""What a task needs of its executor beyond its kind: ``constraints`` on the executor's labels and
``resources`` (CPU, memory, GPUs and counted resources the executor declares with --resources).

    constraints = { zone = "b", rack = { in = ["r1", "r2"] }, tier = { not-in = ["spot"] }, gpu-model = { exists = true } }
    resources = { cpu = 2, memory = "4GiB", gpu = 1, licence = 1 }

Pure: parsed by the job file parser and the executor's flag, matched by the leader's placement.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rota.common.config import ConfigError, parse_size
from rota.common.limits import format_size

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
MAX_CONSTRAINTS = 32
MAX_RESOURCES = 32
MAX_VALUES = 64
#: The largest amount of one resource (memory is in bytes).
MAX_AMOUNT = 2.0**60
OPS = ("in", "not-in", "exists")


class RequirementError(ValueError):
    """A bad constraint or resource: the message starts with the key (``zone.in: ...``)."""


@dataclass(frozen=True)
class Constraint:
    label: str
    #: "in", "not-in" or "exists" (an equality is "in" with one value).
    op: str
    values: tuple[str, ...] = ()
    #: exists: whether the label must be there (true) or absent (false).
    present: bool = True

    def allows(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return (self.label in labels) == self.present
        value = labels.get(self.label)
        if self.op == "in":
            return value in self.values
        return value not in self.values

    def to_value(self) -> Any:
        if self.op == "exists":
            return {"exists": self.present}
        if self.op == "in" and len(self.values) == 1:
            return self.values[0]
        return {self.op: list(self.values)}

    def describe(self) -> str:
        if self.op == "exists":
            return f"label {self.label} {'present' if self.present else 'absent'}"
        if self.op == "in" and len(self.values) == 1:
            return f"{self.label}={self.values[0]}"
        return f"{self.label} {self.op} ({', '.join(self.values)})"


@dataclass(frozen=True)
class Requirements:
    """A task's constraints and resources; falsy when it has neither (most tasks)."""

    constraints: tuple[Constraint, ...] = ()
    #: (name, amount) sorted by name.
    resources: tuple[tuple[str, float], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.constraints or self.resources)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(c.allows(labels) for c in self.constraints)

    def fits(self, capacity: Mapping[str, float]) -> bool:
        return all(capacity.get(name, 0.0) >= amount for name, amount in self.resources)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.constraints:
            out["constraints"] = {c.label: c.to_value() for c in self.constraints}
        if self.resources:
            out["resources"] = {n: show_amount(n, a, raw=True) for n, a in self.resources}
        return out

    def shortfall(
        self, executors: list[tuple[str, Mapping[str, str], Mapping[str, float]]], what: str = "has"
    ) -> str:
        """Why none of ``executors`` (name, labels, capacity) can take it, "" when one can; ``what``
        says whether the capacities are all it has or what is free now."""
        matching = [e for e in executors if self.matches(e[1])]
        if not matching:
            return "no executor has labels " + " and ".join(c.describe() for c in self.constraints)
        if any(self.fits(e[2]) for e in matching):
            return ""
        for name, need in self.resources:
            # The most of it, and among equals one that declares it at all (named in the reason).
            best = max(matching, key=lambda e: (e[2].get(name, 0.0), name in e[2]))
            has = best[2].get(name, 0.0)
            if has < need:
                return f"{name} {show_amount(name, need)}: the most an executor {what} is {show_amount(name, has)} ({best[0]})"
        return (
            "no executor has all of "
            + ", ".join(f"{n} {show_amount(n, a)}" for n, a in self.resources)
            + " at once"
        )


def show_amount(name: str, amount: float, raw: bool = False) -> Any:
    """An amount as a person writes it (memory as a size); ``raw``: as the job file stores it."""
    if raw:
        return int(amount) if float(amount).is_integer() else amount
    if name == "memory":
        exact = format_size(int(amount))
        return exact if not exact.endswith("B") or exact.endswith("iB") else f"{amount / 2**30:.1f}GiB"
    return f"{amount:g}"


def _name(key: Any, what: str) -> str:
    if not isinstance(key, str) or not NAME_RE.fullmatch(key):
        raise RequirementError(
            f".{str(key)[:70]}: a {what} name is 1-63 of A-Z a-z 0-9 . _ / - (a letter or digit first)"
        )
    return key


def parse_constraints(raw: Any) -> tuple[Constraint, ...]:
    if not isinstance(raw, Mapping):
        raise RequirementError(': expected a table such as { zone = "b", rack = { in = ["r1", "r2"] } }')
    if len(raw) > MAX_CONSTRAINTS:
        raise RequirementError(f": at most {MAX_CONSTRAINTS} labels")
    out = []
    for label, value in raw.items():
        _name(label, "label")
        if isinstance(value, str):
            out.append(Constraint(label, "in", (value,)))
            continue
        if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in OPS:
            raise RequirementError(
                f".{label}: expected a value (equals), or a table of one of in = [...], not-in = [...], exists = true|false"
            )
        op, arg = next(iter(value.items()))
        if op == "exists":
            if not isinstance(arg, bool):
                raise RequirementError(f".{label}.exists: expected true or false")
            out.append(Constraint(label, op, (), arg))
            continue
        if (
            not isinstance(arg, list)
            or not arg
            or len(arg) > MAX_VALUES
            or not all(isinstance(v, str) for v in arg)
        ):
            raise RequirementError(f".{label}.{op}: expected a list of 1 to {MAX_VALUES} strings")
        out.append(Constraint(label, op, tuple(dict.fromkeys(arg))))
    return tuple(sorted(out, key=lambda c: c.label))


def amount(name: str, value: Any) -> float:
    """One resource amount: memory a size ("4GiB" or bytes), others a positive number."""
    if name == "memory" and isinstance(value, str):
        try:
            n: float = parse_size(value)
        except ConfigError as e:
            raise RequirementError(f".{name}: {e}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        raise RequirementError(
            f".{name}: expected a number{' or a size such as 4GiB' if name == 'memory' else ''}"
        )
    if not math.isfinite(n) or not 0 < n <= MAX_AMOUNT:
        raise RequirementError(f".{name}: expected a positive amount of at most 2**60, got {str(value)[:40]}")
    return n


def parse_resources(raw: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(raw, Mapping):
        raise RequirementError(': expected a table such as { cpu = 2, memory = "4GiB", gpu = 1 }')
    if len(raw) > MAX_RESOURCES:
        raise RequirementError(f": at most {MAX_RESOURCES} resources")
    return tuple(sorted((_name(k, "resource"), amount(k, v)) for k, v in raw.items()))


def parse_flag(text: str) -> dict[str, float]:
    """An executor's --resources ``cpu=8,memory=16GiB,gpu=2,licence=4``."""
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise RequirementError(f"{item!r}: expected name=amount")
        key = _name(key.strip(), "resource")
        value = value.strip()
        try:
            number: Any = float(value) if key != "memory" else value
        except ValueError:
            raise RequirementError(f".{key}: expected a number, got {value!r}") from None
        out[key] = amount(key, number)
    if len(out) > MAX_RESOURCES:
        raise RequirementError(f": at most {MAX_RESOURCES} resources")
    return out


def detected() -> dict[str, float]:
    """What this machine has, as an executor declares it by default: its cores and its memory."""
    out = {"cpu": float(os.cpu_count() or 1)}
    try:
        out["memory"] = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    return out

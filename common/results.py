"""What one task result may hold. The executor applies these caps; the leader enforces them again on
whatever arrives, so that every task record fits one etcd transaction: a record etcd refuses would
hold up every write queued behind it."""

from __future__ import annotations

import json
from typing import Any

#: Characters kept of a task's stdout and of its stderr.
OUTPUT_CAP = 64 * 1024
TRUNCATED_MARK = "\n[... truncated]"
#: Bytes of a result's JSON value; a larger value fails the task (it cannot be cut and stay JSON).
VALUE_CAP = 256 * 1024
#: Characters kept of an error message.
ERROR_CAP = 4 * 1024
#: Bytes of a whole result as stored; outputs of escaped characters can grow six-fold in JSON.
RECORD_CAP = 512 * 1024
#: Characters below which a result cannot reach RECORD_CAP however it is escaped: no need to measure.
_SURELY_SMALL = RECORD_CAP // 12


def value_too_big(size: int) -> str:
    return (
        f"the return value is {size} bytes as JSON, over the {VALUE_CAP} allowed (VALUE_CAP): "
        "return less, or write it somewhere and return where"
    )


def cap(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters with the truncation mark; and whether it was cut."""
    if len(text) <= limit:
        return text, False
    return text[:limit] + TRUNCATED_MARK, True


def bound(out: dict[str, Any], value_bytes: int) -> bool:
    """Cut a result from the wire to the caps, in place (the leader's check); False when the task
    must fail for it.

    ``out`` has ``stdout``, ``stderr``, ``error`` and ``value``; ``value_bytes`` is the size of
    the value's JSON as received."""
    ok = True
    cut = False
    for key in ("stdout", "stderr"):
        out[key], c = cap(out[key] or "", OUTPUT_CAP)
        cut = cut or c
    if out.get("error"):
        out["error"], _ = cap(out["error"], ERROR_CAP)
    if value_bytes > VALUE_CAP:
        ok, out["value"], out["error"] = False, None, value_too_big(value_bytes)
    size = len(out["stdout"]) + len(out["stderr"]) + len(out.get("error") or "") + value_bytes
    if size > _SURELY_SMALL and len(json.dumps(out)) > RECORD_CAP:
        # Heavily escaped text (each character may take 12 bytes as JSON): keep a part that fits.
        out["stdout"], _ = cap(out["stdout"], _SURELY_SMALL // 4)
        out["stderr"], _ = cap(out["stderr"], _SURELY_SMALL // 4)
        cut = True
        if len(json.dumps(out)) > RECORD_CAP:
            ok, out["value"] = False, None
            out["error"] = (
                f"the result is over {RECORD_CAP} bytes as stored (RECORD_CAP), even with its output cut"
            )
    if cut:
        out["truncated"] = True
    return ok

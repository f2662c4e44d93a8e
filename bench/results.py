"""What every benchmark shares: the tasks it runs, the percentiles it quotes, the JSON it leaves."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from rota.client.api import Client

#: A Python function for the ``call`` kind, the same one the peers run.
CALL_TASK: dict[str, Any] = {"kind": "call", "function": "operator:mul", "args": [6, 7]}
NOOP_TASK: dict[str, Any] = {"kind": "noop"}


def percentiles_ms(times: list[float], digits: int = 2) -> dict[str, float]:
    """p50 and p99 of ``times`` (seconds) in milliseconds."""
    q = statistics.quantiles(times, n=100)
    return {"p50_ms": round(q[49] * 1000, digits), "p99_ms": round(q[98] * 1000, digits)}


def round_trips(c: Client, task: dict[str, Any], jobs: int, warm_up: int = 20) -> list[float]:
    """Seconds of each of ``jobs`` sequential one-task jobs, submitted then waited for."""
    job = {"name": "rt", "task": [{"name": "t", **task}]}
    for _ in range(warm_up):  # channels and the leader warm
        c.run_job(job, timeout=30)
    times = []
    for _ in range(jobs):
        t0 = time.perf_counter()
        doc = c.run_job(job, timeout=30)
        times.append(time.perf_counter() - t0)
        assert doc["state"] == "SUCCEEDED", doc
    return times


def save(out: str | Path, result: Any) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))

"""The restart budget of service tasks: pure bookkeeping, no clock of its own.

A service task is restarted whenever it fails or is lost; it fails for good only when more failures
(or losses) than its budget fall within a sliding window. The times are held in memory only, in a
deque bounded by the budget: a new leader starts every window afresh, which at worst grants a task
one more budget's worth of restarts per failover.
"""

from __future__ import annotations

from collections import deque


def format_window(seconds: float) -> str:
    """A window as the job file would give it: ``1h``, ``90m``, ``45s``, ``1.5s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class Window:
    """The times of the most recent events of one kind (failures, or losses) of one task."""

    __slots__ = ("limit", "span", "times")

    def __init__(self, limit: int, span: float) -> None:
        self.limit = limit
        self.span = span
        self.times: deque[float] = deque(maxlen=limit + 1)

    def add(self, now: float) -> int:
        """Record one event at ``now``; how many fall within the window (at most ``limit + 1``)."""
        self.times.append(now)
        return self.count(now)

    def count(self, now: float) -> int:
        times = self.times
        while times and times[0] <= now - self.span:
            times.popleft()
        return len(times)

    def exceeded(self, now: float) -> bool:
        return self.count(now) > self.limit


class Budget:
    """A service task's failures and losses within its restart window."""

    __slots__ = ("failures", "losses")

    def __init__(self, restarts: int, lost_limit: int, span: float) -> None:
        self.failures = Window(restarts, span)
        self.losses = Window(lost_limit, span)

    def failed(self, now: float) -> str:
        """Record a failure; the reason it gives up ("" while the task may be restarted)."""
        w = self.failures
        n = w.add(now)
        if n <= w.limit:
            return ""
        return f"restarted {n - 1} times within {format_window(w.span)} (restarts = {w.limit}): given up"

    def lost(self, now: float) -> str:
        """Record a loss with its executor; the reason it gives up ("" while it may be restarted)."""
        w = self.losses
        n = w.add(now)
        if n <= w.limit:
            return ""
        return (
            f"lost with its executor {n} times within {format_window(w.span)} (at most {w.limit}): "
            "given up, as a task that may be killing its executors"
        )

    def recent_failures(self, now: float) -> int:
        """Failures within the window: what the backoff before the next restart grows with."""
        return self.failures.count(now)

"""Flow control: how many tasks this executor asks the leader for beyond its free slots.

A slot that frees up should find its next task already here, so the executor keeps a queue as long
as the leader's turnaround (a result committed, the next placement committed and sent: a few
milliseconds, more under load) takes to refill. That depth is the executor's rate times that
window, and the rate follows from how long tasks hold a slot: short tasks get a deep queue, tasks
longer than the window get none, so they wait at the leader where any executor can take them.
Like Celery's prefetch multiplier or Dask's worker saturation, but measured rather than guessed.
``--prefetch N`` fixes the credit at N instead.
"""

from __future__ import annotations

import math

#: How long the queued tasks should keep the slots busy: a few of the leader's turnarounds.
WINDOW = 0.1
#: The most tasks an executor queues beyond its slots, whatever their speed.
CAP = 512
#: Weight of the newest task in the running mean of slot-hold times.
ALPHA = 0.2


class Credit:
    def __init__(self, slots: int, fixed: int | None = None) -> None:
        self.slots = slots
        self.fixed = fixed
        #: Mean seconds a task holds a slot; None before the first task ends.
        self.mean: float | None = None

    def ended(self, seconds: float) -> None:
        """A task released its slot after ``seconds``."""
        seconds = max(seconds, 0.0)
        self.mean = seconds if self.mean is None else self.mean + ALPHA * (seconds - self.mean)

    @property
    def value(self) -> int:
        """Tasks to accept beyond the slots."""
        if self.fixed is not None:
            return self.fixed
        if self.mean is None:
            return 0  # nothing known: a first task that turns out short costs one turnaround
        if self.mean <= 0:
            return CAP
        return min(CAP, math.floor(self.slots * WINDOW / self.mean))

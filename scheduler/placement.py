"""Where a task runs: the least-loaded connected executor with a free slot that offers its kind."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class ExecutorSlot:
    """What the scheduling core knows of one executor."""

    id: str
    name: str
    addr: str
    slots: int
    kinds: frozenset[str]
    labels: dict[str, str] = field(default_factory=dict)
    lease_id: int = 0
    prefetch: int = 0
    connected: bool = False
    #: Wall-clock time of the last lease renewal, for operators (placement ignores it).
    heartbeat_at: float = 0.0
    running: set[Any] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.slots + self.prefetch - len(self.running) if self.connected else 0

    def load(self) -> tuple[float, int, str]:
        return (len(self.running) / self.slots if self.slots else 1.0, len(self.running), self.id)


def choose_executor(kind: str, candidates: Iterable[ExecutorSlot]) -> ExecutorSlot | None:
    """The executor to run a task of ``kind``: free slot, right kind, lowest load ratio.

    Ties go to the executor running fewer tasks, then by id, so shards of a split job
    spread across executors instead of filling the first one.
    """
    best: ExecutorSlot | None = None
    for ex in candidates:
        if ex.free > 0 and kind in ex.kinds and (best is None or ex.load() < best.load()):
            best = ex
    return best

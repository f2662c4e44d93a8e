"""Where a task runs: the least-loaded connected executor, not draining, with room (a free slot, or credit for short tasks) that offers its kind."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rota.common.requirements import Requirements

#: The most tasks an executor may hold beyond its slots, whatever credit it asks for.
MAX_PREFETCH = 4096


def bounded_prefetch(credit: int) -> int:
    return max(0, min(int(credit), MAX_PREFETCH))


@dataclass(eq=False)
class ExecutorSlot:
    """What the scheduling core knows of one executor."""

    id: str
    name: str
    addr: str
    slots: int
    kinds: frozenset[str]
    labels: dict[str, str] = field(default_factory=dict)
    #: What it offers to tasks that ask for resources (its --resources), and what those it holds use.
    resources: dict[str, float] = field(default_factory=dict)
    used: Counter[str] = field(default_factory=Counter)
    lease_id: int = 0
    #: Tasks it takes beyond its slots: the flow-control credit it last asked for.
    prefetch: int = 0
    connected: bool = False
    #: An operator drained it (drain-executor); stored with its record, so a new leader knows.
    drain_requested: bool = False
    #: The drain timeout that operator gave (None: the executor's own --drain-timeout).
    drain_timeout: float | None = None
    #: The executor says it is shutting down (it drains on its own; no undrain lifts that).
    leaving: bool = False
    #: Wall-clock time of the last lease renewal, for operators (placement ignores it).
    heartbeat_at: float = 0.0
    running: set[Any] = field(default_factory=set)
    #: How many of ``running`` have each job priority: says at once whether a later, more urgent
    #: task may overtake work queued here.
    priorities: Counter[int] = field(default_factory=Counter)

    @property
    def draining(self) -> bool:
        return self.drain_requested or self.leaving

    @property
    def accepts_work(self) -> bool:
        return self.connected and not self.draining

    @property
    def free(self) -> int:
        """Room for tasks known to be short: free slots and credit."""
        return self.slots + self.prefetch - len(self.running) if self.accepts_work else 0

    @property
    def free_slots(self) -> int:
        """Room for any task."""
        return self.slots - len(self.running) if self.accepts_work else 0

    def hold(self, task: Any) -> None:
        if task not in self.running:
            self.running.add(task)
            self.priorities[task.priority] += 1
            needs = task.job.needs
            if needs is not None:
                for name, amount in needs[task.template]:
                    self.used[name] += amount

    def drop(self, task: Any) -> None:
        if task in self.running:
            self.running.discard(task)
            needs = task.job.needs
            if needs is not None:
                for name, amount in needs[task.template]:
                    self.used[name] -= amount
            left = self.priorities[task.priority] - 1
            if left:
                self.priorities[task.priority] = left
            else:
                del self.priorities[task.priority]

    def clear(self) -> None:
        self.running.clear()
        self.priorities.clear()
        self.used.clear()

    def free_resources(self) -> dict[str, float]:
        return {name: amount - self.used[name] for name, amount in self.resources.items()}

    def can_run(self, needs: Requirements) -> bool:
        """Whether a task with these needs may go here now: labels match, resources free, a free slot."""
        if self.free_slots <= 0 or not needs.matches(self.labels):
            return False
        resources, used = self.resources, self.used
        return all(resources.get(name, 0.0) - used[name] >= amount for name, amount in needs.resources)

    def take_over(self, known: ExecutorSlot) -> None:
        """Keep what an earlier registration of the same executor held, and an operator's drain."""
        self.running, self.priorities, self.used = known.running, known.priorities, known.used
        self.drain_requested, self.drain_timeout = known.drain_requested, known.drain_timeout

    def can_be_overtaken_by(self, priority: int) -> bool:
        """Whether a task of ``priority`` should be sent here although no credit is left: tasks
        are queued here (more than the slots) and some it holds are less urgent (which may be
        running ones: the leader cannot tell queued from running), so the executor's priority gate
        starts the new one before any less urgent queued one. Bounded: at most twice the usual depth."""
        depth = len(self.running)
        return (
            self.accepts_work
            and self.slots < depth < 2 * (self.slots + self.prefetch)
            and min(self.priorities) < priority
        )

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

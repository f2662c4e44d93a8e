"""Which of a job's task groups wait for which (the job file's ``after``), kept as counts.

The graph is between templates (a ``[[task]]`` table and all its copies), not between tasks: a
fan-out of 100,000 copies after one task is one edge. Each task's end costs O(1), and the end of a
template's last task costs O(its dependents): no event scans the graph or the tasks.
"""

from __future__ import annotations

from collections.abc import Iterable

from rota.common.jobspec import JobSpec
from rota.common.states import SUCCEEDED


class Dependencies:
    __slots__ = ("after", "dependents", "waiting", "left", "unmet", "starts", "failed")

    def __init__(self, spec: JobSpec) -> None:
        index = {t.name: i for i, t in enumerate(spec.tasks)}
        #: Per template, the templates it runs after, and those that run after it.
        self.after = [[index[n] for n in t.after] for t in spec.tasks]
        self.dependents: list[list[int]] = [[] for _ in spec.tasks]
        for i, after in enumerate(self.after):
            for j in after:
                self.dependents[j].append(i)
        #: Per template: the templates it runs after that have not all ended yet.
        self.waiting = [len(a) for a in self.after]
        #: Per template: its tasks not yet ended.
        self.left = [t.copies() for t in spec.tasks]
        #: Per template: the first template it runs after that ended with a task not SUCCEEDED.
        self.unmet: list[int | None] = [None] * len(spec.tasks)
        #: Per template: whether one of its tasks ended other than SUCCEEDED.
        self.failed = [False] * len(spec.tasks)
        self.starts = []
        start = 0
        for t in spec.tasks:
            self.starts.append(start)
            start += t.copies()

    @staticmethod
    def of(spec: JobSpec) -> Dependencies | None:
        """None for a job whose tasks run after none (most jobs): no cost on its events."""
        return Dependencies(spec) if any(t.after for t in spec.tasks) else None

    def restore(self, states: Iterable[tuple[int, str]]) -> None:
        """Apply the (template, state) of every task already ended (a new leader's rebuild)."""
        for template, state in states:
            self.task_ended(template, state)

    def ready(self, template: int) -> bool:
        return self.waiting[template] == 0

    def task_ended(self, template: int, state: str) -> list[int]:
        """A task of ``template`` ended in ``state``: the templates this made ready, if any."""
        if state != SUCCEEDED:
            self.failed[template] = True
        self.left[template] -= 1
        if self.left[template]:
            return []
        ready = []
        for d in self.dependents[template]:
            self.waiting[d] -= 1
            if self.failed[template] and self.unmet[d] is None:
                self.unmet[d] = template
            if self.waiting[d] == 0:
                ready.append(d)
        return ready

    def waiting_for(self, template: int) -> list[int]:
        """The templates ``template`` still waits for (``get-job``'s "waiting for")."""
        return [a for a in self.after[template] if self.left[a]]

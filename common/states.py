"""Job and task states: one enum, the names every program, record and document uses.

Members are strings (``State.PENDING == "PENDING"``), so they go into JSON and etcd records as
they are and compare equal to the plain strings read back from them.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str.__str__(self)

        def __format__(self, spec: str) -> str:
            return str.__format__(str(self), spec)


class State(StrEnum):
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"


PENDING, ASSIGNED, RUNNING = State.PENDING, State.ASSIGNED, State.RUNNING
SUCCEEDED, FAILED, CANCELLED = State.SUCCEEDED, State.FAILED, State.CANCELLED
#: A task that never ran because a task it runs after (``after``) did not succeed.
SKIPPED = State.SKIPPED

#: Every state a task goes through, in order.
TASK_STATES = (PENDING, ASSIGNED, RUNNING, SUCCEEDED, FAILED, CANCELLED, SKIPPED)
#: A job is never ASSIGNED: it is PENDING until one of its tasks is placed.
JOB_STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED)
#: States a task or job never leaves.
TERMINAL = frozenset((SUCCEEDED, FAILED, CANCELLED, SKIPPED))
#: A task placed on an executor and not yet ended.
ACTIVE = frozenset((ASSIGNED, RUNNING))

#: Not a state: what an executor reports for an attempt it gives back unfinished while it drains.
#: The leader runs the task again without counting the attempt as failed.
HANDED_BACK = "HANDED_BACK"

"""For writers of job types: plug-ins that turn a job file with their own keys into a built-in job.

A job type is any object with ``expand(table: dict) -> dict``, registered in the ``rota.jobs``
entry-point group of its package (the entry-point name is what job files give as ``type``)::

    [project.entry-points."rota.jobs"]
    fanout = "rota.common.fanout:Fanout"

``expand`` gets the job's keys other than ``type`` and the built-in job keys (``name``, ``id``,
``priority``, ``max-attempts``, ``timeout``, ``retention``, which are added to what it returns
unless it sets them) and returns a built-in job table (``task`` tables and so on), which is then
validated like any job file. It reports a bad key with ``JobTypeError(key, reason)``; ``check_keys``
refuses keys it does not know. It runs where jobs are validated (the client and the masters), so it
must be quick, deterministic and free of I/O. Standard library only, like ``rota.task``.

A job type may also have ``claims(table: dict) -> bool``: a job table with neither ``type`` nor
``task`` tables is offered to each installed job type that has one, in the order of their names,
and the first that returns True expands it as if ``type`` named it (the job records that type).
That lets a file in the type's own format be submitted without a ``type`` line; claim only tables
with a key no other format uses. ``claims`` gets a copy of the whole table (the built-in job keys
too); one that raises, or returns anything but a bool, refuses the job naming the plug-in.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

GROUP = "rota.jobs"

__all__ = ["GROUP", "JobTypeError", "check_keys", "unknown_key"]


class JobTypeError(ValueError):
    """A bad key in a typed job: the job is refused with ``SOURCE: KEY: reason``."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


def unknown_key(key: str, known: Iterable[str], what: str = "") -> str:
    """The message for a key nobody knows, with the closest known one as a hint."""
    known = list(known)
    hint = difflib.get_close_matches(key, known, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown key {key!r}{what} (known: {', '.join(known)}){suggestion}"


def check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str = "") -> None:
    """Raise JobTypeError naming the first key of ``table`` not in ``allowed``.

    ``where`` prefixes the key for a nested table (``"defaults"`` gives ``defaults.colour``).
    """
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            raise JobTypeError(f"{where}.{key}" if where else str(key), unknown_key(str(key), allowed))

"""The registry of task kinds: every kind, built-in or not, is found through the ``rota.kinds`` entry-point
group, so a new kind ships as its own package and the executor is never edited.

Writing a plug-in kind
----------------------
1. Subclass :class:`executor.kinds.base.Kind` and implement ``run``::

       from rota.executor.kinds.base import Kind, TaskResult, TaskSpec, run_subprocess, task_env

       class RubyKind(Kind):
           name = "ruby"

           def available(self) -> bool:          # hosts without ruby do not offer the kind
               return shutil.which("ruby") is not None

           async def run(self, spec: TaskSpec) -> TaskResult:
               return await run_subprocess(["ruby", "-e", spec.params["code"]], spec, task_env(spec))

   ``spec.params`` holds the task's kind-specific keys from the job file, ``spec.env`` the ``ROTA_*``
   variables. ``run`` must honour ``spec.timeout`` and, when its asyncio task is cancelled, kill what it
   started and re-raise ``CancelledError``; ``run_subprocess`` does both for a command line. Override
   ``start``/``close`` to warm up and release resources (``slots`` is the executor's parallelism).

2. Declare it in the plug-in package's ``pyproject.toml``; the entry-point name is the kind's name, the
   one job files use in ``kind = "..."``::

       [project.entry-points."rota.kinds"]
       ruby = "rota_ruby:RubyKind"

3. ``pip install`` the package into the executor's environment and restart the executor; limit what an
   executor offers with ``--allow-kinds``.

A plug-in that fails to import, or names something that is not a Kind, is logged and skipped so that it
cannot take the executor down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import entry_points

from rota.executor.kinds.base import Kind

ENTRY_POINT_GROUP = "rota.kinds"

log = logging.getLogger("rota.kinds")


def discover() -> dict[str, type[Kind]]:
    """Every kind installed in this environment, by entry-point name."""
    found: dict[str, type[Kind]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception:
            log.exception("task kind %r (%s) failed to load; skipped", ep.name, ep.value)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Kind)):
            log.error("task kind %r (%s) is not a subclass of Kind; skipped", ep.name, ep.value)
            continue
        kind: type[Kind] = cls
        if ep.name in found and found[ep.name] is not kind:
            log.warning(
                "task kind %r is declared twice; keeping %s, ignoring %s", ep.name, found[ep.name], ep.value
            )
            continue
        if kind.name and kind.name != ep.name:
            log.warning(
                "task kind %r is registered under the name %r; job files use %r", kind.name, ep.name, ep.name
            )
        found[ep.name] = kind
    return found


def load_kinds(slots: int, allow: Sequence[str] | None = None) -> dict[str, Kind]:
    """The kinds this executor offers: installed, allowed and available on this host, instantiated."""
    discovered = discover()
    names = list(discovered) if allow is None else list(dict.fromkeys(allow))
    unknown = [name for name in names if name not in discovered]
    if unknown:
        raise ValueError(
            f"unknown task kind{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(sorted(discovered)) or 'none'}"
        )
    kinds: dict[str, Kind] = {}
    for name in names:
        try:
            kind = discovered[name](slots)
            usable = kind.available()
        except Exception:
            log.exception("task kind %r failed to initialise; skipped", name)
            continue
        if not usable:
            log.info("task kind %r is not available on this host; skipped", name)
            continue
        kind.name = name
        kinds[name] = kind
    return kinds

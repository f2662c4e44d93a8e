"""Job files: the one parser and validator shared by the client and the master.

The client checks a TOML file before submitting it, then sends ``JobSpec.to_dict()``
as JSON; the master runs the same checks again on that dict through
``JobSpec.from_dict``, so a job that one side accepts the other accepts too.
Every error names its source (a file path, ``<text>`` or ``<request>``) and the key.
"""

from __future__ import annotations

import importlib.metadata
import json
import keyword
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rota.common import cron, formats, ids
from rota.common import limits as lim
from rota.common import requirements as reqs
from rota.common import retry as retries
from rota.common.config import ConfigError, parse_duration
from rota.jobtypes import GROUP as JOB_TYPE_GROUP
from rota.jobtypes import JobTypeError
from rota.jobtypes import unknown_key as _unknown_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_CRON_KEYS = ("schedule", "time-zone", "overlap", "catch-up")
#: A schedule's jobs are named ``<schedule id>.<fire time>`` (17 characters), within a job id's 128.
MAX_SCHEDULE_ID = 110
PRIORITIES = {"low": 10, "medium": 50, "high": 90}
DEFAULT_PRIORITY = 50
DEFAULT_MAX_ATTEMPTS = 3
MAX_JOB_BYTES = 8 * 1024 * 1024
MAX_TASKS = 1_000_000
BUILTIN_KINDS = ("noop", "sleep", "shell", "python", "go", "call")
KIND_GROUP = "rota.kinds"
SHELL = ("/bin/sh", "-c")
REQUEST_SOURCE = "<request>"
TEXT_SOURCE = "<text>"
MAX_NAME_CHARS = 200
#: Attempts a task may be given: a retry storm of thousands helps nobody.
MAX_ATTEMPTS = 100
#: The longest timeout or sleep: a week. Longer is a mistake, and 1e308 seconds breaks timers.
MAX_SECONDS = 7 * 24 * 3600.0
#: The longest an ended job may be kept (the job file's ``retention``).
MAX_RETENTION = 365 * 24 * 3600.0
#: How deep args, kwargs and plug-in parameters may nest: deeper raises RecursionError somewhere.
MAX_DEPTH = 32
#: Environment names the executor sets itself; a task must not override them.
RESERVED_ENV_PREFIX = "ROTA_"

_JOB_KEYS = (
    "name", "type", "id", "priority", "max-attempts", "timeout", "retention", "gang", "task", "retry",
    *_CRON_KEYS,
)  # fmt: skip
#: The job keys a job type's plug-in does not see: they pass to its result unless it sets them.
_PASSED_KEYS = tuple(k for k in _JOB_KEYS if k not in ("type", "task"))
_COMMON_TASK_KEYS = (
    "name", "kind", "count", "shards", "timeout", "max-attempts", "limits", "data",
    "ports",
)  # fmt: skip
#: Keys of a task's scheduling, beside the common ones (not parameters of its kind).
_SCHEDULING_TASK_KEYS = (
    "service", "restarts", "restart-window", "gang", "report", "after", "on-failure", "retry",
    "constraints", "resources", "priority",
)  # fmt: skip
#: What a task does when a task it runs after did not succeed: it ends SKIPPED, or it runs anyway.
ON_FAILURE = ("skip", "run")
#: Names one task may list in ``after``.
MAX_AFTER = 64
#: A service task's default restart budget: restarts after a failure within the window.
DEFAULT_RESTARTS = 10
MAX_RESTARTS = 1000
DEFAULT_RESTART_WINDOW = 3600.0
#: A gang's name (the task key ``gang``).
GANG_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Kinds that run no process of their own: a ``limits`` table would bound nothing.
_UNLIMITED_KINDS = ("noop", "sleep")
#: Kinds whose task cannot listen on a port of its own (``call`` runs in a shared worker).
_PORTLESS_KINDS = ("noop", "sleep", "call")
#: A port's name becomes part of ROTA_PORT_<NAME> and of an endpoint's ``task.port`` name.
PORT_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,30}")
MAX_PORTS = 8
_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "noop": (),
    "sleep": ("seconds",),
    "shell": ("command", "env"),
    "python": ("code", "env"),
    "go": ("code", "env"),
    "call": ("function", "args", "kwargs"),
}
_DATA_PREFIXES = ("python", "go")
_EXPANDED_RE = re.compile(r"(.+)-(shard)?(0|[1-9][0-9]*)")


class JobSpecError(Exception):
    """A bad job: the message reads ``source: key: reason``; the parts are kept as attributes."""

    def __init__(self, reason: str, *, source: str | None = None, key: str | None = None) -> None:
        self.reason = reason
        self.source = source
        self.key = key
        super().__init__(": ".join(p for p in (source, key, reason) if p))

    def with_source(self, source: str) -> JobSpecError:
        return JobSpecError(self.reason, source=self.source or source, key=self.key)


@dataclass
class TaskTemplate:
    """One ``[[task]]`` table; it stands for ``copies()`` tasks once expanded."""

    name: str
    kind: str
    params: dict[str, Any]
    count: int = 1
    shards: int = 0
    timeout: float | None = None
    max_attempts: int | None = None
    #: The task's own resource limits (its ``limits`` table); empty: the executor's defaults.
    limits: lim.Limits = field(default_factory=lim.Limits)
    #: A service task: restarted after a failure or a loss while within its restart budget.
    service: bool = False
    restarts: int = DEFAULT_RESTARTS
    restart_window: float = DEFAULT_RESTART_WINDOW
    #: The named gang its tasks belong to (placed all at once with the other members), or None.
    gang: str | None = None
    #: Named ports its executor picks for each attempt (ROTA_PORT_<NAME>), published as endpoints.
    ports: tuple[str, ...] = ()
    #: Its result's value (or last stdout line, a JSON object) is the job's report (one task at most).
    report: bool = False
    #: Names of the tasks (a group stands for all its copies) it runs after: once all have ended.
    after: tuple[str, ...] = ()
    #: When one of those did not succeed: "skip" (it ends SKIPPED) or "run" (it runs anyway).
    on_failure: str = "skip"
    #: How its failed attempts are retried (its own ``retry`` table); None: the job's.
    retry: retries.RetryPolicy | None = None
    #: What it needs of its executor: labels (``constraints``) and ``resources``.
    needs: reqs.Requirements = field(default_factory=reqs.Requirements)
    #: Its own priority (0-100); None: the job's.
    priority: int | None = None

    def copies(self) -> int:
        return self.shards or self.count

    def copy_name(self, copy: int) -> str:
        """The name of one copy: ``name``, ``name-3`` (count) or ``name-shard3`` (shards)."""
        if self.shards:
            return f"{self.name}-shard{copy}"
        return f"{self.name}-{copy}" if self.count > 1 else self.name

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, **self.params}
        if self.shards:
            out["shards"] = self.shards
        elif self.count != 1:
            out["count"] = self.count
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.max_attempts is not None:
            out["max-attempts"] = self.max_attempts
        if self.limits:
            out["limits"] = self.limits.to_dict()
        if self.service:
            out["service"] = True
            out["restarts"] = self.restarts
            out["restart-window"] = self.restart_window
        if self.gang is not None:
            out["gang"] = self.gang
        if self.ports:
            out["ports"] = list(self.ports)
        if self.report:
            out["report"] = True
        if self.after:
            out["after"] = list(self.after)
            out["on-failure"] = self.on_failure
        if self.retry is not None:
            out["retry"] = self.retry.to_dict()
        out.update(self.needs.to_dict())
        if self.priority is not None:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class ExpandedTask:
    """One runnable task: a copy of a template, named so it is unique within the job."""

    template: int
    copy: int
    name: str
    shard_index: int | None
    shard_count: int | None


@dataclass
class JobSpec:
    """A validated job. Durations are float seconds; defaults are filled in."""

    name: str
    id: str | None = None
    priority: int = DEFAULT_PRIORITY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    tasks: list[TaskTemplate] = field(default_factory=list)
    #: How long the job is kept once ended; None: the masters' --job-retention.
    retention: float | None = None
    #: The job type (a ``rota.jobs`` plug-in) it was written for; its tasks are already expanded.
    type: str | None = None
    #: All its tasks form one gang (placed all at once or not at all).
    gang: bool = False
    #: A schedule: the job is a template that the leader submits at each fire time.
    cron: cron.CronSpec | None = None
    #: How failed attempts are retried, for tasks without their own ``retry``; None: the default.
    retry: retries.RetryPolicy | None = None

    def task_count(self) -> int:
        return sum(t.copies() for t in self.tasks)

    def report_index(self) -> int | None:
        """The index of the task whose result is the job's report (``report = true``), if any."""
        start = 0
        for t in self.tasks:
            if t.report:
                return start
            start += t.copies()
        return None

    def expand(self) -> Iterator[ExpandedTask]:
        """Yield tasks lazily: a job may hold up to ``MAX_TASKS`` of them."""
        for index, t in enumerate(self.tasks):
            for i in range(t.copies()):
                shards = t.shards or None
                yield ExpandedTask(index, i, t.copy_name(i), i if shards else None, shards)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON-able form; ``from_dict`` turns it back into an equal spec."""
        out: dict[str, Any] = {"name": self.name}
        if self.type is not None:
            out["type"] = self.type
        if self.id is not None:
            out["id"] = self.id
        out["priority"] = self.priority
        out["max-attempts"] = self.max_attempts
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.retention is not None:
            out["retention"] = self.retention
        if self.gang:
            out["gang"] = True
        if self.cron is not None:
            out.update(self.cron.to_dict())
        if self.retry is not None:
            out["retry"] = self.retry.to_dict()
        out["task"] = [t.to_dict() for t in self.tasks]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = REQUEST_SOURCE) -> JobSpec:
        """Validate a parsed job (TOML tables or JSON) exactly as a job file is validated."""
        return _Parser(source).job(data)

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> JobSpec:
        """A spec the cluster accepted once, read back from etcd (``to_dict``'s form), as it was.

        Not validated again: today's rules and installed plug-ins may differ from those it was
        accepted under, and a job that no new leader can load would stop every failover.
        """
        tasks = [
            TaskTemplate(
                name=t["name"],
                kind=t["kind"],
                params={
                    k: v
                    for k, v in t.items()
                    if k not in _COMMON_TASK_KEYS and k not in _SCHEDULING_TASK_KEYS
                },
                count=int(t.get("count", 1)),
                shards=int(t.get("shards", 0)),
                timeout=t.get("timeout"),
                max_attempts=t.get("max-attempts"),
                limits=_stored_limits(t.get("limits")),
                service=bool(t.get("service", False)),
                restarts=int(t.get("restarts", DEFAULT_RESTARTS)),
                restart_window=float(t.get("restart-window", DEFAULT_RESTART_WINDOW)),
                gang=t.get("gang"),
                ports=tuple(str(p) for p in t.get("ports", ())),
                report=t.get("report") is True,
                after=tuple(str(a) for a in t.get("after", ())),
                on_failure=str(t.get("on-failure", "skip")),
                retry=retries.RetryPolicy.from_stored(t.get("retry")),
                needs=_stored_needs(t),
                priority=None if t.get("priority") is None else int(t["priority"]),
            )
            for t in data["task"]
        ]
        return cls(
            name=data["name"],
            id=data.get("id"),
            priority=int(data.get("priority", DEFAULT_PRIORITY)),
            max_attempts=int(data.get("max-attempts", DEFAULT_MAX_ATTEMPTS)),
            timeout=data.get("timeout"),
            tasks=tasks,
            retention=data.get("retention"),
            type=data.get("type"),
            gang=bool(data.get("gang", False)),
            cron=_stored_cron(data),
            retry=retries.RetryPolicy.from_stored(data.get("retry")),
        )


def _stored_needs(t: Mapping[str, Any]) -> reqs.Requirements:
    """As accepted once; parsed again (the forms are the job file's), unreadable ones count as none."""
    try:
        return reqs.Requirements(
            reqs.parse_constraints(t["constraints"]) if "constraints" in t else (),
            reqs.parse_resources(t["resources"]) if "resources" in t else (),
        )
    except reqs.RequirementError:
        return reqs.Requirements()


def _stored_cron(data: Mapping[str, Any]) -> cron.CronSpec | None:
    if "schedule" not in data:
        return None
    return cron.CronSpec(
        str(data["schedule"]), str(data.get("time-zone", "UTC")), str(data.get("overlap", cron.DEFAULT_OVERLAP)),
        int(data.get("catch-up", cron.DEFAULT_CATCH_UP)),
    )  # fmt: skip


def _stored_limits(raw: Any) -> lim.Limits:
    """Limits as ``to_dict`` stored them; unreadable ones count as none rather than stop a failover."""
    if not isinstance(raw, Mapping):
        return lim.Limits()
    try:
        return lim.parse_table(raw)
    except ConfigError:
        return lim.Limits()


def validate_job_id(job_id: Any) -> str:
    """The job-id rule of ``rota.common.ids``, failing as a JobSpecError that names the key."""
    if not isinstance(job_id, str):
        raise JobSpecError(f"expected a string, got {_type_name(job_id)}", key="id")
    try:
        return ids.validate_job_id(job_id)
    except ids.BadJobId as e:
        raise JobSpecError(str(e), key="id") from None


def parse_priority(value: Any) -> int:
    """``low``/``medium``/``high`` (any case) or an integer 0..100."""
    if isinstance(value, str):
        try:
            return PRIORITIES[value.strip().lower()]
        except KeyError:
            raise JobSpecError(
                f"unknown priority {value!r}: expected low, medium, high or an integer 0..100",
                key="priority",
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobSpecError(
            f"expected low, medium, high or an integer 0..100, got {_type_name(value)}", key="priority"
        )
    if not 0 <= value <= 100:
        raise JobSpecError(f"priority {value} is out of range 0..100", key="priority")
    return value


def load_job(source: str | os.PathLike[str] | Mapping[str, Any], *, job_id: str | None = None) -> JobSpec:
    """Parse a job from a dict, a file path or TOML text; ``job_id`` overrides the job's own id."""
    if isinstance(source, Mapping):
        spec = JobSpec.from_dict(source)
        name = REQUEST_SOURCE
    elif isinstance(source, os.PathLike) or _looks_like_path(source):
        name = os.fspath(source)
        try:
            table = formats.parse(_read_file(name), formats.format_of(name))
        except formats.FormatError as e:
            raise JobSpecError(str(e), source=name) from None
        spec = _Parser(name).job(table)
    elif isinstance(source, str):
        name = TEXT_SOURCE
        spec = parse_job_text(source)
    else:
        raise JobSpecError(f"expected a path, TOML text or a dict, got {type(source).__name__}")
    if job_id is not None:
        try:
            spec.id = validate_job_id(job_id)
        except JobSpecError as e:
            raise e.with_source(name) from None
    return spec


def parse_job_text(text: str, source: str = TEXT_SOURCE) -> JobSpec:
    """TOML text only, never a path: for text that arrives over the network."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_JOB_BYTES:
        raise _oversize(source)
    return _Parser(source).job(_parse_toml(text, source))


def _looks_like_path(text: str | os.PathLike[str] | Mapping[str, Any]) -> bool:
    """A one-line string without ``=`` cannot be a job, so it is a (maybe missing) file name."""
    if not isinstance(text, str) or not text or "\n" in text:
        return False
    return os.path.exists(text) or "=" not in text or text.endswith((".toml", *formats.EXTENSIONS))


def _read_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JOB_BYTES + 1)
    except FileNotFoundError:
        raise JobSpecError("no such job file", source=path) from None
    except OSError as e:
        raise JobSpecError(f"cannot read: {e.strerror or e}", source=path) from None
    if len(raw) > MAX_JOB_BYTES:
        raise _oversize(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobSpecError(f"not UTF-8 text (byte {e.start})", source=path) from None


def _oversize(source: str) -> JobSpecError:
    return JobSpecError(f"oversize job: more than {MAX_JOB_BYTES} bytes (MAX_JOB_BYTES)", source=source)


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise JobSpecError("invalid TOML: nested too deeply", source=source) from None
    except ValueError as e:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise JobSpecError(f"invalid TOML: {e}", source=source) from None


def parse_job_json(raw: bytes, source: str = REQUEST_SOURCE) -> JobSpec:
    """A job sent as JSON (the SubmitJob RPC, the HTTP API): the same size cap as a job file."""
    if len(raw) > MAX_JOB_BYTES:
        raise _oversize(source)
    try:
        data = json.loads(raw)
    except RecursionError:
        raise JobSpecError("invalid JSON: nested too deeply", source=source) from None
    except ValueError as e:
        raise JobSpecError(f"invalid JSON: {e}", source=source) from None
    if not isinstance(data, dict):
        raise JobSpecError(f"a job is a JSON object, got {_type_name(data)}", source=source)
    return JobSpec.from_dict(data, source=source)


_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    for t, name in _TYPE_NAMES.items():
        if isinstance(value, t):
            return name
    return type(value).__name__


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    """The ``rota.kinds`` entry points, looked up per job so kinds installed later count."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=KIND_GROUP)}


def _job_types() -> dict[str, importlib.metadata.EntryPoint]:
    """The ``rota.jobs`` entry points, looked up per job like the kinds."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=JOB_TYPE_GROUP)}


class _Parser:
    """Walks one job's tables; ``fail`` prefixes every error with the source."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None
        self._validators: dict[str, Callable[[dict[str, Any]], None] | None] = {}

    @property
    def plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._entry_points is None:
            self._entry_points = _plugins()
        return self._entry_points

    def fail(self, key: str | None, reason: str) -> JobSpecError:
        return JobSpecError(reason, source=self.source, key=key)

    def job(self, data: Mapping[str, Any]) -> JobSpec:
        if not isinstance(data, Mapping):
            raise self.fail(None, f"expected a table of job keys, got {_type_name(data)}")
        data = self._present(data, None)
        if "type" in data:
            return self._typed_job(data)
        if "task" not in data:
            claimed = self._claimed_by(data)
            if claimed is not None:
                return self._typed_job({**data, "type": claimed})
        if not data:
            raise self.fail(None, "no tasks: the job is empty")
        for key in data:
            if key not in _JOB_KEYS:
                raise self.fail(None, _unknown_key(key, _JOB_KEYS))
        name = self._name(data, "name")
        job_id = None
        if "id" in data:
            try:
                job_id = validate_job_id(data["id"])
            except JobSpecError as e:
                raise e.with_source(self.source) from None
        priority = DEFAULT_PRIORITY
        if "priority" in data:
            try:
                priority = parse_priority(data["priority"])
            except JobSpecError as e:
                raise e.with_source(self.source) from None
        max_attempts = self._int(data, "max-attempts", "max-attempts", 1, DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS)
        timeout = self._duration(data, "timeout", "timeout")
        retention = self._duration(data, "retention", "retention", MAX_RETENTION)
        gang = self._bool(data, "gang", "gang")
        tasks = self._tasks(data.get("task"))
        if gang:
            for i, task in enumerate(tasks):
                if task.after:
                    raise self.fail(
                        f"task[{i}].after",
                        "the job's gang = true places all its tasks at once: none can run after another",
                    )
                if task.gang is not None:
                    raise self.fail(
                        f"task[{i}].gang",
                        "the job's gang = true makes all its tasks one gang: give the job's gang or "
                        "the tasks' gang groups, not both",
                    )
        return JobSpec(
            name,
            job_id,
            priority,
            max_attempts,
            timeout,
            tasks,
            retention,
            gang=gang,
            cron=self._cron(data, job_id),
            retry=self._retry(data, "retry"),
        )

    def _needs(self, table: dict[str, Any], where: str) -> reqs.Requirements:
        out = []
        for key, parse in (("constraints", reqs.parse_constraints), ("resources", reqs.parse_resources)):
            try:
                out.append(parse(table[key]) if key in table else ())
            except reqs.RequirementError as e:
                path, _, reason = str(e).partition(": ")
                raise self.fail(f"{where}.{key}{path}", reason) from None
        return reqs.Requirements(*out)

    def _retry(self, table: dict[str, Any], full: str) -> retries.RetryPolicy | None:
        if "retry" not in table:
            return None

        def seconds(value: Any, key: str) -> float:
            parsed = self._duration({key: value}, key, f"{full}.{key}", 24 * 3600.0)
            assert parsed is not None
            return parsed

        try:
            return retries.parse(table["retry"], seconds)
        except JobSpecError:
            raise
        except ValueError as e:
            where, _, reason = str(e).partition(": ")
            raise self.fail(full + where, reason) from None

    def _cron(self, data: dict[str, Any], job_id: str | None) -> cron.CronSpec | None:
        if "schedule" not in data:
            for key in _CRON_KEYS:
                if key in data:
                    raise self.fail(key, 'only for a scheduled job (schedule = "...")')
            return None
        try:
            spec = cron.parse(
                data["schedule"], data.get("time-zone", "UTC"), data.get("overlap", cron.DEFAULT_OVERLAP),
                data.get("catch-up", cron.DEFAULT_CATCH_UP),
            )  # fmt: skip
        except cron.CronError as e:
            key, _, reason = str(e).partition(": ")
            raise self.fail(key, reason) from None
        if job_id is not None and len(job_id) > MAX_SCHEDULE_ID:
            raise self.fail(
                "id", f"a schedule's id is at most {MAX_SCHEDULE_ID} characters (its jobs add 17)"
            )
        return spec

    def _typed_job(self, data: dict[str, Any]) -> JobSpec:
        """A job of a plug-in type: its plug-in expands it into a built-in job, validated as usual.

        A typed job with ``task`` tables is one already expanded (what ``to_dict`` gives, what the
        client sends), so a master validates it without the plug-in; ``type`` is then a label.
        """
        name = data.pop("type")
        if not isinstance(name, str):
            raise self.fail("type", f"expected the name of a job type, got {_type_name(name)}")
        if "task" in data:
            label = self._name({"type": name}, "type")
            try:
                spec = self.job(data)
            except JobSpecError as e:
                if e.key is None and e.reason.startswith("unknown key"):
                    note = f"; a job with [[task]] tables is not expanded by its type {name!r}"
                    raise self.fail(None, e.reason + note) from None
                raise
            spec.type = label
            return spec
        plugin = self._job_type(name)
        own = {k: v for k, v in data.items() if k not in _PASSED_KEYS}
        try:
            out = plugin.expand(own)
        except JobTypeError as e:
            raise self.fail(str(e.key), str(e.reason)) from None
        except (Exception, SystemExit) as e:
            raise self.fail("type", f"job type {name!r} failed: {type(e).__name__}: {e}") from None
        if not isinstance(out, Mapping):
            raise self.fail("type", f"job type {name!r} returned {_type_name(out)}, not a job table")
        if "type" in out:
            raise self.fail("type", f"job type {name!r} returned a job with a type of its own")
        if "task" not in out:
            raise self.fail("type", f"job type {name!r} returned a job without tasks")
        passed = {k: data[k] for k in _PASSED_KEYS if k in data and k not in out}
        try:
            spec = self.job({**passed, **out})
        except JobSpecError as e:
            if e.key in passed:
                raise
            raise self.fail(e.key, f"{e.reason} (in the job that type {name!r} made)") from None
        spec.type = name
        return spec

    def _claimed_by(self, data: dict[str, Any]) -> str | None:
        """The first installed job type (by name) whose ``claims(table)`` says yes to a job table
        with neither ``type`` nor ``task``; None when none does (or none has ``claims``)."""
        types = _job_types()
        for name in sorted(types):
            try:
                plugin = types[name].load()
            except Exception as e:
                raise self.fail(None, f"cannot load job type {name!r}: {type(e).__name__}: {e}") from None
            claims = getattr(plugin, "claims", None)
            if not callable(claims):
                continue
            try:
                answer = claims(dict(data))
            except (Exception, SystemExit) as e:
                raise self.fail(
                    None, f"job type {name!r} failed in claims(): {type(e).__name__}: {e}"
                ) from None
            if not isinstance(answer, bool):
                raise self.fail(
                    None, f"job type {name!r}: claims() returned {_type_name(answer)}, not true or false"
                )
            if answer:
                return name
        return None

    def _job_type(self, name: str) -> Any:
        types = _job_types()
        if name not in types:
            installed = ", ".join(sorted(types)) or "none"
            raise self.fail("type", f"unknown job type {name!r} (installed: {installed})")
        try:
            plugin = types[name].load()
        except Exception as e:
            raise self.fail("type", f"cannot load job type {name!r}: {type(e).__name__}: {e}") from None
        if not callable(getattr(plugin, "expand", None)):
            raise self.fail("type", f"job type {name!r} has no expand(table) method")
        return plugin

    def _present(self, table: Mapping[str, Any], where: str | None) -> dict[str, Any]:
        """Keys with a null value count as absent: TOML has no null, JSON callers may send one."""
        out: dict[str, Any] = {}
        for key, value in table.items():
            if not isinstance(key, str):
                raise self.fail(where, f"key {key!r} is not a string")
            if value is not None:
                out[key] = value
        return out

    def _tasks(self, raw: Any) -> list[TaskTemplate]:
        if raw is None or (isinstance(raw, list) and not raw):
            raise self.fail("task", "no tasks: a job needs at least one [[task]] table")
        if not isinstance(raw, list):
            raise self.fail("task", f"expected an array of tables ([[task]]), got {_type_name(raw)}")
        tasks: list[TaskTemplate] = []
        seen: dict[str, int] = {}
        report: int | None = None
        total = 0
        for i, table in enumerate(raw):
            where = f"task[{i}]"
            if not isinstance(table, Mapping):
                raise self.fail(where, f"expected a table, got {_type_name(table)}")
            task = self._task(self._present(table, where), where)
            if task.name in seen:
                raise self.fail(
                    f"{where}.name", f"duplicate task name {task.name!r} (also task[{seen[task.name]}])"
                )
            seen[task.name] = i
            if task.report:
                if report is not None:
                    raise self.fail(
                        f"{where}.report",
                        f"a job has at most one report task (task[{report}] is one already)",
                    )
                report = i
            total += task.copies()
            if total > MAX_TASKS:
                key = f"{where}.shards" if task.shards else f"{where}.count"
                raise self.fail(key, f"too many tasks: the job expands to more than {MAX_TASKS} (MAX_TASKS)")
            tasks.append(task)
        self._check_expanded_names(tasks)
        self._check_after(tasks)
        return tasks

    def _check_after(self, tasks: list[TaskTemplate]) -> None:
        """Every name in ``after`` is a task of the job, and the tasks form no cycle."""
        index = {t.name: i for i, t in enumerate(tasks)}
        for i, t in enumerate(tasks):
            for name in t.after:
                if name not in index:
                    raise self.fail(f"task[{i}].after", f"no task named {name[:70]!r} in this job")
                if name == t.name:
                    raise self.fail(f"task[{i}].after", f"task {t.name!r} cannot run after itself")
            if t.after and (t.gang is not None or t.service):
                what = (
                    "a gang's tasks are placed all at once" if t.gang else "a service task runs until stopped"
                )
                raise self.fail(f"task[{i}].after", f"not for this task: {what}")
        cycle = find_cycle([[index[n] for n in t.after] for t in tasks])
        if cycle:
            names = " -> ".join(repr(tasks[i].name) for i in cycle)
            raise self.fail(f"task[{cycle[0]}].after", f"a cycle: {names} (each runs after the next)")

    def _check_expanded_names(self, tasks: list[TaskTemplate]) -> None:
        """A plain name like ``a-3`` must not equal a copy of a counted ``a``.

        Copies of two different templates never collide (the text after the last
        ``-`` tells the template apart), so only plain names need checking, without
        expanding up to ``MAX_TASKS`` names.
        """
        by_name = {t.name: (i, t) for i, t in enumerate(tasks)}
        for i, t in enumerate(tasks):
            if t.copies() > 1 or t.shards:
                continue
            m = _EXPANDED_RE.fullmatch(t.name)
            if not m or m.group(1) not in by_name:
                continue
            j, other = by_name[m.group(1)]
            sharded = m.group(2) is not None
            if (sharded and other.shards or not sharded and not other.shards and other.count > 1) and int(
                m.group(3)
            ) < other.copies():
                raise self.fail(
                    f"task[{i}].name", f"task name {t.name!r} equals a copy of task[{j}] ({other.name!r})"
                )

    def _task(self, table: dict[str, Any], where: str) -> TaskTemplate:
        name = self._name(table, "name", where)
        if "/" in name or name.isdigit():
            # A task is named in ids (<job>/<index>) and by `logs JOB TASK`, where digits mean an index.
            raise self.fail(f"{where}.name", f"task name {name!r} must not contain '/' or be all digits")
        kind, table = self._kind(table, where)
        known = _KIND_KEYS.get(kind)
        plugin_keys = []
        for key in table:
            if key in _COMMON_TASK_KEYS or key in _SCHEDULING_TASK_KEYS:
                continue
            if known is None:
                plugin_keys.append(key)
            elif key not in known:
                raise self.fail(
                    f"{where}.{key}",
                    _unknown_key(
                        key, [*_COMMON_TASK_KEYS, *_SCHEDULING_TASK_KEYS, *known], f" for kind {kind!r}"
                    ),
                )
        if "count" in table and "shards" in table:
            raise self.fail(f"{where}.shards", "give count (batch) or shards (split), not both")
        count = self._int(table, "count", f"{where}.count", 1, 1)
        shards = self._int(table, "shards", f"{where}.shards", 1, 0)
        timeout = self._duration(table, "timeout", f"{where}.timeout")
        max_attempts = self._int(table, "max-attempts", f"{where}.max-attempts", 1, None, MAX_ATTEMPTS)
        limits = self._limits(table, kind, where)
        service = self._bool(table, "service", f"{where}.service")
        restarts = self._int(table, "restarts", f"{where}.restarts", 0, DEFAULT_RESTARTS, MAX_RESTARTS)
        window = self._duration(table, "restart-window", f"{where}.restart-window")
        for key in ("restarts", "restart-window"):
            if key in table and not service:
                raise self.fail(f"{where}.{key}", "only for service tasks (service = true)")
        gang = self._gang(table, where)
        after = self._after(table, where)
        on_failure = table.get("on-failure", "skip")
        if on_failure not in ON_FAILURE:
            raise self.fail(
                f"{where}.on-failure",
                f"expected one of {', '.join(map(repr, ON_FAILURE))}, got {str(on_failure)[:70]!r}",
            )
        if "on-failure" in table and not after:
            raise self.fail(f"{where}.on-failure", "only for a task with after = [...]")
        ports = self._ports(table, kind, where)
        retry = self._retry(table, f"{where}.retry")
        priority = None
        if "priority" in table:
            try:
                priority = parse_priority(table["priority"])
            except JobSpecError as e:
                raise self.fail(f"{where}.priority", e.reason) from None
        needs = self._needs(table, where)
        if needs and (gang is not None or kind in _UNLIMITED_KINDS):
            key = f"{where}.{'resources' if 'resources' in table else 'constraints'}"
            raise self.fail(
                key,
                "not for a gang's task"
                if gang is not None
                else f"not for kind {kind!r}, which runs in the executor itself",
            )
        if retry is not None and service:
            raise self.fail(
                f"{where}.retry",
                "not for a service task: it restarts within its budget (restarts, restart-window)",
            )
        report = self._bool(table, "report", f"{where}.report")
        if report and (count > 1 or shards > 1):
            raise self.fail(
                f"{where}.report", "the report task is one task: it cannot have count or shards above 1"
            )
        if known is None:
            params = {k: self._json(table[k], f"{where}.{k}") for k in plugin_keys}
            self._plugin_validate(kind, params, where)
        else:
            params = getattr(self, f"_params_{kind}")(table, where)
        return TaskTemplate(
            name, kind, params, count, shards, timeout, max_attempts, limits, service=service,
            restarts=restarts, restart_window=DEFAULT_RESTART_WINDOW if window is None else window,
            gang=gang, ports=ports, report=report, after=after, on_failure=on_failure, retry=retry, needs=needs,
            priority=priority,
        )  # fmt: skip

    def _bool(self, table: dict[str, Any], key: str, full: str) -> bool:
        value = table.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(full, f"expected true or false, got {_type_name(value)}")
        return value

    def _after(self, table: dict[str, Any], where: str) -> tuple[str, ...]:
        if "after" not in table:
            return ()
        raw, key = table["after"], f"{where}.after"
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
            raise self.fail(key, f"expected an array of task names, got {_type_name(raw)}")
        if len(raw) > MAX_AFTER:
            raise self.fail(key, f"at most {MAX_AFTER} names, got {len(raw)}")
        if len(set(raw)) != len(raw):
            raise self.fail(key, "a name is given twice")
        return tuple(raw)

    def _gang(self, table: dict[str, Any], where: str) -> str | None:
        if "gang" not in table:
            return None
        value, key = table["gang"], f"{where}.gang"
        if not isinstance(value, str):
            raise self.fail(
                key,
                f"expected a group name (a string; the job's gang = true makes one of all), got {_type_name(value)}",
            )
        if not GANG_RE.fullmatch(value):
            raise self.fail(
                key, f"malformed group name {value[:70]!r}: expected 1 to 64 of A-Z a-z 0-9 . _ -"
            )
        return value

    def _ports(self, table: dict[str, Any], kind: str, where: str) -> tuple[str, ...]:
        if "ports" not in table:
            return ()
        raw, key = table["ports"], f"{where}.ports"
        if kind in _PORTLESS_KINDS:
            raise self.fail(key, f"kind {kind!r} runs no process of its own that could listen on a port")
        if not isinstance(raw, list):
            raise self.fail(key, f"expected an array of port names like ['feed'], got {_type_name(raw)}")
        if len(raw) > MAX_PORTS:
            raise self.fail(key, f"at most {MAX_PORTS} ports per task (MAX_PORTS), got {len(raw)}")
        seen: set[str] = set()
        for i, name in enumerate(raw):
            if not isinstance(name, str):
                raise self.fail(f"{key}[{i}]", f"expected a port name (a string), got {_type_name(name)}")
            if not PORT_NAME_RE.fullmatch(name):
                raise self.fail(
                    f"{key}[{i}]",
                    f"malformed port name {name[:40]!r}: expected 1-31 characters of a-z 0-9 _ starting "
                    "with a letter",
                )
            if name in seen:
                raise self.fail(f"{key}[{i}]", f"duplicate port name {name!r}")
            seen.add(name)
        return tuple(raw)

    def _limits(self, table: dict[str, Any], kind: str, where: str) -> lim.Limits:
        if "limits" not in table:
            return lim.Limits()
        raw, key = table["limits"], f"{where}.limits"
        if not isinstance(raw, Mapping):
            raise self.fail(key, f"expected a table like {{ memory = '512MiB' }}, got {_type_name(raw)}")
        if kind in _UNLIMITED_KINDS:
            raise self.fail(key, f"kind {kind!r} runs no process: limits would bound nothing")
        for name in raw:
            if not isinstance(name, str):
                raise self.fail(key, f"key {name!r} is not a string")
        try:
            return lim.parse_table(self._present(raw, key))
        except ConfigError as e:
            name, sep, reason = str(e).partition(": ")
            if sep and name in lim.TASK_KEYS:
                raise self.fail(f"{key}.{name}", reason) from None
            raise self.fail(key, str(e)) from None

    def _kind(self, table: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
        """The task's kind, expanding the ``data = "python:<code>"`` shorthand into kind and code."""
        kind = table.get("kind")
        if kind is not None and not isinstance(kind, str):
            raise self.fail(f"{where}.kind", f"expected a string, got {_type_name(kind)}")
        if "data" in table:
            data = table["data"]
            if not isinstance(data, str):
                raise self.fail(f"{where}.data", f"expected a string, got {_type_name(data)}")
            prefix, sep, code = data.partition(":")
            if not sep or prefix not in _DATA_PREFIXES:
                raise self.fail(
                    f"{where}.data",
                    f"unknown shorthand {data[:20]!r}: expected 'python:<code>' or 'go:<code>'",
                )
            if kind is not None and kind != prefix:
                raise self.fail(f"{where}.data", f"says {prefix!r} but kind is {kind!r}")
            if "code" in table:
                raise self.fail(f"{where}.data", "give data or code, not both")
            table = {k: v for k, v in table.items() if k != "data"}
            table["code"] = code
            kind = prefix
        if kind is None:
            raise self.fail(f"{where}.kind", f"missing (known: {', '.join(self._known_kinds())})")
        if kind not in _KIND_KEYS and kind not in self.plugins:
            raise self.fail(
                f"{where}.kind", f"unknown kind {kind!r} (known: {', '.join(self._known_kinds())})"
            )
        return kind, table

    def _known_kinds(self) -> list[str]:
        return list(BUILTIN_KINDS) + sorted(k for k in self.plugins if k not in BUILTIN_KINDS)

    def _plugin_validate(self, kind: str, params: dict[str, Any], where: str) -> None:
        if kind not in self._validators:
            try:
                obj = self.plugins[kind].load()
            except Exception as e:
                raise self.fail(f"{where}.kind", f"cannot load plug-in kind {kind!r}: {e}") from None
            check = getattr(obj, "validate_params", None)
            self._validators[kind] = check if callable(check) else None
        check = self._validators[kind]
        if check is None:
            return
        try:
            check(params)
        except ValueError as e:
            raise self.fail(where, f"kind {kind!r}: {e}") from None

    def _params_noop(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        return {}

    def _params_sleep(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        key = f"{where}.seconds"
        if "seconds" not in table:
            raise self.fail(key, "missing: kind 'sleep' needs seconds (a number >= 0)")
        seconds = table["seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise self.fail(key, f"expected a number of seconds, got {_type_name(seconds)}")
        if not 0 <= seconds <= MAX_SECONDS:  # also NaN; compared before float(), which overflows
            raise self.fail(
                key, f"expected a number of seconds from 0 to {MAX_SECONDS:g}, got {_number(seconds)}"
            )
        return {"seconds": float(seconds)}

    def _params_shell(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        """A string command becomes ``/bin/sh -c`` so executors only ever run an argv list."""
        key = f"{where}.command"
        if "command" not in table:
            raise self.fail(key, "missing: kind 'shell' needs command (a string or a list of strings)")
        command = table["command"]
        if isinstance(command, str):
            if not command.strip():
                raise self.fail(key, "must not be empty")
            argv = [*SHELL, command]
        elif isinstance(command, list) and all(isinstance(a, str) for a in command):
            if not command or not command[0]:
                raise self.fail(key, "must not be empty")
            argv = list(command)
        else:
            raise self.fail(key, "expected a string or a list of strings")
        return {"command": argv, "env": self._env(table, where)}

    def _params_python(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        return {"code": self._code(table, where, "python"), "env": self._env(table, where)}

    def _params_go(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        return {"code": self._code(table, where, "go"), "env": self._env(table, where)}

    def _params_call(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        key = f"{where}.function"
        if "function" not in table:
            raise self.fail(key, "missing: kind 'call' needs function ('module:function')")
        function = table["function"]
        if not isinstance(function, str):
            raise self.fail(key, f"expected a string 'module:function', got {_type_name(function)}")
        module, sep, attr = function.partition(":")
        if not sep or not all(_identifier(p) for p in [*module.split("."), attr]):
            raise self.fail(key, f"malformed function {function!r}: expected 'package.module:function'")
        args = table.get("args", [])
        if not isinstance(args, list):
            raise self.fail(f"{where}.args", f"expected an array, got {_type_name(args)}")
        kwargs = table.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise self.fail(f"{where}.kwargs", f"expected a table, got {_type_name(kwargs)}")
        return {
            "function": function,
            "args": self._json(args, f"{where}.args"),
            "kwargs": self._json(kwargs, f"{where}.kwargs"),
        }

    def _code(self, table: dict[str, Any], where: str, kind: str) -> str:
        key = f"{where}.code"
        if "code" not in table:
            raise self.fail(key, f"missing: kind {kind!r} needs code (a string)")
        code = table["code"]
        if not isinstance(code, str):
            raise self.fail(key, f"expected a string, got {_type_name(code)}")
        if not code.strip():
            raise self.fail(key, "must not be empty")
        return code

    def _env(self, table: dict[str, Any], where: str) -> dict[str, str]:
        env = table.get("env", {})
        if not isinstance(env, Mapping):
            raise self.fail(f"{where}.env", f"expected a table of strings, got {_type_name(env)}")
        for name, value in env.items():
            key = f"{where}.env.{name}"
            if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                raise self.fail(f"{where}.env", f"malformed variable name {name!r}")
            if name.upper().startswith(RESERVED_ENV_PREFIX):
                raise self.fail(
                    key, f"{RESERVED_ENV_PREFIX}* variables are set by the executor; pick another name"
                )
            if not isinstance(value, str):
                raise self.fail(key, f"expected a string, got {_type_name(value)}")
            if "\0" in value:
                raise self.fail(key, "must not contain a NUL character")
        return dict(env)

    def _json(self, value: Any, key: str, depth: int = 0, top: str = "") -> Any:
        """A copy that survives JSON unchanged: TOML dates and non-finite floats do not."""
        top = top or key
        if depth > MAX_DEPTH:
            raise self.fail(top, f"nested more than {MAX_DEPTH} levels deep (MAX_DEPTH)")
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(key, f"{value} cannot be sent as JSON")
            return value
        if isinstance(value, list):
            return [self._json(v, f"{key}[{i}]", depth + 1, top) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise self.fail(key, f"key {k!r} is not a string")
                out[k] = self._json(v, f"{key}.{k}", depth + 1, top)
            return out
        raise self.fail(key, f"a {_type_name(value)} cannot be sent as JSON")

    def _name(self, table: dict[str, Any], key: str, where: str | None = None) -> str:
        full = f"{where}.{key}" if where else key
        if key not in table:
            raise self.fail(full, "missing: a non-empty string is required")
        value = table[key]
        if not isinstance(value, str):
            raise self.fail(full, f"expected a string, got {_type_name(value)}")
        if not value.strip():
            raise self.fail(full, "must not be empty")
        if len(value) > MAX_NAME_CHARS or not value.isprintable():
            raise self.fail(full, f"expected at most {MAX_NAME_CHARS} printable characters")
        return value

    def _int(
        self,
        table: dict[str, Any],
        key: str,
        full: str,
        minimum: int,
        default: Any,
        maximum: int | None = None,
    ) -> Any:
        if key not in table:
            return default
        value = table[key]
        wanted = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(full, f"expected {wanted}, got {_type_name(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            raise self.fail(full, f"expected {wanted}, got {value}")
        return value

    def _duration(
        self, table: dict[str, Any], key: str, full: str, longest: float = MAX_SECONDS
    ) -> float | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise self.fail(
                full, f"expected a duration like '30s' or a number of seconds, got {_type_name(value)}"
            )
        try:
            seconds = parse_duration(value)
        except ConfigError as e:
            raise self.fail(full, str(e)) from None
        if not math.isfinite(seconds) or not 0 < seconds <= longest:
            raise self.fail(full, f"expected a positive duration of at most {longest:g}s, got {value!r}")
        return seconds


def find_cycle(after: list[list[int]]) -> list[int]:
    """A cycle among tasks (``after[i]``: the tasks task i runs after) as the indexes along it, or [].

    Iterative depth-first search: a chain of thousands of tasks must not exhaust Python's stack."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = [WHITE] * len(after)
    for root in range(len(after)):
        if color[root] != WHITE:
            continue
        path, stack = [root], [iter(after[root])]
        color[root] = GREY
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                color[path.pop()] = BLACK
                stack.pop()
            elif color[nxt] == GREY:
                return path[path.index(nxt) :]
            elif color[nxt] == WHITE:
                color[nxt] = GREY
                path.append(nxt)
                stack.append(iter(after[nxt]))
    return []


def _number(value: float) -> str:
    """A number for a message: an integer of hundreds of digits is shown by its length."""
    text = str(value)
    return text if len(text) <= 24 else f"a {len(text)}-digit number"


def _identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)

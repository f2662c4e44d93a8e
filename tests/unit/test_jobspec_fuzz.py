"""Fuzz the job parser: whatever a job file or a JSON body holds, the parser returns a valid spec or
raises JobSpecError naming the problem, never another exception (which the HTTP API would answer with
a 500 and the CLI with a traceback), and a spec it accepts survives its own JSON form unchanged."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rota.common.jobspec import MAX_TASKS, JobSpec, JobSpecError, load_job, parse_job_json, parse_job_text
from rota.scheduler.http_api import UnsupportedType, parse_job_body

#: Deterministic and bounded: the same examples on every run, well under the test timeout.
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\0",
        "a\0b",
        "\ud800",
        "\u202e",
        "\x85",
        "é",
        "😀",
        "ROTA_X",
        "a=b",
        "-",
        "a/b",
        "7",
        "x" * 300,
    ]
)
TEXT = st.one_of(st.text(max_size=12), ODD_TEXT)
HUGE = st.sampled_from([2**1024, 10**400, 2**63, -(2**63) - 1, 10**400, -(10**400), 1e308, -1e308, 5e-324])
NUMBER = st.one_of(
    st.integers(min_value=-5, max_value=200), st.floats(allow_nan=True, allow_infinity=True), HUGE
)
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JUNK = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
DURATION = st.one_of(
    st.sampled_from(["30s", "1m30s", "500ms", "2h", "nan", "inf", "-1s", "1e999", "8d", "0", "s"]), NUMBER
)


def deep(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


JOB_KEYS = ["name", "id", "priority", "max-attempts", "timeout", "retention", "task"]
TASK_KEYS = ["name", "kind", "count", "shards", "timeout", "max-attempts", "data", "seconds", "command"]
TASK_KEYS += ["env", "code", "function", "args", "kwargs"]
PLAIN = st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=8)


@st.composite
def task_tables(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """A valid ``[[task]]`` table of a built-in kind, with some optional keys."""
    kind = draw(st.sampled_from(["noop", "sleep", "shell", "python", "go", "call"]))
    task: dict[str, Any] = {"name": f"t{index}", "kind": kind}
    if kind == "sleep":
        task["seconds"] = draw(st.floats(0, 10) | st.integers(0, 10))
    elif kind == "shell":
        task["command"] = draw(PLAIN | st.lists(PLAIN, min_size=1, max_size=3))
    elif kind in ("python", "go"):
        if draw(st.booleans()):
            task["code"] = draw(PLAIN)
        else:
            del task["kind"]
            task["data"] = f"{kind}:{draw(PLAIN)}"
    elif kind == "call":
        task["function"] = draw(st.sampled_from(["operator:add", "os.path:join"]))
        if draw(st.booleans()):
            task["args"] = draw(st.lists(st.integers() | PLAIN, max_size=3))
        if draw(st.booleans()):
            task["kwargs"] = draw(st.dictionaries(PLAIN, st.integers() | PLAIN | st.booleans(), max_size=3))
    if kind in ("shell", "python", "go") and draw(st.booleans()):
        task["env"] = draw(st.dictionaries(PLAIN.map(lambda n: "V" + n), PLAIN, max_size=3))
    optional = {
        "count": st.integers(1, 1000),
        "timeout": st.sampled_from(["30s", "1m30s", "500ms", 2, 0.5]),
        "max-attempts": st.integers(1, 100),
    }
    for key, value in optional.items():
        if draw(st.integers(0, 3)) == 0:
            task[key] = draw(value)
    if "count" not in task and draw(st.integers(0, 3)) == 0:
        task["shards"] = draw(st.integers(1, 5))
    return task


@st.composite
def valid_jobs(draw: st.DrawFn) -> dict[str, Any]:
    job: dict[str, Any] = {"name": draw(PLAIN)}
    job["task"] = [draw(task_tables(i)) for i in range(draw(st.integers(1, 4)))]
    optional = {
        "id": st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
        "priority": st.sampled_from(["low", " HIGH ", 0, 100, 42]),
        "max-attempts": st.integers(1, 100),
        "timeout": st.sampled_from(["30s", "2h", 10]),
        "retention": st.sampled_from(["1d", "8h", 60]),
    }
    for key, value in optional.items():
        if draw(st.booleans()):
            job[key] = draw(value)
    return job


def _slots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a parsed document a value sits (dict keys and list indexes)."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _slots(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _slots(v, (*path, i))
    return out


@st.composite
def job_tables(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job with up to three places replaced by junk (wrong types, huge numbers, odd text,
    deep nesting) or given an unknown key: most examples get past the first check they break."""
    job = draw(valid_jobs())
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            tasks = job["task"] if isinstance(job["task"], list) else []
            table = draw(st.sampled_from([job, *(t for t in tasks if isinstance(t, dict))]))
            keys = JOB_KEYS if table is job else TASK_KEYS
            table[draw(st.sampled_from(keys))] = draw(st.one_of(HUGE, HUGE, DURATION, JUNK))
            continue
        path = draw(st.sampled_from(_slots(job)[1:]))
        *parents, last = path
        holder: Any = job
        for p in parents:
            holder = holder[p]
        if isinstance(holder, dict) and draw(st.integers(0, 5)) == 0:
            holder[draw(TEXT)] = draw(JUNK)
        else:
            holder[last] = draw(JUNK | HUGE | DURATION | st.sampled_from([deep(40), [deep(20)]]))
    return job


def toml_value(value: Any) -> str:
    """TOML for a parsed value (inline tables and arrays); what TOML cannot hold comes out invalid."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    return "null"  # None: TOML has no null, so the document is invalid, as it should be


def toml_text(job: dict[str, Any]) -> str:
    """A job file: top-level keys, then one ``[[task]]`` table per task (as inline values when junk)."""
    tasks = job.get("task")
    tables = isinstance(tasks, list) and all(isinstance(t, dict) for t in tasks)
    lines = [f"{toml_value(str(k))} = {toml_value(v)}" for k, v in job.items() if k != "task" or not tables]
    for task in tasks if tables else []:
        lines.append("[[task]]")
        lines += [f"{toml_value(str(k))} = {toml_value(v)}" for k, v in task.items()]
    return "\n".join(lines) + "\n"


def parses_or_refuses(parse: Any, *args: Any) -> JobSpec | None:
    """The spec, or None when the parser refused with JobSpecError; anything else fails the test."""
    try:
        spec = parse(*args)
    except JobSpecError as e:
        assert str(e), "an error without a message"
        return None
    assert isinstance(spec, JobSpec)
    return spec


def assert_round_trips(spec: JobSpec) -> None:
    """The canonical form parses back to an equal spec, as a dict and as JSON text."""
    doc = spec.to_dict()
    assert JobSpec.from_dict(doc) == spec
    assert parse_job_json(json.dumps(doc).encode()) == spec
    assert JobSpec.from_stored(json.loads(json.dumps(doc))) == spec


@FUZZ
@given(job_tables())
def test_a_job_table_parses_or_is_refused_with_a_job_error(job: dict[str, Any]) -> None:
    spec = parses_or_refuses(JobSpec.from_dict, job)
    if spec is not None:
        assert 1 <= spec.task_count() <= MAX_TASKS
        assert_round_trips(spec)


@FUZZ
@given(job_tables())
def test_a_json_body_parses_or_is_refused_with_a_job_error(job: dict[str, Any]) -> None:
    try:
        raw = json.dumps(job, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):
        return
    spec = parses_or_refuses(parse_job_json, raw)
    if spec is not None:
        assert_round_trips(spec)


@FUZZ
@given(job_tables())
def test_a_toml_file_parses_or_is_refused_with_a_job_error(job: dict[str, Any]) -> None:
    text = toml_text(job)
    spec = parses_or_refuses(parse_job_text, text)
    if spec is not None:
        assert_round_trips(spec)
        assert parses_or_refuses(load_job, text) == spec


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        JUNK.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"timeout = " + b"9" * 5000, b'{"timeout": ' + b"9" * 5000 + b"}", b"\xff{}"]),
        st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 3000).map(lambda n: b"a = " + b"[" * n + b"]" * n),
        st.integers(1, 3000).map(lambda n: b'{"name": "x", "task": ' + b"[" * n + b"]" * n + b"}"),
    ),
    st.sampled_from(["application/json", "application/toml", "text/plain", ""]),
)
def test_any_request_body_parses_or_is_refused(body: bytes, content_type: str) -> None:
    """The HTTP API's entry point: bytes of any kind, under every content type."""
    try:
        parses_or_refuses(parse_job_body, body, content_type)
    except UnsupportedType:
        assert content_type not in ("application/json", "application/toml")


@FUZZ
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused(text: str) -> None:
    parses_or_refuses(parse_job_text, text)

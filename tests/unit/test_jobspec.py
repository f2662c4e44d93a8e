"""Job-file parsing and validation: pure logic, no I/O but tmp files and the shipped samples."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rota.common import jobspec as js
from rota.common.jobspec import JobSpec, JobSpecError, load_job

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "sample" / "jobs").glob("*.toml"))

SPEC_EXAMPLE = """
name = "hello"
id = "hello-1"          # optional: submitting the same id again returns the existing job
priority = "high"       # low | medium | high, or 0..100; higher runs first; default medium (50)
max-attempts = 3        # per task: failures and lost executors both use attempts
timeout = "30s"         # per task attempt

[[task]]
name = "greet"
kind = "shell"
command = ["echo", "hello"]          # a list runs without a shell; a string runs with /bin/sh -c

[[task]]
name = "square"
kind = "call"
function = "operator:mul"            # module:function importable on the executor
args = [6, 7]
count = 100                          # batch: 100 independent copies

[[task]]
name = "pi"
kind = "python"
code = "import os; print(os.environ['ROTA_SHARD_INDEX'])"
shards = 4                           # split: 4 shards spread over executors
"""


def job(*tasks: str, head: str = 'name = "j"') -> str:
    """TOML text for a job with the given task bodies."""
    return head + "\n" + "".join(f"\n[[task]]\n{textwrap.dedent(t).strip()}\n" for t in tasks)


NOOP = 'name = "t"\nkind = "noop"'


def fails(source: Any, *parts: str) -> JobSpecError:
    """Assert loading fails and every part (source, key, reason) is in the message."""
    with pytest.raises(JobSpecError) as info:
        load_job(source)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    return info.value


def test_spec_example_parses_with_every_documented_field():
    spec = load_job(SPEC_EXAMPLE)
    assert (spec.name, spec.id, spec.priority, spec.max_attempts, spec.timeout) == (
        "hello",
        "hello-1",
        90,
        3,
        30.0,
    )
    greet, square, pi = spec.tasks
    assert greet.kind == "shell" and greet.params == {"command": ["echo", "hello"], "env": {}}
    assert square.params == {"function": "operator:mul", "args": [6, 7], "kwargs": {}}
    assert (square.count, square.shards, square.copies()) == (100, 0, 100)
    assert (pi.kind, pi.shards, pi.copies()) == ("python", 4, 4)
    assert spec.task_count() == 105


def test_defaults_are_filled_in():
    spec = load_job(job(NOOP))
    assert (spec.id, spec.priority, spec.max_attempts, spec.timeout) == (None, js.DEFAULT_PRIORITY, 3, None)
    assert spec.tasks == [js.TaskTemplate("t", "noop", {})]


@pytest.mark.parametrize(
    "value, expected", [("low", 10), ("MEDIUM", 50), ("High", 90), (0, 0), (100, 100), (73, 73)]
)
def test_priority_by_name_or_number(value, expected):
    assert js.parse_priority(value) == expected
    assert (
        load_job({"name": "j", "priority": value, "task": [{"name": "t", "kind": "noop"}]}).priority
        == expected
    )


@pytest.mark.parametrize("value", ["urgent", "", 101, -1, True, 5.5, "50", [1]])
def test_bad_priority_is_rejected_naming_the_key(value):
    with pytest.raises(JobSpecError, match="priority"):
        js.parse_priority(value)
    fails({"name": "j", "priority": value, "task": [{"name": "t", "kind": "noop"}]}, "<request>: priority: ")


@pytest.mark.parametrize("value", ["a", "job-1.2_X", "x" * 128, "1"])
def test_valid_job_ids(value):
    assert js.validate_job_id(value) == value


@pytest.mark.parametrize("value", ["", ".hidden", "x" * 129, "a/b", "a b", "é", 7])
def test_bad_job_ids(value):
    with pytest.raises(JobSpecError, match="id"):
        js.validate_job_id(value)


def test_job_id_argument_overrides_and_is_validated():
    assert load_job(SPEC_EXAMPLE, job_id="other").id == "other"
    fails(SPEC_EXAMPLE.replace("hello-1", "../x"), "<text>: id: malformed job id")
    with pytest.raises(JobSpecError, match="<text>: id: "):
        load_job(SPEC_EXAMPLE, job_id="../x")


@pytest.mark.parametrize("text, seconds", [('"500ms"', 0.5), ('"1m30s"', 90.0), ("2", 2.0), ("0.25", 0.25)])
def test_timeouts_are_durations_or_seconds(text, seconds):
    spec = load_job(job(NOOP + f"\ntimeout = {text}", head=f'name = "j"\ntimeout = {text}'))
    assert spec.timeout == seconds and spec.tasks[0].timeout == seconds


@pytest.mark.parametrize("text", ['"soon"', '"-1s"', "0", "true", "[1]", "inf"])
def test_bad_timeouts_name_the_key(text):
    fails(job(NOOP, head=f'name = "j"\ntimeout = {text}'), "<text>: timeout: ")
    fails(job(NOOP + f"\ntimeout = {text}"), "<text>: task[0].timeout: ")


def test_expansion_names_copies_and_shards():
    spec = load_job(
        job(
            'name = "one"\nkind = "noop"',
            'name = "b"\nkind = "noop"\ncount = 3',
            'name = "s"\nkind = "noop"\nshards = 2',
            'name = "solo"\nkind = "noop"\nshards = 1',
        )
    )
    assert [(t.template, t.copy, t.name, t.shard_index, t.shard_count) for t in spec.expand()] == [
        (0, 0, "one", None, None),
        (1, 0, "b-0", None, None),
        (1, 1, "b-1", None, None),
        (1, 2, "b-2", None, None),
        (2, 0, "s-shard0", 0, 2),
        (2, 1, "s-shard1", 1, 2),
        (3, 0, "solo-shard0", 0, 1),
    ]
    assert spec.task_count() == 7


def test_expansion_is_lazy_for_big_jobs():
    spec = load_job(job('name = "n"\nkind = "noop"\ncount = 1000000'))
    first = next(spec.expand())
    assert first.name == "n-0" and spec.task_count() == js.MAX_TASKS


def test_plain_name_equal_to_a_generated_copy_is_rejected():
    fails(
        job('name = "a"\nkind = "noop"\ncount = 3', 'name = "a-2"\nkind = "noop"'), "task[1].name", "task[0]"
    )
    fails(job('name = "a"\nkind = "noop"\nshards = 2', 'name = "a-shard1"\nkind = "noop"'), "task[1].name")
    ok = load_job(job('name = "a"\nkind = "noop"\ncount = 3', 'name = "a-3"\nkind = "noop"'))
    assert len({t.name for t in ok.expand()}) == 4


@pytest.mark.parametrize("kind", ["python", "go"])
def test_data_shorthand_sets_kind_and_code(kind):
    spec = load_job(job(f'name = "t"\ndata = "{kind}:print(1)"'))
    assert (spec.tasks[0].kind, spec.tasks[0].params) == (kind, {"code": "print(1)", "env": {}})
    assert load_job(job(f'name = "t"\nkind = "{kind}"\ndata = "{kind}:x"')).tasks[0].params["code"] == "x"


@pytest.mark.parametrize(
    "body, message",
    [
        ('data = "go:x"\nkind = "python"', "says 'go' but kind is 'python'"),
        ('data = "python:x"\ncode = "y"', "not both"),
        ('data = "ruby:x"', "unknown shorthand"),
        ('data = "print(1)"', "unknown shorthand"),
        ("data = 3", "expected a string, got integer"),
        ('data = "python:"', "must not be empty"),
    ],
)
def test_bad_data_shorthand(body, message):
    key = "task[0].code" if message == "must not be empty" else "task[0].data"
    fails(job('name = "t"\n' + body), f"<text>: {key}: ", message)


def test_shell_string_runs_with_sh_and_env_is_kept():
    spec = load_job(job('name = "t"\nkind = "shell"\ncommand = "echo $X | wc"\nenv = { X = "1" }'))
    assert spec.tasks[0].params == {"command": ["/bin/sh", "-c", "echo $X | wc"], "env": {"X": "1"}}


def test_kind_parameters_are_canonical():
    spec = load_job(
        job(
            'name = "s"\nkind = "sleep"\nseconds = 2',
            'name = "c"\nkind = "call"\nfunction = "os.path:join"\nkwargs = { a = 1 }',
            'name = "g"\nkind = "go"\ncode = "package main"',
        )
    )
    assert [t.params for t in spec.tasks] == [
        {"seconds": 2.0},
        {"function": "os.path:join", "args": [], "kwargs": {"a": 1}},
        {"code": "package main", "env": {}},
    ]


@pytest.mark.parametrize(
    "body, key, message",
    [
        ('kind = "sleep"', "seconds", "missing"),
        ('kind = "sleep"\nseconds = "1s"', "seconds", "expected a number"),
        ('kind = "sleep"\nseconds = -1', "seconds", "from 0 to"),
        ('kind = "shell"', "command", "missing"),
        ('kind = "shell"\ncommand = 5', "command", "expected a string or a list of strings"),
        ('kind = "shell"\ncommand = ["ls", 1]', "command", "expected a string or a list of strings"),
        ('kind = "shell"\ncommand = []', "command", "must not be empty"),
        ('kind = "shell"\ncommand = "  "', "command", "must not be empty"),
        ('kind = "shell"\ncommand = "ls"\nenv = { A = 1 }', "env.A", "expected a string, got integer"),
        ('kind = "shell"\ncommand = "ls"\nenv = ["A"]', "env", "expected a table"),
        ('kind = "python"', "code", "missing"),
        ('kind = "python"\ncode = ["x"]', "code", "expected a string, got array"),
        ('kind = "go"\ncode = ""', "code", "must not be empty"),
        ('kind = "call"', "function", "missing"),
        ('kind = "call"\nfunction = "operator.mul"', "function", "malformed function"),
        ('kind = "call"\nfunction = "1op:mul"', "function", "malformed function"),
        ('kind = "call"\nfunction = "op:class"', "function", "malformed function"),
        ('kind = "call"\nfunction = "a..b:f"', "function", "malformed function"),
        ('kind = "call"\nfunction = "op:f"\nargs = 3', "args", "expected an array"),
        ('kind = "call"\nfunction = "op:f"\nkwargs = [1]', "kwargs", "expected a table"),
        ('kind = "call"\nfunction = "op:f"\nargs = [1979-05-27]', "args[0]", "cannot be sent as JSON"),
        ('kind = "call"\nfunction = "op:f"\nkwargs = { x = nan }', "kwargs.x", "cannot be sent as JSON"),
    ],
)
def test_bad_kind_parameters_name_the_key(body, key, message):
    fails(job('name = "t"\n' + body), f"<text>: task[0].{key}: ", message)


@pytest.mark.parametrize(
    "body, key, message",
    [
        ('kind = "noop"\ncount = 0', "count", "expected an integer >= 1, got 0"),
        ('kind = "noop"\ncount = 2.0', "count", "expected an integer >= 1, got float"),
        ('kind = "noop"\nshards = true', "shards", "got boolean"),
        ('kind = "noop"\nmax-attempts = 0', "max-attempts", "from 1 to 100"),
        ('kind = "noop"\ncount = 2\nshards = 2', "shards", "not both"),
        ("kind = 3", "kind", "expected a string, got integer"),
        ("", "kind", "missing"),
    ],
)
def test_bad_common_task_keys_name_the_key(body, key, message):
    fails(job('name = "t"\n' + body), f"<text>: task[0].{key}: ", message)


def test_syntax_error_names_the_file_and_position(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[[task]\n')
    err = fails(path, f"{path}: invalid TOML", "line 2")
    assert err.source == str(path)


def test_unknown_job_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "j.toml"
    path.write_text(job(NOOP, head='name = "j"\nmax_attempts = 2'))
    fails(str(path), f"{path}: unknown key 'max_attempts'", "did you mean 'max-attempts'")


def test_unknown_task_key_names_task_index_and_key():
    err = fails(job(NOOP, 'name = "u"\nkind = "shell"\ncommand = "ls"\ncode = "x"'), "<text>: task[1].code: ")
    assert (err.key, "unknown key 'code' for kind 'shell'") == ("task[1].code", err.reason[:35])


@pytest.mark.parametrize(
    "head, key, message",
    [
        ("name = 3", "name", "expected a string, got integer"),
        ('name = ""', "name", "must not be empty"),
        ('name = "j"\nmax-attempts = "3"', "max-attempts", "expected an integer from 1 to 100, got string"),
        ('name = "j"\nid = 5', "id", "expected a string, got integer"),
    ],
)
def test_wrong_job_types_name_the_key(head, key, message):
    fails(job(NOOP, head=head), f"<text>: {key}: ", message)


def test_missing_name_is_named():
    fails(job(NOOP, head=""), "<text>: name: missing")


def test_unknown_kind_lists_known_kinds():
    fails(job('name = "t"\nkind = "ruby"'), "task[0].kind", "unknown kind 'ruby' (known: noop, sleep, shell,")


def test_empty_file_and_no_tasks(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("# nothing here\n")
    fails(path, str(path), "no tasks")
    fails('name = "j"', "<text>: task: no tasks")
    fails({"name": "j", "task": []}, "<request>: task: no tasks")
    fails('name = "j"\n[task]\nname = "t"', "<text>: task: expected an array of tables")
    fails('name = "j"\ntask = [1]', "<text>: task[0]: expected a table, got integer")


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    fails(missing, str(missing), "no such job file")
    fails(str(missing), str(missing), "no such job file")
    fails("jobs/typo", "jobs/typo: no such job file")


def test_duplicate_task_names():
    fails(
        job(NOOP, 'name = "x"\nkind = "noop"', NOOP),
        "<text>: task[2].name: ",
        "duplicate task name 't'",
        "task[0]",
    )


def test_oversize_text_and_file_mention_the_limit(tmp_path):
    big = job(NOOP) + "#" * js.MAX_JOB_BYTES
    fails(big, "<text>", "oversize", str(js.MAX_JOB_BYTES))
    path = tmp_path / "big.toml"
    path.write_text(big)
    fails(path, str(path), "oversize")


def test_too_many_tasks_via_count():
    fails(
        job('name = "t"\nkind = "noop"\ncount = 1000001'),
        "task[0].count",
        "too many tasks",
        str(js.MAX_TASKS),
    )
    fails(
        job('name = "a"\nkind = "noop"\ncount = 600000', 'name = "b"\nkind = "noop"\nshards = 400001'),
        "task[1].shards",
        "too many tasks",
    )


def test_null_values_in_requests_count_as_absent():
    spec = load_job(
        {"name": "j", "id": None, "timeout": None, "task": [{"name": "t", "kind": "noop", "count": None}]}
    )
    assert spec.id is None and spec.timeout is None and spec.tasks[0].count == 1


def test_to_dict_round_trips_through_json():
    spec = load_job(
        SPEC_EXAMPLE.replace('"30s"', '"1m30s"')
        + job(
            'name = "s"\nkind = "shell"\ncommand = "echo hi"\nenv = { A = "b" }\ntimeout = "500ms"\nmax-attempts = 5',
            'name = "z"\nkind = "sleep"\nseconds = 1',
            'name = "g"\ndata = "go:package main"',
            'name = "c"\nkind = "call"\nfunction = "m:f"\nargs = [1, 2.5, "x", [true]]\nkwargs = { k = { n = 1 } }',
            head="",
        )
    )
    data = spec.to_dict()
    assert data["timeout"] == 90.0 and data["task"][3]["timeout"] == 0.5
    assert json.loads(json.dumps(data)) == data
    again = JobSpec.from_dict(json.loads(json.dumps(data)))
    assert again == spec
    assert again.to_dict() == data
    assert list(again.expand()) == list(spec.expand())


def test_to_dict_is_kebab_case_and_minimal():
    data = load_job(job('name = "t"\nkind = "noop"\ncount = 2')).to_dict()
    assert data == {
        "name": "j",
        "priority": 50,
        "max-attempts": 3,
        "task": [{"name": "t", "kind": "noop", "count": 2}],
    }


def test_from_dict_validates_like_toml():
    err = fails(
        {"name": "j", "task": [{"name": "t", "kind": "noop", "colour": 1}]}, "<request>: task[0].colour: "
    )
    assert err.source == "<request>"
    with pytest.raises(JobSpecError, match=r"^api: "):
        JobSpec.from_dict({"name": "j"}, source="api")
    fails(["not", "a", "table"], "expected a path, TOML text or a dict")


class _Plugin:
    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self._obj = obj

    def load(self) -> Any:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


class _Validator:
    @staticmethod
    def validate_params(params: dict[str, Any]) -> None:
        if "gpus" not in params:
            raise ValueError("gpus is required")


@pytest.fixture
def plugins(monkeypatch):
    found: list[_Plugin] = []
    monkeypatch.setattr(
        js.importlib.metadata, "entry_points", lambda group: [p for p in found if group == js.KIND_GROUP]
    )
    return found


def test_plugin_kind_accepts_extra_keys_and_runs_its_validator(plugins):
    plugins += [_Plugin("gpu", _Validator), _Plugin("free", object())]
    spec = load_job(
        job('name = "t"\nkind = "gpu"\ngpus = 2\ncount = 2', 'name = "u"\nkind = "free"\nanything = [1]')
    )
    assert [(t.kind, t.params, t.count) for t in spec.tasks] == [
        ("gpu", {"gpus": 2}, 2),
        ("free", {"anything": [1]}, 1),
    ]
    assert JobSpec.from_dict(spec.to_dict()) == spec
    fails(job('name = "t"\nkind = "gpu"'), "<text>: task[0]: kind 'gpu': gpus is required")
    fails(job('name = "t"\nkind = "nope"'), "(known: noop, sleep, shell, python, go, call, free, gpu)")


def test_broken_plugin_is_reported(plugins):
    plugins.append(_Plugin("bad", ImportError("no module named bad")))
    fails(job('name = "t"\nkind = "bad"'), "task[0].kind", "cannot load plug-in kind 'bad'")


def test_builtin_kind_wins_over_a_plugin_of_the_same_name(plugins):
    plugins.append(_Plugin("noop", object()))
    fails(job('name = "t"\nkind = "noop"\nx = 1'), "task[0].x: unknown key 'x'")


def test_no_plugins_installed_is_fine():
    assert load_job(job(NOOP)).tasks[0].kind == "noop"


def test_samples_exist():
    names = {p.name for p in SAMPLES}
    assert {
        "hello.toml",
        "split.toml",
        "batch.toml",
        "sleep.toml",
        "pi.toml",
        "pi-go.toml",
        "noop-20k.toml",
        "priority-low.toml",
        "priority-high.toml",
        "all-kinds.toml",
    } <= names


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_job_loads_and_round_trips(path):
    spec = load_job(path)
    assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert load_job(str(path)) == spec


def test_sample_shapes():
    load = {p.stem: load_job(p) for p in SAMPLES}
    assert load["hello"].id is None and [t.kind for t in load["hello"].tasks] == ["shell", "python"]
    assert load["split"].tasks[0].shards == 4 and "ROTA_SHARD_INDEX" in load["split"].tasks[0].params["code"]
    assert load["batch"].tasks[0].params["args"] == [6, 7] and load["batch"].task_count() == 100
    assert load["sleep"].tasks[0].params == {"seconds": 60.0}
    assert load["noop-20k"].task_count() == 20000
    assert (load["priority-low"].priority, load["priority-high"].priority) == (10, 90)
    assert load["pi"].tasks[0].shards == load["pi-go"].tasks[0].shards == 4
    assert re.search(r"^package main$", load["pi-go"].tasks[0].params["code"], re.M)
    kinds = [t.kind for t in load["all-kinds"].tasks]
    assert sorted(set(kinds)) == sorted(js.BUILTIN_KINDS) and kinds.count("shell") == 2


def test_sample_pi_prints_the_right_digits(monkeypatch, capsys):
    """The spigot in pi.toml is real code; check it against known digits of pi."""
    code = load_job(ROOT / "sample/jobs/pi.toml").tasks[0].params["code"]
    for name, value in {"PI_DIGITS": "50", "ROTA_SHARD_INDEX": "3", "ROTA_SHARD_COUNT": "4"}.items():
        monkeypatch.setenv(name, value)
    exec(compile(code, "pi.toml", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == "shard 3/4: 3.1415926535897932384626433832795028841971693993751\n"


# -- limits (issue 12): the same for TOML text, JSON bytes and dicts ----------------------------


def _as_dict(toml_text: str) -> dict[str, Any]:
    return js.tomllib.loads(toml_text)


@pytest.mark.parametrize(
    "text, key, reason",
    [
        (job(NOOP, head='name = "j"\nmax-attempts = 5000'), "max-attempts", "from 1 to 100"),
        (job(NOOP + "\nmax-attempts = 101"), "task[0].max-attempts", "from 1 to 100"),
        (job(NOOP, head='name = "j"\ntimeout = "200h"'), "timeout", "at most 604800s"),
        (job('name = "s"\nkind = "sleep"\nseconds = 1e308'), "task[0].seconds", "from 0 to 604800"),
        (
            job('name = "p"\nkind = "python"\ncode = "1"\nenv = {ROTA_TASK_ID = "x"}'),
            "task[0].env.ROTA_TASK_ID",
            "set by the executor",
        ),  # fmt: skip
        (job('name = "a/b"\nkind = "noop"'), "task[0].name", "must not contain '/'"),
        (job('name = "12"\nkind = "noop"'), "task[0].name", "all digits"),
        (
            job('name = "c"\nkind = "call"\nfunction = "m:f"\nargs = ' + "[" * 40 + "]" * 40),
            "task[0].args",
            "nested more than 32",
        ),  # fmt: skip
    ],
)
def test_limits_name_the_key_in_every_input_form(text, key, reason):
    fails(text, f"<text>: {key}: ", reason)
    fails(_as_dict(text), f"<request>: {key}: ", reason)
    with pytest.raises(JobSpecError) as e:
        js.parse_job_json(json.dumps(_as_dict(text)).encode())
    assert f"{key}: " in str(e.value) and reason in str(e.value)


def test_limits_at_the_bound_are_accepted():
    spec = load_job(job('name = "s"\nkind = "sleep"\nseconds = 604800\nmax-attempts = 100'))
    assert spec.tasks[0].max_attempts == 100 and spec.tasks[0].params["seconds"] == 604800.0
    assert load_job(job('name = "t-1"\nkind = "noop"')).tasks[0].name == "t-1"


def test_json_that_nests_too_deep_or_is_too_big_is_a_clear_error():
    with pytest.raises(JobSpecError, match="nested too deeply"):
        js.parse_job_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(JobSpecError, match="oversize job"):
        js.parse_job_json(b" " * (js.MAX_JOB_BYTES + 1))
    with pytest.raises(JobSpecError, match="invalid JSON"):
        js.parse_job_json(b"{")
    with pytest.raises(JobSpecError, match="nested too deeply"):
        load_job("x = " + "[" * 100_000 + "]" * 100_000)


def test_a_stored_spec_is_read_back_without_todays_rules_or_plugins():
    """A job accepted under other rules (or a plug-in since removed) must still load on a new leader."""
    stored = {"name": "old", "priority": 50, "max-attempts": 5000,
              "task": [{"name": "7", "kind": "no-such-plugin", "size": 3, "count": 2},
                       {"name": "s", "kind": "sleep", "seconds": 1.0, "timeout": 9.0, "max-attempts": 2}]}  # fmt: skip
    spec = JobSpec.from_stored(stored)
    assert spec.to_dict() == stored
    assert spec.task_count() == 3 and spec.tasks[0].params == {"size": 3}
    ok = load_job(SPEC_EXAMPLE)
    assert JobSpec.from_stored(json.loads(json.dumps(ok.to_dict()))) == ok


@pytest.mark.parametrize(
    "job, key",
    [
        ({"name": "j", "timeout": 10**400, "task": [{"name": "a", "kind": "noop"}]}, "timeout"),
        ({"name": "j", "retention": -(10**400), "task": [{"name": "a", "kind": "noop"}]}, "retention"),
        ({"name": "j", "task": [{"name": "a", "kind": "sleep", "seconds": 10**400}]}, "task[0].seconds"),
        ({"name": "j", "task": [{"name": "a", "kind": "noop", "timeout": 2**1024}]}, "task[0].timeout"),
    ],
)
def test_an_integer_too_large_for_a_float_is_a_job_error_naming_the_key(
    job: dict[str, Any], key: str
) -> None:
    """Found by fuzzing: float() of such an integer raised OverflowError, a 500 from the HTTP API."""
    with pytest.raises(JobSpecError) as e:
        JobSpec.from_dict(job)
    assert e.value.key == key and "digit" in e.value.reason
    with pytest.raises(JobSpecError):
        js.parse_job_json(json.dumps(job).encode())


def test_an_integer_of_more_than_4300_digits_in_toml_is_a_job_error() -> None:
    """Found by fuzzing: tomllib raises a plain ValueError for it, not TOMLDecodeError."""
    with pytest.raises(JobSpecError, match="invalid TOML: Exceeds the limit"):
        js.parse_job_text('name = "j"\ntimeout = ' + "9" * 5000 + "\n")

"""Job types (``rota.jobs`` plug-ins): expansion, errors naming keys and plug-ins, bounds, round trips."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rota.common import fanout
from rota.common import jobspec as js
from rota.common.jobspec import JobSpec, JobSpecError, load_job
from rota.jobtypes import JobTypeError, check_keys
from rota.scheduler.core import EndedJob, Job
from rota.scheduler.views import job_doc

ROOT = Path(__file__).resolve().parents[2]


class _EntryPoint:
    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self._obj = obj

    def load(self) -> Any:
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


@pytest.fixture
def types(monkeypatch):
    """The installed job types, faked: the list the test fills; the real ``fanout`` to begin with."""
    found: list[_EntryPoint] = [_EntryPoint("fanout", fanout.Fanout)]
    monkeypatch.setattr(
        js.importlib.metadata,
        "entry_points",
        lambda group: [p for p in found if group == js.JOB_TYPE_GROUP],
    )
    return found


class Pair:
    """Two shell tasks from ``first`` and ``second``; anything else is refused."""

    calls = 0

    @staticmethod
    def expand(table: dict[str, Any]) -> dict[str, Any]:
        Pair.calls += 1
        check_keys(table, ("first", "second", "urgent"))
        if not isinstance(table.get("first", ""), str):
            raise JobTypeError("first", "expected a command line")
        out: dict[str, Any] = {
            "task": [
                {"name": "a", "kind": "shell", "command": table.get("first", "true")},
                {"name": "b", "kind": "shell", "command": table.get("second", "true"), "count": 2},
            ]
        }
        if table.get("urgent"):
            out["priority"] = "high"
        return out


def fails(source: Any, *parts: str) -> JobSpecError:
    with pytest.raises(JobSpecError) as info:
        load_job(source)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    return info.value


def test_a_typed_job_is_expanded_and_keeps_its_type(types):
    types.append(_EntryPoint("pair", Pair))
    spec = load_job(
        'type = "pair"\nname = "p"\nid = "p-1"\npriority = 20\ntimeout = "5s"\nfirst = "echo 1"\n'
    )
    assert spec.type == "pair" and (spec.name, spec.id, spec.priority, spec.timeout) == ("p", "p-1", 20, 5.0)
    assert [(t.name, t.params["command"], t.count) for t in spec.tasks] == [
        ("a", ["/bin/sh", "-c", "echo 1"], 1),
        ("b", ["/bin/sh", "-c", "true"], 2),
    ]
    # What the plug-in sets wins over the job's own key.
    assert load_job({"type": "pair", "name": "p", "priority": 5, "urgent": True}).priority == 90


def test_the_expanded_form_round_trips_without_the_plugin(types):
    types.append(_EntryPoint("pair", Pair))
    spec = load_job({"type": "pair", "name": "p"})
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["type"] == "pair" and len(data["task"]) == 2
    del types[:]  # a master without the plug-in, a new leader reading etcd
    calls = Pair.calls
    assert JobSpec.from_dict(data) == spec
    assert JobSpec.from_stored(data) == spec
    assert Pair.calls == calls
    plain = load_job({"name": "p", "task": [{"name": "t", "kind": "noop"}]})
    assert plain.type is None and "type" not in plain.to_dict()
    assert JobSpec.from_stored(plain.to_dict()).type is None


def test_expanded_form_with_the_types_own_keys_says_why(types):
    fails(
        {"type": "fanout", "name": "f", "command": "x", "task": [{"name": "t", "kind": "noop"}]},
        "<request>: unknown key 'command'",
        "not expanded by its type 'fanout'",
    )
    fails(
        {"type": "", "name": "f", "task": [{"name": "t", "kind": "noop"}]},
        "<request>: type: must not be empty",
    )


def test_unknown_key_is_named_with_a_hint(types):
    types.append(_EntryPoint("pair", Pair))
    err = fails({"type": "pair", "name": "p", "frist": "x"}, "<request>: frist: unknown key 'frist'")
    assert "did you mean 'first'?" in str(err) and err.key == "frist"
    fails({"name": "p", "typ": "pair"}, "unknown key 'typ'", "did you mean 'type'?")


def test_job_type_error_names_its_key(types):
    types.append(_EntryPoint("pair", Pair))
    err = fails('type = "pair"\nname = "p"\nfirst = 3\n', "<text>: first: expected a command line")
    assert (err.source, err.key, err.reason) == ("<text>", "first", "expected a command line")


def test_a_bad_expansion_is_an_error_saying_where_it_came_from(types):
    class Bad:
        @staticmethod
        def expand(table: dict[str, Any]) -> Any:
            return {"task": [{"name": "t", "kind": "shell", "command": ""}]}

    types.append(_EntryPoint("bad", Bad))
    fails(
        {"type": "bad", "name": "b"}, "task[0].command: must not be empty (in the job that type 'bad' made)"
    )
    # A key the user wrote is reported as theirs.
    err = fails({"type": "bad", "name": "b", "priority": "urgent"}, "priority: unknown priority 'urgent'")
    assert "made" not in str(err)


@pytest.mark.parametrize(
    "result, reason",
    [
        ([1, 2], "returned array, not a job table"),
        ({"name": "x"}, "returned a job without tasks"),
        ({"type": "bad", "task": []}, "returned a job with a type of its own"),
    ],
)
def test_plugin_output_must_be_a_job_table(types, result, reason):
    class Out:
        @staticmethod
        def expand(table: dict[str, Any]) -> Any:
            return result

    types.append(_EntryPoint("out", Out))
    fails({"type": "out", "name": "o"}, "<request>: type: job type 'out' " + reason)


def test_a_crashing_plugin_is_an_error_naming_it(types):
    class Crash:
        @staticmethod
        def expand(table: dict[str, Any]) -> Any:
            raise KeyError("oops")

    class Exits:
        @staticmethod
        def expand(table: dict[str, Any]) -> Any:
            raise SystemExit(3)

    types += [
        _EntryPoint("crash", Crash),
        _EntryPoint("exits", Exits),
        _EntryPoint("broken", ImportError("no module named broken")),
        _EntryPoint("shapeless", object()),
    ]
    fails({"type": "crash", "name": "c"}, "<request>: type: job type 'crash' failed: KeyError: 'oops'")
    fails({"type": "exits", "name": "c"}, "type: job type 'exits' failed: SystemExit: 3")
    fails({"type": "broken", "name": "c"}, "type: cannot load job type 'broken': ImportError: no module")
    fails({"type": "shapeless", "name": "c"}, "type: job type 'shapeless' has no expand(table) method")


def test_unknown_type_lists_the_installed_ones(types):
    types.append(_EntryPoint("pair", Pair))
    fails({"type": "pear", "name": "p"}, "<request>: type: unknown job type 'pear' (installed: fanout, pair)")
    fails({"type": 3, "name": "p"}, "type: expected the name of a job type, got integer")
    del types[:]
    fails({"type": "pair", "name": "p"}, "unknown job type 'pair' (installed: none)")


def test_expanded_jobs_have_the_usual_bounds(types, monkeypatch):
    class Huge:
        @staticmethod
        def expand(table: dict[str, Any]) -> Any:
            return {"task": [{"name": "t", "kind": "noop", "count": js.MAX_TASKS + 1}]}

    types.append(_EntryPoint("huge", Huge))
    fails({"type": "huge", "name": "h"}, "task[0].count: too many tasks", "MAX_TASKS")


def test_fanout_expands_to_shards_over_its_items(types):
    spec = load_job(ROOT / "sample" / "jobs" / "fanout.toml")
    assert spec.type == "fanout" and spec.name == "fanout-example"
    (task,) = spec.tasks
    assert (task.name, task.kind, task.shards) == ("fanout", "shell", 2)
    assert task.params["command"][-4:] == ["apple", "banana", "cherry", "damson"]
    one_each = load_job({"type": "fanout", "name": "f", "command": "true", "items": ["x", "y", "z"]})
    assert one_each.tasks[0].shards == 3 and one_each.task_count() == 3
    capped = load_job({"type": "fanout", "name": "f", "command": "true", "items": ["x"], "parallel": 8})
    assert capped.tasks[0].shards == 1
    env = load_job({"type": "fanout", "name": "f", "command": "true", "items": ["x"], "env": {"A": "1"}})
    assert env.tasks[0].params["env"] == {"A": "1"}


@pytest.mark.parametrize(
    "keys, error",
    [
        ({"command": "true"}, "items: missing"),
        ({"items": ["a"]}, "command: missing"),
        ({"command": "true", "items": []}, "items: must not be empty"),
        ({"command": "true", "items": ["a", 2]}, "items[1]: expected a string, got int"),
        ({"command": "true", "items": ["a\0"]}, "items[0]: must not contain a NUL"),
        ({"command": "true", "items": ["x" * 5000]}, "items[0]: longer than 4096 bytes"),
        ({"command": "true", "items": ["a"] * 10_001}, "items: 10001 items: at most 10000"),
        ({"command": "true", "items": ["x" * 4000] * 300}, "items: the command and items come to"),
        ({"command": ["ls"], "items": ["a"]}, "command: expected a string"),
        ({"command": " ", "items": ["a"]}, "command: must not be empty"),
        ({"command": "true", "items": ["a"], "parallel": 0}, "parallel: expected an integer >= 1, got 0"),
        ({"command": "true", "items": ["a"], "parallel": True}, "parallel: expected an integer"),
        (
            {"command": "true", "items": ["a"], "paralel": 2},
            ("paralel: unknown key", "did you mean 'parallel'?"),
        ),
        ({"command": "true", "items": ["a"], "env": {"ROTA_X": "1"}}, "task[0].env.ROTA_X: ROTA_* variables"),
    ],
)
def test_fanout_refuses_bad_keys_naming_them(types, keys, error):
    parts = error if isinstance(error, tuple) else (error,)
    fails({"type": "fanout", "name": "f", **keys}, *parts)


def test_fanout_driver_runs_each_item_once_and_stops_at_a_failure(types):
    """The driver script on /bin/sh itself: every item goes to exactly one shard, in order."""
    items = [f"item {i}" for i in range(7)]
    spec = load_job(
        {
            "type": "fanout",
            "name": "f",
            "command": 'echo "$FANOUT_INDEX=$FANOUT_ITEM"',
            "items": items,
            "parallel": 3,
        }
    )
    argv = spec.tasks[0].params["command"]
    seen: Counter[str] = Counter()
    for shard in range(3):
        p = subprocess.run(
            argv, capture_output=True, text=True, env={"ROTA_SHARD_INDEX": str(shard)}, timeout=30
        )
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert lines == [f"{i}=item {i}" for i in range(shard, 7, 3)]
        seen.update(lines)
    assert sorted(seen) == sorted(f"{i}=item {i}" for i in range(7)) and set(seen.values()) == {1}
    spec = load_job(
        {
            "type": "fanout",
            "name": "f",
            "command": 'echo "$FANOUT_ITEM"; [ "$FANOUT_ITEM" != b ]',
            "items": ["a", "b", "c"],
            "parallel": 1,
        }
    )
    p = subprocess.run(
        spec.tasks[0].params["command"],
        capture_output=True,
        text=True,
        env={"ROTA_SHARD_INDEX": "0"},
        timeout=30,
    )
    assert (p.returncode, p.stdout) == (1, "a\nb\n")


def test_get_job_shows_the_type_also_once_ended(types):
    spec = load_job(ROOT / "sample" / "jobs" / "fanout.toml")
    job = Job("j1", spec, 1, 0.0)
    assert job_doc(job)["type"] == "fanout"
    job.state, job.ended = "SUCCEEDED", 1.0
    ended = EndedJob.from_record("j1", 1, json.loads(json.dumps(job.record())))
    assert ended is not None and ended.type == "fanout" and job_doc(ended)["type"] == "fanout"
    plain = Job("j2", load_job({"name": "p", "task": [{"name": "t", "kind": "noop"}]}), 2, 0.0)
    assert "type" not in job_doc(plain)


def test_fanout_is_registered_in_the_installed_package():
    """The real entry point (``pip install -e .`` wrote it), not the fake above."""
    spec = load_job(ROOT / "sample" / "jobs" / "fanout.toml")
    assert spec.type == "fanout" and spec.tasks[0].shards == 2


# -- claims(table): a job table without type and tasks ---------------------------------------


class Claiming(Pair):
    """Pair's expansion, claiming tables that have ``first``."""

    seen: list[dict[str, Any]] = []

    @staticmethod
    def claims(table: dict[str, Any]) -> bool:
        Claiming.seen.append(table)
        return "first" in table


def test_a_job_type_claims_a_table_without_type_or_tasks(types):
    types.append(_EntryPoint("pair", Claiming))
    spec = load_job('name = "p"\npriority = 20\nfirst = "echo 1"\n')
    assert spec.type == "pair" and spec.priority == 20 and [t.name for t in spec.tasks] == ["a", "b"]
    assert Claiming.seen[-1] == {"name": "p", "priority": 20, "first": "echo 1"}
    assert JobSpec.from_stored(spec.to_dict()) == spec  # the claimed type is recorded
    # Its errors are its own, as with a type line.
    fails({"name": "p", "first": 3}, "<request>: first: expected a command line")
    # Not claimed: the usual errors.
    fails({"name": "p", "second": "x"}, "unknown key 'second'")
    fails({}, "no tasks: the job is empty")
    # A table with tasks or a type is never offered.
    seen = len(Claiming.seen)
    load_job({"name": "p", "first": "x", "type": "pair"})
    fails({"name": "p", "first": "x", "task": [{"name": "t", "kind": "noop"}]}, "unknown key 'first'")
    assert len(Claiming.seen) == seen


def test_job_types_are_offered_a_table_in_the_order_of_their_names(types):
    class Greedy:
        @staticmethod
        def claims(table: dict[str, Any]) -> bool:
            table.clear()  # a copy: the job is not changed for the others
            return True

        @staticmethod
        def expand(table: dict[str, Any]) -> dict[str, Any]:
            return {"task": [{"name": "g", "kind": "noop"}]}

    types.append(_EntryPoint("zz-greedy", Greedy))
    types.append(_EntryPoint("pair", Claiming))
    assert load_job({"name": "p", "first": "x"}).type == "pair"
    assert load_job({"name": "p", "other": "x"}).type == "zz-greedy"


def test_a_claims_that_raises_or_answers_wrongly_names_its_plugin(types):
    class Raising(Pair):
        @staticmethod
        def claims(table: dict[str, Any]) -> bool:
            raise KeyError("flow")

    class Vague(Pair):
        @staticmethod
        def claims(table: dict[str, Any]) -> Any:
            return "yes"

    types.append(_EntryPoint("raising", Raising))
    fails({"name": "p", "first": "x"}, "<request>: job type 'raising' failed in claims(): KeyError: 'flow'")
    types[-1] = _EntryPoint("vague", Vague)
    fails({"name": "p", "first": "x"}, "job type 'vague': claims() returned", "not true or false")
    types[-1] = _EntryPoint("broken", ImportError("no module"))
    fails({"name": "p", "first": "x"}, "cannot load job type 'broken': ImportError: no module")
    # A job with its tasks never reaches claims().
    assert load_job({"name": "p", "task": [{"name": "t", "kind": "noop"}]}).type is None

"""The ``ports`` task key: named ports for process kinds, validated like every other key."""

from __future__ import annotations

import json

import pytest

from rota.common import jobspec as js
from rota.common.jobspec import JobSpec, JobSpecError, load_job


def job(*tasks: str) -> str:
    return 'name = "j"\n' + "".join(f"\n[[task]]\n{t}\n" for t in tasks)


def fails(source, *parts: str) -> None:
    with pytest.raises(JobSpecError) as info:
        load_job(source)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))


class _Plugin:
    def __init__(self, name, obj):
        self.name, self._obj = name, obj

    def load(self):
        return self._obj


@pytest.fixture
def plugins(monkeypatch):
    found: list[_Plugin] = []
    monkeypatch.setattr(
        js.importlib.metadata, "entry_points", lambda group: [p for p in found if group == js.KIND_GROUP]
    )
    return found


SERVER = 'name = "server"\nkind = "python"\ncode = "pass"'


def test_ports_are_kept_and_round_trip_through_storage():
    spec = load_job(
        job(SERVER + '\nports = ["feed", "admin_2"]', 'name = "c"\nkind = "shell"\ncommand = "true"')
    )
    assert spec.tasks[0].ports == ("feed", "admin_2") and spec.tasks[1].ports == ()
    stored = json.loads(json.dumps(spec.to_dict()))
    assert stored["task"][0]["ports"] == ["feed", "admin_2"] and "ports" not in stored["task"][1]
    back = JobSpec.from_stored(stored)
    assert back == spec and "ports" not in back.tasks[0].params
    assert JobSpec.from_dict(stored) == spec


@pytest.mark.parametrize(
    "body, key, reason",
    [
        ('name = "n"\nkind = "noop"\nports = ["a"]', "task[0].ports", "kind 'noop' runs no process"),
        ('name = "s"\nkind = "sleep"\nseconds = 1\nports = ["a"]', "task[0].ports", "kind 'sleep'"),
        ('name = "c"\nkind = "call"\nfunction = "m:f"\nports = ["a"]', "task[0].ports", "kind 'call'"),
        (SERVER + '\nports = "feed"', "task[0].ports", "expected an array"),
        (SERVER + '\nports = ["feed", "Feed"]', "task[0].ports[1]", "malformed port name 'Feed'"),
        (SERVER + '\nports = ["1x"]', "task[0].ports[0]", "malformed port name"),
        (SERVER + '\nports = [""]', "task[0].ports[0]", "malformed port name"),
        (SERVER + '\nports = ["a.b"]', "task[0].ports[0]", "malformed port name"),
        (SERVER + f'\nports = ["{"x" * 32}"]', "task[0].ports[0]", "malformed port name"),
        (SERVER + "\nports = [3]", "task[0].ports[0]", "expected a port name (a string), got integer"),
        (SERVER + '\nports = ["a", "b", "a"]', "task[0].ports[2]", "duplicate port name 'a'"),
        (SERVER + "\nports = [" + ", ".join(f'"p{i}"' for i in range(9)) + "]", "task[0].ports", "at most 8"),
    ],
)
def test_bad_ports_name_the_key(body, key, reason):
    text = job(body)
    fails(text, f"<text>: {key}: ", reason)
    fails(js.tomllib.loads(text), f"<request>: {key}: ", reason)


def test_the_bounds_are_accepted():
    names = [f"p{i}" for i in range(js.MAX_PORTS)]
    spec = load_job(job(SERVER + f"\nports = {json.dumps(names)}", 'name = "g"\nkind = "go"\ncode = "x"\nports = ["'
                        + "a" * 31 + '"]'))  # fmt: skip
    assert list(spec.tasks[0].ports) == names and spec.tasks[1].ports == ("a" * 31,)


def test_plugin_kinds_take_ports_outside_their_params(plugins):
    seen = []

    class Check:
        @staticmethod
        def validate_params(params):
            seen.append(dict(params))

    plugins.append(_Plugin("gpu", Check))
    spec = load_job(job('name = "t"\nkind = "gpu"\nsize = 2\nports = ["rpc"]'))
    assert spec.tasks[0].ports == ("rpc",) and spec.tasks[0].params == {"size": 2} and seen == [{"size": 2}]


def test_an_empty_list_is_no_ports():
    spec = load_job(job(SERVER + "\nports = []"))
    assert spec.tasks[0].ports == () and "ports" not in spec.to_dict()["task"][0]
    with pytest.raises(JobSpecError):
        load_job(job('name = "n"\nkind = "noop"\nports = []'))

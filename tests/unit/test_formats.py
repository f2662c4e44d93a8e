"""Job files and config files in TOML, JSON or YAML by extension: one validation, the same errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rota.common.config import ConfigError, load_config_file
from rota.common.jobspec import JobSpecError, load_job

TOML = 'name = "j"\n[[task]]\nname = "a"\nkind = "shell"\ncommand = "echo hi"\npriority = "high"\n'
JSON = '{"name": "j", "task": [{"name": "a", "kind": "shell", "command": "echo hi", "priority": "high"}]}'
YAML = "name: j\ntask:\n  - name: a\n    kind: shell\n    command: echo hi\n    priority: high\n"


def test_one_job_in_three_formats_is_one_spec(tmp_path: Path) -> None:
    specs = []
    for ext, text in ((".toml", TOML), (".json", JSON), (".yaml", YAML), (".yml", YAML)):
        path = tmp_path / f"job{ext}"
        path.write_text(text)
        specs.append(load_job(str(path)))
    assert all(s == specs[0] for s in specs) and specs[0].tasks[0].priority == 90


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.yaml",
            "name: j\ntask:\n  - name: a\n    kind: warp\n",
            r"task\[0\]\.kind: unknown kind 'warp'",
        ),
        (
            "bad.json",
            '{"name": "j", "task": [{"name": "a", "kind": "warp"}]}',
            r"task\[0\]\.kind: unknown kind 'warp'",
        ),
        ("alias.yaml", "x: &a [1, 2]\nname: j\ntask: *a\n", "anchors and aliases"),
        ("syntax.yml", "name: [\n", "invalid YAML"),
        ("list.yaml", "- a\n- b\n", "expected a table of keys"),
    ],
)
def test_errors_name_the_file_and_key_whatever_the_format(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(JobSpecError, match=message) as e:
        load_job(str(path))
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_config_files_in_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("slots: 4\nlabels: zone=b\n")
    (tmp_path / "c.json").write_text('{"slots": 4}')
    assert load_config_file(str(tmp_path / "c.yaml"), {"slots", "labels"}) == {"slots": 4, "labels": "zone=b"}
    assert load_config_file(str(tmp_path / "c.json"), {"slots"}) == {"slots": 4}
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        (tmp_path / "d.yml").write_text("bogus: 1\n")
        load_config_file(str(tmp_path / "d.yml"), {"slots"})

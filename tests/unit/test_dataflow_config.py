"""The dataflow job type's keys: validation names the bad key; expansion gives the gang of tasks."""

from __future__ import annotations

import pytest

from rota.common.jobspec import JobSpecError, load_job
from rota.dataflow.config import ENV, Config, Dataflow, parse
from rota.jobtypes import JobTypeError

BASE = {"flow-id": "f1", "table-num": 3, "servers": ["a", "b"], "rcd-cnt": 2000, "ddl-freq": 500}


def _with(**changes):
    table = {**BASE}
    for k, v in changes.items():
        key = k.replace("_", "-")
        if v is None:
            table.pop(key)
        else:
            table[key] = v
    return table


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"table_num": -1}, "table-num"),
        ({"table_num": 0}, "table-num"),
        ({"table_num": 1001}, "table-num"),
        ({"table_num": "3"}, "table-num"),
        ({"servers": []}, "servers"),
        ({"servers": "a"}, "servers"),
        ({"servers": ["a", "a"]}, "servers"),
        ({"servers": ["a", ""]}, "servers[1]"),
        ({"ddl_freq": 0}, "ddl-freq"),
        ({"rcd_cnt": -5}, "rcd-cnt"),
        ({"rcd_cnt": True}, "rcd-cnt"),
        ({"flow_id": "a/b"}, "flow-id"),
        ({"flow_id": ""}, "flow-id"),
        ({"flow_id": None}, "flow-id"),
        ({"pace": -1}, "pace"),
        ({"batch": 0}, "batch"),
        ({"out_dir": "relative"}, "out-dir"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_value_names_its_key(changes, key):
    with pytest.raises(JobTypeError) as e:
        parse(_with(**changes))
    assert e.value.key == key, e.value


def test_an_unknown_key_is_refused_through_the_job_file_with_a_hint():
    with pytest.raises(JobSpecError, match="unknown key 'ddl-freqs'.*did you mean 'ddl-freq'"):
        load_job({"type": "dataflow", **BASE, "ddl-freqs": 3})


def test_the_defaults_and_the_endless_flow():
    cfg = parse(BASE)
    assert (cfg.pace, cfg.batch, cfg.out_dir) == (2327, 128, "/tmp/dataflow")
    assert cfg.end == 2000 and cfg.parties == 3 + 4 + 1
    endless = parse(_with(rcd_cnt=0))
    assert endless.end > 2**60


def test_the_config_survives_its_trip_through_the_environment():
    cfg = parse(_with(servers=["h1:9000", "h2:9001"], pace=0))
    assert Config.from_json(cfg.to_json()) == cfg


def test_expansion_gives_one_gang_of_binlogs_chains_producers_and_a_report():
    spec = load_job({"type": "dataflow", **BASE})
    assert spec.name == "f1" and spec.gang and spec.type == "dataflow"
    tasks = {t.name: t for t in spec.tasks}
    assert list(tasks) == ["binlog", "chain", "producer", "report"]  # the busiest placed first
    assert tasks["producer"].shards == 3 and tasks["binlog"].shards == 2 and tasks["chain"].shards == 2
    assert tasks["binlog"].ports == ("feed",)
    assert all(tasks[n].service for n in ("producer", "binlog", "chain")) and not tasks["report"].service
    assert spec.task_count() == parse(BASE).parties
    for t in spec.tasks:
        assert t.kind == "python" and f"rota.dataflow.{t.name}" in t.params["code"]
        assert Config.from_json(t.params["env"][ENV]) == parse(BASE)


def test_it_claims_tables_that_name_a_flow():
    assert Dataflow.claims(BASE)
    assert not Dataflow.claims({"name": "x", "command": "true"})

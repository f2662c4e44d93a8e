"""The checker (the report task's own code): good sink files pass; a duplicate, a gap, a record out
of order, a record of the wrong chain, a torn line, or a broken DDL barrier each fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rota.dataflow import records as rec
from rota.dataflow.config import parse
from rota.dataflow.report import check

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, **extra):
    return parse(
        {"flow-id": "f", "table-num": 2, "servers": ["a", "b"], "rcd-cnt": 300, "ddl-freq": 100,
         "out-dir": str(tmp_path), **extra}
    )  # fmt: skip


def _lines(cfg, s, t):
    """A correct file: t_sink grows with the version, so every DDL barrier holds."""
    out = []
    for pk in rec.routed(s, cfg.server_count, cfg.ddl_freq, 0, cfg.end, cfg.end):
        v = pk // cfg.ddl_freq
        tp = 1_000_000 + pk
        tk = 2_000_000 + v * 100_000 + pk * 10 + s
        kind = "ddl" if rec.is_ddl(pk, cfg.ddl_freq) else "data"
        out.append(f"{pk} {v} {kind} {tp} {tp + 100} {tp + 200} {tk - 5} {tk}")
    return out


def _write(cfg, change=None):
    for s in range(cfg.server_count):
        for t in range(cfg.table_num):
            lines = _lines(cfg, s, t)
            if change and (s, t) == (1, 1):
                lines = change(lines)
            path = Path(cfg.sink_path(s, t))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(line + "\n" for line in lines))


def test_good_files_pass_with_the_exact_count_and_latencies(tmp_path):
    cfg = _cfg(tmp_path)
    _write(cfg)
    report = check(cfg)
    assert report["check"] == "ok", report
    assert report["records"] == 600
    # Each table's two DDL records (100, 200) have a line in both chains.
    assert report["lines"] == 600 + 2 * 2
    assert report["latency_ms"]["binlog"]["p50"] == 0.1
    assert report["latency_ms"]["end_to_end"]["max"] > 0


def _fails(tmp_path, change, words):
    cfg = _cfg(tmp_path)
    _write(cfg, change)
    report = check(cfg)
    assert report["check"] == "failed", report
    text = " ".join(report["errors"])
    assert words in text, text
    return report


def test_a_duplicate_fails(tmp_path):
    _fails(tmp_path, lambda ls: ls[:10] + [ls[9]] + ls[10:], "written twice")


def test_a_gap_fails(tmp_path):
    report = _fails(tmp_path, lambda ls: ls[:10] + ls[11:], "missing")
    assert report["records"] == 599


def test_a_record_out_of_order_fails(tmp_path):
    _fails(tmp_path, lambda ls: ls[:10] + [ls[11], ls[10]] + ls[12:], "out of order")


def test_a_record_of_another_chain_fails(tmp_path):
    _fails(tmp_path, lambda ls: ls + ["300 3 data 1 2 3 4 99999999"], "do not belong")


def test_a_torn_last_line_fails(tmp_path):
    cfg = _cfg(tmp_path)
    _write(cfg)
    with open(cfg.sink_path(0, 0), "a") as f:
        f.write("17 0 da")
    assert check(cfg)["check"] == "failed"


def test_a_wrong_version_or_kind_fails(tmp_path):
    _fails(tmp_path, lambda ls: [ls[0].replace(" 0 data ", " 1 data ", 1)] + ls[1:], "line says")


def test_a_version_written_before_the_previous_one_ended_in_another_chain_fails(tmp_path):
    """Chain 1 writes its last version-0 line of table 1 after chain 0 wrote a version-1 line."""

    def late(lines):
        i = max(n for n, line in enumerate(lines) if line.split()[1] == "0")
        cols = lines[i].split()
        cols[-1] = str(2_000_000 + 100_000 + 10_000)
        return lines[:i] + [" ".join(cols)] + lines[i + 1 :]

    _fails(tmp_path, late, "DDL barrier")


def test_the_bench_checker_reads_a_job_file(tmp_path):
    cfg = _cfg(tmp_path)
    _write(cfg)
    job = tmp_path / "flow.toml"
    job.write_text(
        f'type = "dataflow"\nflow-id = "f"\ntable-num = 2\nservers = ["a", "b"]\nrcd-cnt = 300\n'
        f'ddl-freq = 100\nout-dir = "{tmp_path}"\n'
    )
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dataflow_check.py"), str(job), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["records"] == 600
    Path(cfg.sink_path(1, 1)).write_text("")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dataflow_check.py"), str(job)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1 and "missing" in run.stdout, run.stdout

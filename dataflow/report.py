"""Report task and checker: one code reads the sink files, verifies them and measures.

Verified: every line well formed (version and kind as the pk says); each file holds exactly the
records of its table routed to its chain, in pk order, none twice, none missing (a finite flow);
the DDL rule: for each table and version v, every version-v line's t_sink is before every
version-(v+1) line's t_sink, across all chains. Measured: records/s (first t_produce to last
t_sink) and latencies, end to end and per hop (mean, p50, p99, max, in ms).

As a task it first waits at the final barrier (every other task is done), then prints a table and,
as the last stdout line, the report as one JSON object; it exits 1 when the check fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from array import array
from typing import Any

from rota.dataflow import records as rec
from rota.dataflow.config import Config

MAX_ERRORS = 20
HOPS = ("binlog", "receive", "sync", "sink")
COLUMNS = 8


class Check:
    def __init__(self, cfg: Config, root: str | None = None) -> None:
        self.cfg = cfg
        self.root = root or cfg.flow_dir()
        self.errors: list[str] = []
        self.lines = 0
        #: Per (table, version): min and max t_sink over every chain.
        self.versions: dict[tuple[int, int], list[int]] = {}
        self.e2e = array("q")
        self.hops = {h: array("q") for h in HOPS}
        self.first_produce: int | None = None
        self.last_sink: int | None = None
        self.data_lines = 0
        self.ddl_seen: set[tuple[int, int]] = set()

    def error(self, text: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)
        elif len(self.errors) == MAX_ERRORS:
            self.errors.append("... more errors left out")

    def run(self) -> Check:
        cfg = self.cfg
        for s in range(cfg.server_count):
            for t in range(cfg.table_num):
                self.file(s, t)
        self.ddl_rule()
        if cfg.rcd_cnt and self.unique != cfg.table_num * cfg.rcd_cnt:
            self.error(f"{self.unique} distinct records, the flow has {cfg.table_num * cfg.rcd_cnt}")
        return self

    @property
    def unique(self) -> int:
        """Distinct records: a DDL record has a line in every chain."""
        return self.data_lines + len(self.ddl_seen)

    def file(self, s: int, t: int) -> None:
        cfg = self.cfg
        path = os.path.join(self.root, f"chain_{s}", f"table_{t}")
        name = f"chain_{s}/table_{t}"
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            self.error(f"{name}: the last line is not complete")
        freq = cfg.ddl_freq
        pks = array("q")
        prev = -1
        versions = self.versions
        e2e, hops = self.e2e, [self.hops[h] for h in HOPS]
        for n, line in enumerate(lines, 1):
            cols = line.split()
            try:
                if len(cols) != COLUMNS:
                    raise ValueError
                pk, ver = int(cols[0]), int(cols[1])
                tp, tb, tr, ts, tk = (int(x) for x in cols[3:])
            except ValueError:
                self.error(f"{name}:{n}: malformed line {line[:80]!r}")
                continue
            kind = cols[2].decode()
            ddl = rec.is_ddl(pk, freq)
            if ver != pk // freq or kind != (rec.DDL if ddl else rec.DATA):
                self.error(
                    f"{name}:{n}: pk {pk} is version {pk // freq} {'ddl' if ddl else 'data'}, line says {ver} {kind}"
                )
            if pk == prev:
                self.error(f"{name}:{n}: pk {pk} written twice")
            elif pk < prev:
                self.error(f"{name}:{n}: pk {pk} after {prev}: out of order")
            prev = pk
            pks.append(pk)
            if ddl:
                self.ddl_seen.add((t, pk))
            else:
                self.data_lines += 1
            key = (t, ver)
            span = versions.get(key)
            if span is None:
                versions[key] = [tk, tk]
            else:
                if tk < span[0]:
                    span[0] = tk
                if tk > span[1]:
                    span[1] = tk
            e2e.append(tk - tp)
            hops[0].append(tb - tp)
            hops[1].append(tr - tb)
            hops[2].append(ts - tr)
            hops[3].append(tk - ts)
            if self.first_produce is None or tp < self.first_produce:
                self.first_produce = tp
            if self.last_sink is None or tk > self.last_sink:
                self.last_sink = tk
        self.lines += len(pks)
        limit = cfg.end if cfg.rcd_cnt else (pks[-1] + 1 if pks else 0)
        want = rec.routed(s, cfg.server_count, freq, 0, limit, len(pks) + 1 if not cfg.rcd_cnt else limit)
        if pks != want:
            self._explain(name, pks, want)

    def _explain(self, name: str, got: array, want: array) -> None:
        seen = set(got)
        missing = [pk for pk in want if pk not in seen]
        extra = sorted(set(got) - set(want))
        if missing:
            self.error(f"{name}: {len(missing)} records missing (a gap), first pk {missing[0]}")
        if extra:
            self.error(f"{name}: {len(extra)} records that do not belong to this chain, first pk {extra[0]}")
        if len(got) != len(seen):
            self.error(f"{name}: {len(got) - len(seen)} duplicate lines")
        if not missing and not extra and len(got) == len(seen):
            self.error(f"{name}: records out of order")

    def ddl_rule(self) -> None:
        for (t, v), (_, hi) in sorted(self.versions.items()):
            after = self.versions.get((t, v + 1))
            if after is not None and hi >= after[0]:
                self.error(
                    f"table {t}: a version {v} line was written at {hi}, after a version {v + 1} line "
                    f"(at {after[0]}): the DDL barrier was not respected"
                )

    @property
    def ok(self) -> bool:
        return not self.errors

    def report(self) -> dict[str, Any]:
        span = (self.last_sink or 0) - (self.first_produce or 0)
        records = self.unique
        out: dict[str, Any] = {
            "flow": self.cfg.flow_id,
            "check": "ok" if self.ok else "failed",
            "records": records,
            "lines": self.lines,
            "seconds": round(span / 1e6, 3),
            "records_per_s": round(records / (span / 1e6)) if span > 0 else 0,
            "latency_ms": {"end_to_end": stats(self.e2e), **{h: stats(self.hops[h]) for h in HOPS}},
        }
        if self.errors:
            out["errors"] = self.errors
        return out


def stats(values: array) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    v = sorted(values)
    n = len(v)
    return {
        "mean": round(sum(v) / n / 1000, 3),
        "p50": round(v[n // 2] / 1000, 3),
        "p99": round(v[min(n - 1, int(n * 0.99))] / 1000, 3),
        "max": round(v[-1] / 1000, 3),
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"flow {report['flow']}: {report['records']} records in {report['seconds']} s, "
        f"{report['records_per_s']} records/s, check {report['check']}",
        f"{'latency ms':<12}{'mean':>10}{'p50':>10}{'p99':>10}{'max':>10}",
    ]
    for name, s in report["latency_ms"].items():
        lines.append(f"{name:<12}{s['mean']:>10.3f}{s['p50']:>10.3f}{s['p99']:>10.3f}{s['max']:>10.3f}")
    lines.extend(f"error: {e}" for e in report.get("errors", []))
    return "\n".join(lines)


def check(cfg: Config, root: str | None = None) -> dict[str, Any]:
    return Check(cfg, root).run().report()


def main() -> None:
    from rota.dataflow import runtime

    runtime.die_with_parent()
    cfg = Config.from_env()
    asyncio.run(runtime.final_barrier(cfg))
    report = check(cfg)
    print(table(report))
    print(json.dumps(report, separators=(",", ":")), flush=True)
    sys.exit(0 if report["check"] == "ok" else 1)

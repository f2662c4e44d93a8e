"""The ``dataflow`` job type: its keys, their validation, and the job they expand to.

A job file with the original bench's five keys (``flow-id``, ``table-num``, ``servers``, ``rcd-cnt``,
``ddl-freq``) and no ``type`` is claimed by this type; the other keys have defaults (docs/dataflow.md).
Expansion is pure: the tasks get the whole validated config as JSON in ``DATAFLOW_CONFIG``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rota.jobtypes import JobTypeError, check_keys

ORIGINAL_KEYS = ("flow-id", "table-num", "servers", "rcd-cnt", "ddl-freq")
OWN_KEYS = ("out-dir", "pace", "batch", "flush-ms", "checkpoint-ms", "log-cap", "restarts")
KEYS = ORIGINAL_KEYS + OWN_KEYS
ENV = "DATAFLOW_CONFIG"
FLOW_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TABLES = 1000
MAX_SERVERS = 64
#: Records per second per table the original sent: 128 every 55 ms.
DEFAULT_PACE = 2327
DEFAULT_BATCH = 128
DEFAULT_FLUSH_MS = 8
DEFAULT_CHECKPOINT_MS = 250
DEFAULT_LOG_CAP = 65536
DEFAULT_RESTARTS = 20
DEFAULT_OUT_DIR = "/tmp/dataflow"
#: pk values stay below this in an endless flow (rcd-cnt = 0).
ENDLESS = 2**62


@dataclass(frozen=True)
class Config:
    flow_id: str
    table_num: int
    servers: tuple[str, ...]
    rcd_cnt: int
    ddl_freq: int
    out_dir: str = DEFAULT_OUT_DIR
    pace: int = DEFAULT_PACE
    batch: int = DEFAULT_BATCH
    flush_ms: int = DEFAULT_FLUSH_MS
    checkpoint_ms: int = DEFAULT_CHECKPOINT_MS
    log_cap: int = DEFAULT_LOG_CAP
    restarts: int = DEFAULT_RESTARTS

    @property
    def server_count(self) -> int:
        return len(self.servers)

    @property
    def end(self) -> int:
        """One past the last pk of every table (a bound never reached when the flow is endless)."""
        return self.rcd_cnt if self.rcd_cnt else ENDLESS

    @property
    def parties(self) -> int:
        """Every task of the job: they all meet at the final barrier."""
        return self.table_num + 2 * self.server_count + 1

    def flow_dir(self) -> str:
        return os.path.join(self.out_dir, self.flow_id)

    def sink_path(self, chain: int, table: int) -> str:
        return os.path.join(self.flow_dir(), f"chain_{chain}", f"table_{table}")

    def to_json(self) -> str:
        d = asdict(self)
        d["servers"] = list(self.servers)
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Config:
        d = json.loads(text)
        d["servers"] = tuple(d["servers"])
        return cls(**d)

    @classmethod
    def from_env(cls) -> Config:
        text = os.environ.get(ENV)
        if not text:
            raise SystemExit(f"{ENV} is not set: this runs as a task of a dataflow job")
        return cls.from_json(text)


def parse(table: Mapping[str, Any]) -> Config:
    """A validated Config; JobTypeError names the first bad key."""
    check_keys(table, KEYS)
    for key in ORIGINAL_KEYS:
        if key not in table:
            raise JobTypeError(key, "missing: a dataflow job needs " + ", ".join(ORIGINAL_KEYS))
    flow_id = table["flow-id"]
    if not isinstance(flow_id, str) or not FLOW_ID_RE.fullmatch(flow_id):
        raise JobTypeError(
            "flow-id",
            f"expected 1 to 64 characters of A-Z a-z 0-9 . _ - (not starting with . _ -), got {flow_id!r}",
        )
    servers = table["servers"]
    if not isinstance(servers, list) or not servers:
        raise JobTypeError("servers", "expected a non-empty array of server names (one binlog server each)")
    if len(servers) > MAX_SERVERS:
        raise JobTypeError("servers", f"{len(servers)} servers: at most {MAX_SERVERS}")
    for i, s in enumerate(servers):
        if not isinstance(s, str) or not s.strip() or len(s) > 200 or not s.isprintable():
            raise JobTypeError(f"servers[{i}]", f"expected a non-empty name or host:port, got {s!r}")
    if len(set(servers)) != len(servers):
        raise JobTypeError("servers", "names must be distinct")
    out_dir = table.get("out-dir", DEFAULT_OUT_DIR)
    if not isinstance(out_dir, str) or not out_dir.startswith("/") or "\0" in out_dir:
        raise JobTypeError("out-dir", f"expected an absolute path, got {out_dir!r}")
    return Config(
        flow_id=flow_id,
        table_num=_int(table, "table-num", 1, MAX_TABLES),
        servers=tuple(servers),
        rcd_cnt=_int(table, "rcd-cnt", 0, ENDLESS - 1),
        ddl_freq=_int(table, "ddl-freq", 1, ENDLESS),
        out_dir=out_dir,
        pace=_int(table, "pace", 0, 10_000_000, DEFAULT_PACE),
        batch=_int(table, "batch", 1, 65536, DEFAULT_BATCH),
        flush_ms=_int(table, "flush-ms", 1, 10_000, DEFAULT_FLUSH_MS),
        checkpoint_ms=_int(table, "checkpoint-ms", 10, 60_000, DEFAULT_CHECKPOINT_MS),
        log_cap=_int(table, "log-cap", 1024, 10_000_000, DEFAULT_LOG_CAP),
        restarts=_int(table, "restarts", 0, 1000, DEFAULT_RESTARTS),
    )


def _int(table: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
    if key not in table:
        assert default is not None
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobTypeError(key, f"expected an integer from {lo} to {hi}, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise JobTypeError(key, f"expected an integer from {lo} to {hi}, got {value}")
    return value


def _task(name: str, module: str, cfg: Config, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "python",
        "code": f"from rota.dataflow.{module} import main; main()",
        "env": {ENV: cfg.to_json()},
        **extra,
    }


def expand(cfg: Config) -> dict[str, Any]:
    """The built-in job: one gang of binlogs, chains, producers and the report. In that order: a
    dead executor's tasks are placed again in task order, and the binlogs and chains, which every
    record goes through, then get the executor's warm spare interpreters first."""
    service = {"service": True, "restarts": cfg.restarts}
    return {
        "name": cfg.flow_id,
        "gang": True,
        "task": [
            _task("binlog", "binlog", cfg, shards=cfg.server_count, ports=["feed"], **service),
            _task("chain", "chain", cfg, shards=cfg.server_count, **service),
            _task("producer", "producer", cfg, shards=cfg.table_num, **service),
            # The report's task: its result is the job's report (report = true).
            _task("report", "report", cfg, **REPORT_KEY),
        ],
    }


#: The task key that makes the report task's result (its last stdout line, a JSON object) the job's
#: report: get-job, submit-job --wait and the dashboard show it.
REPORT_KEY: dict[str, Any] = {"report": True}


class Dataflow:
    """The ``rota.jobs`` plug-in."""

    @staticmethod
    def expand(table: dict[str, Any]) -> dict[str, Any]:
        return expand(parse(table))

    @staticmethod
    def claims(table: Mapping[str, Any]) -> bool:
        """A job file with no type and no tasks is the dataflow's when it names a flow."""
        return "flow-id" in table

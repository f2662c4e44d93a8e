"""Check a dataflow's sink files: count, pk order, no duplicates, no gaps, the DDL barriers.

    .venv/bin/python bench/dataflow_check.py JOB.toml [--dir DIR] [--json]

JOB.toml is the flow's job file (its keys say what the files must hold); the files are read from
its ``out-dir``/``flow-id``, or from DIR. Prints the report (records, records/s, latencies) and
exits 0 when the check passes, 1 when it fails, 2 on a bad job file. The same code is the flow's
report task (rota.dataflow.report).
"""

from __future__ import annotations

import argparse
import json
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from rota.dataflow.config import parse
from rota.dataflow.report import check, table
from rota.jobtypes import JobTypeError

#: Job keys the flow's own validation does not see.
JOB_KEYS = ("type", "name", "id", "priority", "max-attempts", "timeout", "retention")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", help="the flow's job file (TOML)")
    ap.add_argument("--dir", help="read the sink files here instead of <out-dir>/<flow-id>")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object only")
    args = ap.parse_args(argv)
    try:
        with open(args.job, "rb") as f:
            raw = tomllib.load(f)
        cfg = parse({k: v for k, v in raw.items() if k not in JOB_KEYS})
    except (OSError, tomllib.TOMLDecodeError) as e:
        print(f"dataflow_check: cannot read {args.job}: {e}", file=sys.stderr)
        return 2
    except JobTypeError as e:
        print(f"dataflow_check: {args.job}: {e}", file=sys.stderr)
        return 2
    report = check(cfg, args.dir)
    print(json.dumps(report) if args.json else table(report))
    return 0 if report["check"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())

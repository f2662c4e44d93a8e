"""Logging set-up shared by every Rota program: ``--log-level`` and ``--log-format text|json``."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields (job, task, attempt, executor) are kept."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def ids(
    job: str | None = None,
    task: int | str | None = None,
    attempt: int | None = None,
    executor: str | None = None,
) -> dict[str, Any]:
    """``extra=`` for a log call about a task: JSON logs carry these as their own fields."""
    fields = {"job_id": job, "task_id": task, "attempt": attempt, "executor_id": executor}
    return {"extra": {k: v for k, v in fields.items() if v is not None}}


def setup_logging(level: str, fmt: str, program: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s.%(msecs)03d {program} %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("grpc").setLevel(logging.WARNING)

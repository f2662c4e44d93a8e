"""Job ids: they become etcd keys and file names on executors, so only a safe set is allowed."""

from __future__ import annotations

import re

_JOB_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


class BadJobId(ValueError):
    """A job id outside the safe character set."""


def validate_job_id(job_id: object) -> str:
    """``job_id`` itself when it is safe; BadJobId naming the problem otherwise."""
    if not isinstance(job_id, str):
        raise BadJobId(f"expected a string, got {type(job_id).__name__}")
    if not _JOB_ID_RE.fullmatch(job_id) or job_id.startswith("."):
        raise BadJobId(
            f"malformed job id {job_id!r}: expected 1-128 characters of A-Z a-z 0-9 _ . - not starting with '.'"
        )
    return job_id

"""Retry policies on a real cluster (issue 16): an exit code named in never-on-exit-codes fails the
task at once, whatever max-attempts allows; on-exit-codes with a fixed backoff retries after that
long; get-job says why each attempt was retried or not."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.etcd

FLAKY = """
import os, sys, time
with open({stamps!r}, "a") as f:
    f.write(f"{{time.time()}}\\n")
sys.exit(75 if os.environ["ROTA_ATTEMPT"] in ("1", "2") else 0)
"""


def test_exit_codes_decide_retries_and_get_job_says_why(local_cluster, tmp_path):
    cluster = local_cluster(executors=1, executor_slots=2)
    stamps = tmp_path / "stamps"
    job = {
        "name": "retries",
        "max-attempts": 5,
        "task": [
            {"name": "fatal", "kind": "shell", "command": "exit 3", "retry": {"never-on-exit-codes": [3]}},
            {"name": "flaky", "kind": "python", "code": FLAKY.format(stamps=str(stamps)),
             "retry": {"backoff": "fixed", "initial": "1s", "on-exit-codes": [75]}},
        ],
    }  # fmt: skip
    with cluster.client(timeout=30) as c:
        doc = c.run_job(job, timeout=90)
    fatal, flaky = doc["tasks"]
    assert (fatal["state"], fatal["attempt"]) == ("FAILED", 1)
    assert fatal["retries"] == [
        "attempt 1 exited with code 3; exit code 3 is in never-on-exit-codes: not retried"
    ]
    assert (flaky["state"], flaky["attempt"]) == ("SUCCEEDED", 3)
    assert flaky["retries"] == [
        "attempt 1 exited with code 75; retried after 1s (fixed backoff)",
        "attempt 2 exited with code 75; retried after 1s (fixed backoff)",
    ]
    starts = [float(line) for line in stamps.read_text().split()]
    assert len(starts) == 3 and all(b - a >= 1.0 for a, b in zip(starts, starts[1:], strict=False))

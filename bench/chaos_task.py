"""The ``call`` task of the chaos runner: the same side effects as its ``python`` task, in a warm worker.

A start line, a short pause, an end line, in the format ``bench/chaos.py`` reads back; its calls are
short so that executors queue them deeply and run them in batches while the faults land.
"""

from __future__ import annotations

import os
import random
import time


def work(log: str) -> str:
    """Returns "TASK ATTEMPT", the result the chaos check matches against the record (as the python
    task prints it)."""
    t, a, j = os.environ["ROTA_TASK_ID"], os.environ["ROTA_ATTEMPT"], os.environ["ROTA_JOB_ID"]

    def w(what: str) -> None:
        with open(log, "a") as f:
            f.write(f"{what} {t} {a} {os.getpid()} {j}\n")

    w("start")
    time.sleep(random.uniform(0.001, 0.02))
    w("end")
    return f"{t} {a}"

"""Functions that ``call`` tasks in the integration tests run: they leave side effects to count."""

from __future__ import annotations

import os
import time


def stamp(path: str, label: str, seconds: float = 0.0) -> float:
    """Append ``label``, the start time and the executor's pid to ``path``, then take ``seconds``."""
    started = time.time()
    with open(path, "a") as f:
        f.write(f"{label} {started:.6f} {os.getppid()}\n")
    time.sleep(seconds)
    return started


def environ_of(pid: str) -> str:
    """What ``/proc/<pid>/environ`` shows (``self`` or ``parent``), or why it cannot be read."""
    target = os.getppid() if pid == "parent" else pid
    try:
        with open(f"/proc/{target}/environ", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"unreadable: {e.strerror}"

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


def step(path: str, label: str, seconds: float = 0.0) -> dict:
    """Take ``seconds``, then append ``label``, start and end times to ``path``; return what the
    tasks it runs after gave (rota.task.after)."""
    import rota.task

    started = time.time()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{label} {started:.6f} {time.time():.6f}\n")
    return {"label": label, "after": rota.task.after()}


def environ_of(pid: str) -> str:
    """What ``/proc/<pid>/environ`` shows (``self`` or ``parent``), or why it cannot be read."""
    target = os.getppid() if pid == "parent" else pid
    try:
        with open(f"/proc/{target}/environ", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"unreadable: {e.strerror}"


def resume(label: str) -> str:
    """A ``call`` task that checkpoints (rota.task): its first attempt saves ``label`` and fails,
    the next returns what it finds."""
    import rota.task

    old = rota.task.checkpoint.load()
    if old is None:
        rota.task.checkpoint.save(label.encode())
        rota.task.progress(0.5, "saved, failing on purpose")
        raise RuntimeError("failing on purpose after the checkpoint")
    rota.task.progress(1.0, "resumed")
    return f"resumed from {old.decode()} in attempt {os.environ['ROTA_ATTEMPT']}"

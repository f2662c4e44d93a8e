"""Keeping a process task in its limits: a cgroup v2 per attempt when the executor can make one,
resource limits (setrlimit) otherwise.

Both modes: CPU seconds are RLIMIT_CPU (per process: SIGXCPU), file size is RLIMIT_FSIZE (SIGXFSZ),
set in the child before it runs the task. Cgroup mode: memory is ``memory.max`` (with
``memory.swap.max`` 0: no swapping round it), processes ``pids.max``, and killing the attempt is
``cgroup.kill``, which reaches a child that left the task's session. Rlimit mode: memory is
RLIMIT_DATA (an allocation fails), and processes are counted by the executor a few times a second
in the task's session, the task killed past its cap: RLIMIT_NPROC counts every process of the
user, not the task's, and binds no process of root.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rota.common.limits import Limits, format_size

log = logging.getLogger("rota.executor")

CGROUP_CONTROLLERS = ("memory", "pids")
#: How often rlimit mode counts a task's processes, in seconds.
PROCESS_POLL = 0.2
_REMOVE_WAIT = 2.0


class CgroupTree:
    """The executor's own cgroup (``rota-<pid>``) with the memory and pids controllers on for the
    attempt cgroups it makes inside."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._count = 0

    def attempt(self) -> str:
        self._count += 1
        path = os.path.join(self.path, f"a{self._count}")
        os.mkdir(path)
        return path

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


@dataclass
class Mode:
    """How this executor bounds tasks; ``why`` says why cgroups are not used, for the log."""

    cgroups: CgroupTree | None
    why: str = ""

    def describe(self) -> str:
        if self.cgroups is not None:
            return f"cgroup v2 under {self.cgroups.path}"
        return f"rlimits ({self.why})"


_mode = Mode(None, "not set up")


def mode() -> Mode:
    return _mode


def set_mode(m: Mode) -> None:
    global _mode
    _mode = m


def setup(option: str, proc: str = "/proc/self") -> Mode:
    """``--cgroup``: 'off', 'auto' (the executor's own cgroup, if it can have children with the memory
    and pids controllers) or the path of a cgroup v2 directory to work under."""
    if option == "off":
        return Mode(None, "--cgroup off")
    try:
        if option == "auto":
            parent = _own_cgroup(proc)
            if parent is None:
                return Mode(None, "no cgroup v2 hierarchy")
            _own_leaf(parent)
        else:
            parent = option
            if not os.path.exists(os.path.join(parent, "cgroup.controllers")):
                return Mode(None, f"{parent} is not a cgroup v2 directory")
        return Mode(_make_tree(parent))
    except _NoCgroup as e:
        return Mode(None, str(e))
    except OSError as e:
        return Mode(None, f"cannot set up a cgroup: {e}")


class _NoCgroup(Exception):
    pass


def _own_cgroup(proc: str) -> str | None:
    """The directory of this process's cgroup v2, or None without a v2 hierarchy."""
    mount = None
    with open(os.path.join(proc, "mountinfo")) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                mount = left.split()[4]
                break
    if mount is None:
        return None
    with open(os.path.join(proc, "cgroup")) as f:
        for line in f:
            if line.startswith("0::"):
                return os.path.join(mount, line[3:].strip().lstrip("/"))
    return None


def _controllers(path: str, name: str) -> set[str]:
    with open(os.path.join(path, name)) as f:
        return set(f.read().split())


def _own_leaf(parent: str) -> None:
    """A cgroup with processes in it cannot hand controllers to children (the kernel's
    no-internal-process rule): when the executor is alone in its cgroup (a systemd unit with
    ``Delegate=yes``) it moves into a leaf of its own, so the attempts can have siblings' controllers."""
    if set(CGROUP_CONTROLLERS) <= _controllers(parent, "cgroup.subtree_control"):
        return
    if not set(CGROUP_CONTROLLERS) <= _controllers(parent, "cgroup.controllers"):
        raise _NoCgroup(f"its cgroup {parent} offers no memory and pids controllers")
    with open(os.path.join(parent, "cgroup.procs")) as f:
        others = {int(p) for p in f.read().split()} - {os.getpid()}
    if others:
        raise _NoCgroup(
            f"its cgroup {parent} holds other processes too (run it in a cgroup of its own, "
            "e.g. a systemd unit with Delegate=yes, or give --cgroup a directory)"
        )
    leaf = os.path.join(parent, "executor")
    os.makedirs(leaf, exist_ok=True)
    with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
        f.write("0")


def _enable(path: str) -> None:
    have = _controllers(path, "cgroup.subtree_control")
    if set(CGROUP_CONTROLLERS) <= have:
        return
    if not set(CGROUP_CONTROLLERS) <= _controllers(path, "cgroup.controllers"):
        raise _NoCgroup(f"{path} offers no memory and pids controllers")
    with open(os.path.join(path, "cgroup.subtree_control"), "w") as f:
        f.write(" ".join(f"+{c}" for c in CGROUP_CONTROLLERS))


def _make_tree(parent: str) -> CgroupTree:
    _enable(parent)
    path = os.path.join(parent, f"rota-{os.getpid()}")
    os.makedirs(path, exist_ok=True)
    _enable(path)
    return CgroupTree(path)


def _read_events(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                out[key] = int(value)
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Confinement:
    """One attempt's bounds: set up before the process starts, read and torn down after it ends."""

    def __init__(self, limits: Limits, tree: CgroupTree | None) -> None:
        self.limits = limits
        self.cgroup = ""
        self._procs_fd = -1
        #: Set by the watchdog (rlimit mode) when it killed the task for its processes.
        self.too_many = 0
        if tree is not None:
            self.cgroup = tree.attempt()
            try:
                if limits.memory is not None:
                    _write(os.path.join(self.cgroup, "memory.max"), str(limits.memory))
                    with contextlib.suppress(FileNotFoundError):
                        _write(os.path.join(self.cgroup, "memory.swap.max"), "0")
                if limits.processes is not None:
                    _write(os.path.join(self.cgroup, "pids.max"), str(limits.processes))
                self._procs_fd = os.open(
                    os.path.join(self.cgroup, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC
                )
            except BaseException:
                self._remove_now()
                raise

    def needs_preexec(self) -> bool:
        lim = self.limits
        return bool(self.cgroup) or any(v is not None for v in (lim.cpu, lim.file_size, lim.memory))

    def preexec(self) -> Callable[[], None] | None:
        """What runs in the child between fork and exec: join the cgroup, set the rlimits."""
        if not self.needs_preexec():
            return None
        return _preexec(self._procs_fd, rlimits(self.limits, memory=not self.cgroup))

    def watches_processes(self) -> bool:
        return not self.cgroup and self.limits.processes is not None

    def count_over(self, session: int) -> int:
        """The processes of the task's session when over its cap, else 0 (rlimit mode)."""
        cap = self.limits.processes
        if cap is None:
            return 0
        n = count_session(session)
        return n if n > cap else 0

    def verdict(self, code: int | None, stderr: str) -> str:
        """The failure reason that names a limit the attempt ran into, or ''."""
        lim = self.limits
        if self.too_many:
            return f"process limit {lim.processes} reached ({self.too_many} processes)"
        if self.cgroup:
            if lim.memory is not None and _read_events(os.path.join(self.cgroup, "memory.events")).get(
                "oom_kill"
            ):
                return f"memory limit {format_size(lim.memory)} exceeded (oom-kill)"
            if lim.processes is not None and _read_events(os.path.join(self.cgroup, "pids.events")).get(
                "max"
            ):
                return f"process limit {lim.processes} reached (a fork failed)"
        if code is None or code == 0:
            return ""
        if lim.cpu is not None and code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return f"cpu limit {lim.cpu:g}s exceeded (SIGXCPU)"
        if lim.file_size is not None:
            if code in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
                return f"file-size limit {format_size(lim.file_size)} exceeded (SIGXFSZ)"
            if "File too large" in stderr:
                return (
                    f"file-size limit {format_size(lim.file_size)} exceeded (a write failed: File too large)"
                )
        if lim.memory is not None and not self.cgroup and _out_of_memory(stderr):
            return f"memory limit {format_size(lim.memory)} exceeded (an allocation failed under RLIMIT_DATA)"
        return ""

    def kill(self) -> None:
        """Every process of the attempt, wherever it moved in the process tree (cgroup mode)."""
        if not self.cgroup:
            return
        try:
            _write(os.path.join(self.cgroup, "cgroup.kill"), "1")
        except FileNotFoundError:  # before Linux 5.14
            for _ in range(5):
                pids = _pids(self.cgroup)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
        except OSError as e:
            log.warning("cannot kill cgroup %s: %s", self.cgroup, e)

    def close(self) -> None:
        """Kill what is left and remove the cgroup (waiting briefly for the dead to leave it)."""
        if self._procs_fd >= 0:
            os.close(self._procs_fd)
            self._procs_fd = -1
        if not self.cgroup:
            return
        self.kill()
        deadline = time.monotonic() + _REMOVE_WAIT
        while True:
            try:
                os.rmdir(self.cgroup)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("cannot remove cgroup %s: %s", self.cgroup, e)
                    break
                time.sleep(0.01)
        self.cgroup = ""

    def _remove_now(self) -> None:
        if self._procs_fd >= 0:
            os.close(self._procs_fd)
            self._procs_fd = -1
        with contextlib.suppress(OSError):
            os.rmdir(self.cgroup)


def rlimits(lim: Limits, memory: bool = True) -> list[tuple[int, tuple[int, int]]]:
    """The (resource, (soft, hard)) pairs for ``lim``; ``memory`` False when a cgroup bounds it."""
    out = []
    if lim.cpu is not None:
        seconds = max(1, int(lim.cpu + 0.999))
        out.append((resource.RLIMIT_CPU, (seconds, seconds + 1)))  # SIGXCPU, then SIGKILL a second later
    if lim.file_size is not None:
        out.append((resource.RLIMIT_FSIZE, (lim.file_size, lim.file_size)))
    if memory and lim.memory is not None:
        out.append((resource.RLIMIT_DATA, (lim.memory, lim.memory)))
    return out


def _preexec(procs_fd: int, limits: list[tuple[int, tuple[int, int]]]) -> Callable[[], None]:
    def run() -> None:
        if procs_fd >= 0:
            os.write(procs_fd, b"0")
        for which, value in limits:
            resource.setrlimit(which, value)

    return run


def _pids(cgroup: str) -> list[int]:
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def count_session(session: int) -> int:
    """Processes whose session is ``session``: what a task started (but not what called setsid).

    One pass over /proc counts every session at once, and the count is reused for half a poll:
    the watchdogs of all tasks share one scan, not one each (15 tasks scanning 5 times a second
    cost an executor a tenth of a core)."""
    global _census_at, _census
    with _census_lock:
        now = time.monotonic()
        if now - _census_at >= PROCESS_POLL / 2:
            _census, _census_at = _count_sessions(), now
        return _census.get(str(session).encode(), 0)


_census_lock = threading.Lock()
_census_at = -math.inf
_census: dict[bytes, int] = {}


def _count_sessions() -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return counts
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split(b" ", 4)
        if len(fields) > 3:
            counts[fields[3]] = counts.get(fields[3], 0) + 1
    return counts


_OOM_MARKS = ("MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc")


def _out_of_memory(stderr: str) -> bool:
    return any(m in stderr for m in _OOM_MARKS)

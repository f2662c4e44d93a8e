"""Process helpers: children that die with their parent, and free loopback ports."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import socket
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def free_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 right now (all held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """A port free on 127.0.0.1 right now (another process may still take it before etcd binds it)."""
    return free_ports(1)[0]


@functools.cache
def _load_libc() -> ctypes.CDLL | None:
    """libc for prctl, loaded in the parent: dlopen after fork in a threaded process can deadlock."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _die_with_parent(libc: ctypes.CDLL | None, parent_pid: int) -> Callable[[], None]:
    """Build a preexec_fn asking the kernel to SIGKILL the child when its parent thread dies."""

    def preexec() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn for any child (masters and executors in tests too) that must die with us."""
    return _die_with_parent(_load_libc(), os.getpid())

"""``--run-as USER``: tasks run as another user than the executor (which must be root to do it).

A task then cannot read the executor's files (its token, its TLS key, other attempts' logs) nor
signal or trace the executor. Its scratch dirs live under ``<work-dir>/tasks``, owned by that user;
the work dir itself only lets it pass through.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rota.common.config import ConfigError


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


_current: RunAs | None = None


def resolve(user: str) -> RunAs:
    """The user named (or numbered) ``user``; ConfigError when unknown or when we are not root."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise ConfigError(f"--run-as {user!r}: no such user on this host") from None
    if entry.pw_uid == 0:
        raise ConfigError("--run-as must name a user other than root")
    if os.geteuid() != 0:
        raise ConfigError("--run-as needs the executor to run as root (it switches to that user per task)")
    groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/")


def set_current(identity: RunAs | None) -> None:
    global _current
    _current = identity


def current() -> RunAs | None:
    return _current


def task_root(work_dir: str) -> str:
    """Where tasks get their scratch dirs: the work dir itself, or with --run-as ``<work-dir>/tasks``,
    root's, which the user may pass through but not change (so it cannot swap an entry the
    executor is about to give it for a link elsewhere). The work dir, too, lets others pass only."""
    me = _current
    if me is None:
        return work_dir
    root = os.path.join(work_dir, "tasks")
    os.makedirs(root, exist_ok=True)
    if os.path.islink(root):
        raise ConfigError(f"{root} is a symbolic link: the executor makes that folder itself")
    os.chown(root, 0, 0)
    os.chmod(root, 0o711)
    os.chmod(work_dir, 0o711)
    for shared in ("shared", "go-cache"):
        path = os.path.join(root, shared)
        os.makedirs(path, mode=0o700, exist_ok=True)
        own(path)
    return root


def shared_root(work_dir: str) -> str:
    """The folder of kinds that make no dir per attempt (``call`` workers keep theirs in it): with
    --run-as the user's own, in ``task_root``."""
    return work_dir if _current is None else os.path.join(work_dir, "tasks", "shared")


def _may_execute(me: RunAs, st: os.stat_result) -> bool:
    """Whether ``me`` has the x bit of a file or folder (search, for a folder)."""
    if st.st_uid == me.uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == me.gid or st.st_gid in me.groups:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def cannot_run(program: str) -> str | None:
    """Why the run-as user could not start ``program`` (the executor's Python, which python and
    call tasks run), or None when it can: an interpreter under /root (pyenv) is the usual case."""
    me = _current
    if me is None:
        return None
    path = os.path.realpath(program)
    if not _may_execute(me, os.stat(path)):
        return f"{me.name} may not execute {path}"
    # Both ways to it: a venv's bin (whose site-packages the task needs too) and the real file.
    for start in dict.fromkeys((os.path.abspath(program), path)):
        folder = os.path.dirname(start)
        while True:
            if not _may_execute(me, os.stat(folder)):
                return f"{me.name} cannot pass through {folder} to reach {start}"
            if os.path.dirname(folder) == folder:
                break
            folder = os.path.dirname(folder)
    return None


def check_reach(work_dir: str) -> None:
    """ConfigError unless the user can pass through every folder above ``work_dir`` (a work dir
    under /root, say, would fail every task with "permission denied")."""
    me = _current
    if me is None:
        return
    path = os.path.dirname(os.path.abspath(work_dir))
    while True:
        if not _may_execute(me, os.stat(path)):
            raise ConfigError(
                f"--run-as {me.name}: {me.name} cannot pass through {path} to reach --work-dir {work_dir} "
                "(give others search permission, chmod o+x, or choose another --work-dir)"
            )
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def own(path: str) -> None:
    """Give a scratch dir made by the executor to the task's user: through a descriptor opened
    without following links, so a link put in its place is never what changes hands."""
    if _current is None:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, _current.uid, _current.gid)
    finally:
        os.close(fd)


def child_options() -> dict[str, Any]:
    """What asyncio.create_subprocess_exec takes to start a task as the user (none without --run-as)."""
    me = _current
    if me is None:
        return {}
    return {"user": me.uid, "group": me.gid, "extra_groups": list(me.groups)}


def task_env(env: Mapping[str, str]) -> dict[str, str]:
    """The user's own HOME, USER and LOGNAME in place of the executor's."""
    me = _current
    if me is None:
        return dict(env)
    return {**env, "HOME": me.home, "USER": me.name, "LOGNAME": me.name}


def drop(identity: RunAs | None) -> None:
    """Become the user for good (in a call worker, before it runs any task's code)."""
    if identity is None:
        return
    os.setgroups(list(identity.groups))
    os.setgid(identity.gid)
    os.setuid(identity.uid)

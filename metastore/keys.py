"""Rota's key layout in etcd. Every key lives under one root; docs/keys.md describes it."""

ROOT = b"/rota/"

#: The leader key: {"name", "addr"} under the leader's lease; its create revision is the fencing token.
LEADER = ROOT + b"leader"

#: One persistent key per master that ever joined: {"name", "addr"}.
MASTERS = ROOT + b"masters/"

#: One key per live executor, under that executor's lease.
EXECUTORS = ROOT + b"executors/"


def master(name: str) -> bytes:
    return MASTERS + name.encode()


def executor(executor_id: str) -> bytes:
    return EXECUTORS + executor_id.encode()

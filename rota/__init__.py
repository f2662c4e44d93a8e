"""Rota, a high-availability task scheduler: the public Python API.

``from rota import Client`` (blocking) or ``AsyncClient`` (awaitable) submits and watches jobs; the
programs live in ``rota.scheduler`` (bin/master), ``rota.executor`` (bin/executor) and
``rota.client`` (bin/master-client). Inside a running task, ``rota.task`` keeps a checkpoint and
reports progress (standard library only). Every part of Rota imports ``rota.common`` first (below), so the
process-wide gRPC settings hold in every program and in user code alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import rota.common  # noqa: F401  (process-wide gRPC settings, before grpc is imported)

if TYPE_CHECKING:
    from rota.client.api import AsyncClient, Client
    from rota.client.errors import NoMasterReachable, OutOfSpace, RequestError

__all__ = ["AsyncClient", "Client", "NoMasterReachable", "OutOfSpace", "RequestError"]


def __getattr__(name: str) -> Any:
    """Load the client only when it is asked for: the executor and master never need it."""
    if name in ("Client", "AsyncClient"):
        from rota.client import api

        return getattr(api, name)
    if name in ("NoMasterReachable", "OutOfSpace", "RequestError"):
        from rota.client import errors

        return getattr(errors, name)
    if name == "task":
        import importlib

        return importlib.import_module("rota.task")
    raise AttributeError(f"module 'rota' has no attribute {name!r}")

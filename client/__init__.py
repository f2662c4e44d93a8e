"""Driving a cluster from outside: the Python API (``Client``, ``AsyncClient``), ``bin/master-client``
and the task-log lookup."""

from rota.client.api import AsyncClient, Client
from rota.client.errors import NoMasterReachable, RequestError

__all__ = ["AsyncClient", "Client", "NoMasterReachable", "RequestError"]

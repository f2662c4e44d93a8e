"""The standard gRPC health service (``grpc.health.v1``) and server reflection on every Rota gRPC
port, masters and executors alike: Kubernetes' gRPC probes and ``grpcurl`` speak these, not Rota's
own services.

Health answers without a token (a probe holds none, and a status reveals nothing); reflection shows
only the public schema of ``protos/rota.proto``, to any token holder (``common/roles.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

#: How often ``follow`` looks again: well under a probe's shortest period (1 s).
FOLLOW_EVERY = 0.25


class Health:
    """One status for the whole server (``""``, what a probe without a service name asks) and for
    each of its Rota ``services``: they stand or fall together."""

    def __init__(self, server: grpc.aio.Server, services: Sequence[str]) -> None:
        self.servicer = health.aio.HealthServicer()
        self.names = ("", *services)
        self._follower: asyncio.Task[None] | None = None
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    async def set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self.names:
            await self.servicer.set(name, status)

    def follow(self, serving: Callable[[], bool], every: float = FOLLOW_EVERY) -> None:
        """Keep the status at what ``serving()`` says (for a state that changes in many places)."""

        async def loop() -> None:
            last = None
            while True:
                now = serving()
                if now != last:
                    await self.set(now)
                    last = now
                await asyncio.sleep(every)

        self._follower = asyncio.create_task(loop(), name="health")

    async def stop(self) -> None:
        """NOT_SERVING for good: the server is going away, probes should stop sending to it."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.servicer.enter_graceful_shutdown()

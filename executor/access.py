"""Token checks on the executor's own port (task output, status), for a cluster that checks tokens.

An executor holds no token table: it asks a master who a caller's token is (WhoAmI, with that
token) and keeps the answer for a few seconds, so reading a task's logs costs one extra call at
most and a revoked token is refused here within ``KEEP`` seconds.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict

import grpc

from rota.common import roles, rpc
from rota.protos import rota_pb2, rota_pb2_grpc

#: How long an answer about a token is kept.
KEEP = 5.0
#: Tokens remembered at most (a flood of made-up tokens must not grow memory).
MAX_KEPT = 1000
ASK_TIMEOUT = 2.0


class TokenCheck:
    def __init__(self, masters: list[str], channels: rpc.ChannelPool) -> None:
        self.masters = masters
        self.channels = channels
        self._kept: OrderedDict[str, tuple[float, str | None, str]] = OrderedDict()

    async def role(self, header: str) -> tuple[str | None, str]:
        """The role of the token in ``header`` (None when refused) and the masters' reason."""
        now = time.monotonic()
        kept = self._kept.get(header)
        if kept is not None and now - kept[0] < KEEP:
            return kept[1], kept[2]
        role, why = await self._ask(header)
        self._kept[header] = (now, role, why)
        self._kept.move_to_end(header)
        while len(self._kept) > MAX_KEPT:
            self._kept.popitem(last=False)
        return role, why

    async def _ask(self, header: str) -> tuple[str | None, str]:
        last = "no master answered"
        for addr in self.masters:
            stub = rota_pb2_grpc.MasterStub(self.channels.get(addr))
            try:
                reply = await stub.WhoAmI(
                    rota_pb2.WhoAmIRequest(), metadata=(("authorization", header),), timeout=ASK_TIMEOUT
                )
            except grpc.aio.AioRpcError as e:
                if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    return None, e.details() or "refused"
                last = e.details() or e.code().name
                continue
            doc = json.loads(reply.json)
            return (str(doc["role"]) if "role" in doc else None), "the masters do not check tokens"
        return None, f"cannot check the token: {last}"


def gate(check: TokenCheck) -> rpc.Gate:
    """The interceptor of the executor's own port: task output and status need a read token."""
    return rpc.Gate(ExecutorAccess(check).refusal)


class ExecutorAccess:
    def __init__(self, check: TokenCheck) -> None:
        self.check = check

    async def refusal(self, details: grpc.HandlerCallDetails) -> tuple[grpc.StatusCode, str] | None:
        permission = roles.method_permission(details.method)
        if permission is None:
            return grpc.StatusCode.PERMISSION_DENIED, f"{details.method} is not a call this executor allows"
        if permission == roles.OPEN:
            return None
        header = rpc.header(details.invocation_metadata, "authorization")
        if not header or len(header) > 256:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "this cluster needs a token: send 'authorization: Bearer <token>'",
            )
        role, why = await self.check.role(header)
        if role is None:
            return grpc.StatusCode.UNAUTHENTICATED, why
        if not roles.allows(role, permission):
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"a {role} token may not call {details.method.rsplit('/', 1)[-1]}",
            )
        return None

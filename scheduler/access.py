"""Token checks on the master's gRPC service: every call's permission (``common/roles``) against
the role of the token in its ``authorization`` metadata, before the call's own code runs.

A refused call gets UNAUTHENTICATED (no token, a wrong or revoked one) or PERMISSION_DENIED (a role
that does not allow it) and runs nothing. The HTTP API calls this same service with the bearer token
it was given, so it is checked here too.
"""

from __future__ import annotations

from typing import Any

import grpc

from rota.common import roles, rpc
from rota.scheduler.token_store import Identity, TokenStore, Unauthenticated

AUTHORIZATION = "authorization"


def bearer(metadata: Any) -> str | None:
    return rpc.header(metadata, AUTHORIZATION)


async def refusal(store: TokenStore, method: str, header: str | None) -> tuple[grpc.StatusCode, str] | None:
    """Why a call to ``method`` with this ``authorization`` value is refused; None when allowed."""
    permission = roles.method_permission(method)
    if permission is None:
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not a call this cluster allows"
    if permission == roles.OPEN or not store.enabled:
        return None
    try:
        who = await store.identify_fresh(header)
    except Unauthenticated as e:
        return grpc.StatusCode.UNAUTHENTICATED, str(e)
    if not roles.allows(who.role, permission):
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"token {who.id} ({who.name}) has role {who.role!r}, which may not call {method.rsplit('/', 1)[-1]}",
        )
    return None


def caller(store: TokenStore, context: grpc.aio.ServicerContext) -> Identity | None:
    """Who makes this (already admitted) call; None when this master does not check tokens."""
    if not store.enabled:
        return None
    try:
        return store.identify(bearer(context.invocation_metadata()))
    except Unauthenticated:
        return None


def passed_on(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    """The caller's token, for a call forwarded to the leader (which checks it again)."""
    header = bearer(context.invocation_metadata())
    return ((AUTHORIZATION, header),) if header else ()


def gate(store: TokenStore) -> rpc.Gate:
    """The interceptor that checks every call's token against the role table."""

    async def check(details: grpc.HandlerCallDetails) -> tuple[grpc.StatusCode, str] | None:
        return await refusal(store, details.method, bearer(details.invocation_metadata))

    return rpc.Gate(check)

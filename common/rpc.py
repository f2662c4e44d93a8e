"""gRPC settings shared by every Rota process (masters, executors, clients).

Keepalive pings every second find a peer that stopped answering (SIGSTOP, a dead
host) on a connection that still looks open, so calls fail over instead of hanging;
servers must then accept pings that often.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from rota.common.tls import TlsFiles, channel_credentials, server_credentials

MAX_MESSAGE = 64 * 1024 * 1024

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Without these the client sends keepalive pings at most every 5 minutes.
    ("grpc.http2.min_time_between_pings_ms", 1000),
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]

SERVER_OPTIONS = [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]


def channel(addr: str, tls: TlsFiles | None = None, fresh: bool = False) -> grpc.aio.Channel:
    """A channel to ``addr``; with ``tls`` it shows our certificate and checks the peer's against
    the CA and the dialled host. ``fresh``: its own connection, never one shared with another
    channel of this process (a probe must not take an older connection's word for a peer)."""
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)] if fresh else CHANNEL_OPTIONS
    if tls is None:
        return grpc.aio.insecure_channel(addr, options=options)
    return grpc.aio.secure_channel(addr, channel_credentials(tls), options=options)


def server(interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS, interceptors=list(interceptors) or None)


#: Why a call is turned away (a status and a message), or None to let it through.
Refusal = Callable[[grpc.HandlerCallDetails], Awaitable[tuple[grpc.StatusCode, str] | None]]


class Gate(grpc.aio.ServerInterceptor):
    """Asks ``refusal`` about every call before its handler runs; a refused call gets only the
    refusal (the masters' and the executors' token checks)."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        refused = await self.refusal(details)
        return handler if refused is None else refusing(handler, *refused)


def header(metadata: Any, key: str) -> str | None:
    """One value of a call's metadata (``authorization``, say), or None."""
    for k, value in metadata or ():
        if k == key:
            return str(value)
    return None


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only refuses (what a server interceptor
    returns for a call it turns away before any of the call's own code runs)."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


def add_port(server: grpc.aio.Server, listen: str, tls: TlsFiles | None = None) -> bool:
    """Listen on ``listen`` (mTLS with ``tls``: clients without a certificate from the CA are
    refused); False when the port cannot be bound."""
    if tls is None:
        return bool(server.add_insecure_port(listen))
    return bool(server.add_secure_port(listen, server_credentials(tls)))


async def ready(ch: grpc.aio.Channel, timeout: float) -> bool:
    """True once ``ch`` is connected; False when it fails to connect or ``timeout`` passes first.

    A refused connection answers at once (TRANSIENT_FAILURE), so a dead peer costs no wait;
    a stopped one (it accepts TCP but never speaks) costs ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = ch.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        remaining = deadline - loop.time()
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE or remaining <= 0:
            return False
        try:
            await asyncio.wait_for(ch.wait_for_state_change(state), remaining)
        except asyncio.TimeoutError:
            return False
        state = ch.get_state(try_to_connect=True)
    return True


#: What gRPC says when a TLS handshake failed, or the peer closed the connection during one.
_TLS_SIGNS = ("Socket closed", "handshake", "CERTIFICATE", "certificate", "SSL")


async def failure(ch: grpc.aio.Channel, tls: TlsFiles | None) -> str:
    """Why ``ch`` does not connect, for an error message: gRPC's own reason (refused, a failed TLS
    handshake) when it has one, with a hint when TLS is the likely cause."""
    if ch.get_state() != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
        return "not answering"
    try:
        # Any call on a channel that failed to connect fails at once, carrying the reason.
        await ch.unary_unary("/rota.Probe/Why")(b"", timeout=1.0)
    except grpc.aio.AioRpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
            return explain(e.details() or e.code().name, tls)
    except Exception:
        pass
    return "not answering"


def explain(detail: str, tls: TlsFiles | None) -> str:
    """``detail`` with a hint when it looks like a TLS mismatch (a closed socket, a failed handshake)."""
    if not any(sign in detail for sign in _TLS_SIGNS):
        return detail
    if tls is None:
        return f"{detail} (if the cluster uses TLS, give --tls-ca, --tls-cert and --tls-key)"
    return (
        f"{detail} (TLS: the peer refused this certificate, e.g. from another CA or expired, "
        "or this side refused the peer's)"
    )


class ChannelPool:
    """One channel per address, opened on first use and kept: a channel owns its connection and its
    reconnect back-off, so opening one per call would pay a handshake each time."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        self.tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, addr: str) -> grpc.aio.Channel:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = channel(addr, self.tls)
        return ch

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)

"""The one HTTP port of every Rota program (``--http-addr``): ``/metrics`` everywhere, more on masters.

Program plumbing shared by the master and the executor, with no scheduling logic.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from rota.common.config import Address
from rota.common.tls import TlsFiles, server_context

#: The largest request body accepted (a job file is capped at 8 MiB; JSON is a little larger).
MAX_BODY = 16 * 1024 * 1024
#: How long a stopping program lets HTTP requests in flight finish.
SHUTDOWN_GRACE = 1.0


def new_app(registry: CollectorRegistry) -> web.Application:
    """An application that already serves ``GET /metrics`` from ``registry``."""
    app = web.Application(client_max_size=MAX_BODY)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
    return app


class HttpServerError(Exception):
    """The HTTP port could not be opened."""


async def start(app: web.Application, addr: Address, tls: TlsFiles | None = None) -> web.AppRunner:
    """Serve ``app`` on ``addr`` (https with ``tls``); stop it with ``await runner.cleanup()``."""
    ssl_context = server_context(tls) if tls is not None else None
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    try:
        await web.TCPSite(
            runner, addr.host or "0.0.0.0", addr.port, reuse_address=True, ssl_context=ssl_context
        ).start()
    except OSError as e:
        await runner.cleanup()
        raise HttpServerError(f"cannot serve HTTP on {addr}: {e.strerror or e}") from None
    return runner

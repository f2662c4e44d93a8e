"""What the master's HTTP port refuses before any handler runs: cross-site writes and DNS rebinding.

A web page the operator visits can send requests to the master, even on 127.0.0.1: a "simple"
cross-site POST (a ``text/plain`` body, no preflight) reaches the handler, and a page whose DNS name
is made to resolve to the master (DNS rebinding) can even read the answers. So:

- A request whose ``Host`` is a DNS name the master does not know as its own is refused (421): a
  rebinding page's requests carry the attacker's name. IP literals and ``localhost`` cannot be
  rebound and are always accepted; other names are the machine's own, the master's addresses, and
  ``--http-allowed-hosts``.
- A state-changing request (POST, PUT, PATCH, DELETE) that a browser marks as cross-site
  (``Origin`` naming another host and port, or ``Sec-Fetch-Site: cross-site``/``same-site``) is
  refused (403). Programs (curl, master-client) send no ``Origin`` and are not affected.
- A job is accepted only as ``application/json`` or ``application/toml`` (415 otherwise): the
  types a page cannot send without a CORS preflight, which the master never grants.

Pure functions: the aiohttp middleware in ``http_api`` only feeds them the headers.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

#: Content types a job may be posted as.
JOB_TYPES = ("application/json", "application/toml", "application/yaml")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Paths any Host may read: Prometheus scrapes by whatever name its configuration uses.
OPEN_PATHS = frozenset({"/metrics"})


def host_name(host: str) -> str:
    """The name part of a ``Host`` header value (``[::1]:80`` -> ``::1``), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        host = name
    return host if ":" in host else host.rstrip(".")  # "master.example." is "master.example"


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def own_names(extra: Iterable[str] = ()) -> frozenset[str]:
    """The DNS names this machine answers to, plus ``extra`` (addresses or names, any case)."""
    names = {"localhost"}
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower())
    for item in extra:
        if item:
            names.add(host_name(item))
    return frozenset(n for n in names if n and not is_ip(n))


def host_allowed(host: str, names: frozenset[str]) -> bool:
    name = host_name(host)
    return bool(name) and (is_ip(name) or name in names or name.endswith(".localhost"))


def refusal(
    method: str,
    path: str,
    host: str,
    origin: str | None,
    fetch_site: str | None,
    names: frozenset[str],
) -> tuple[int, str] | None:
    """(HTTP status, reason) when the request must be refused, else None."""
    if path not in OPEN_PATHS and not host_allowed(host, names):
        return 421, (
            f"Host {host!r} is not a name of this master (a DNS rebinding page?); reach it by its IP "
            "address, localhost, or a name given to the master with --http-allowed-hosts"
        )
    if method.upper() not in WRITES:
        return None
    if fetch_site in ("cross-site", "same-site"):
        return 403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
    if origin is not None:
        parts = urlsplit(origin)
        if origin == "null" or parts.netloc.lower() != host.strip().lower():
            return 403, f"cross-site request refused: Origin {origin!r} is not this master ({host})"
    return None


def job_type_refusal(content_type: str) -> str | None:
    """Why a job body of ``content_type`` is refused, or None."""
    if content_type in JOB_TYPES:
        return None
    shown = content_type or "none"
    return f"a job is posted as application/json, application/toml or application/yaml, not {shown} (set Content-Type)"

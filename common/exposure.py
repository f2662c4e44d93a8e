"""Secure unless told otherwise: a program that listens beyond loopback needs TLS and tokens, or
``--insecure`` to say that running open is meant (as CockroachDB asks of a node without certificates).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from rota.common.config import ConfigError


def loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only. A wildcard (empty, 0.0.0.0, ::) is
    every interface, so not."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name: it may name any interface


def check(
    listens: Sequence[tuple[str, str]], tls: bool, tokens: bool, insecure: bool, tokens_flag: str
) -> None:
    """Refuse (ConfigError, one line) to listen beyond loopback without TLS and tokens unless
    ``insecure``. ``listens`` are (flag, host:port or URL) pairs; ``tokens_flag`` names the flag
    that gives this program its token."""
    if insecure or (tls and tokens):
        return
    exposed = [(flag, where) for flag, where in listens if not loopback(_host(where))]
    if not exposed:
        return
    missing = " and ".join(
        part
        for part, have in (
            ("TLS (--tls-ca, --tls-cert, --tls-key)", tls),
            (f"a token ({tokens_flag})", tokens),
        )
        if not have
    )
    flag, where = exposed[0]
    raise ConfigError(
        f"{flag} {where} is reachable beyond this machine without {missing}: anyone who can reach it "
        "could run code on every executor; give them, or --insecure to run open anyway"
    )


def _host(where: str) -> str:
    rest = where.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest

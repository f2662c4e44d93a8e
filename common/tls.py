"""Mutual TLS for every Rota link: one CA, and one certificate and key per process.

gRPC ports (masters, executors) demand a client certificate from that CA; the HTTP port
serves https with the same certificate but asks browsers and curl for none (they
authenticate otherwise). gRPC checks the server's certificate against the dialled host, so
a certificate names every IP address and DNS name it is reached at.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import grpc

from rota.common.config import ConfigError

FLAGS = ("tls_ca", "tls_cert", "tls_key")
ENV = {"tls_ca": "ROTA_TLS_CA", "tls_cert": "ROTA_TLS_CERT", "tls_key": "ROTA_TLS_KEY"}
_MARKERS = {
    "ca": b"-----BEGIN CERTIFICATE-----",
    "cert": b"-----BEGIN CERTIFICATE-----",
    "key": b"PRIVATE KEY-----",
}


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate, this process's certificate and its private key (PEM)."""

    ca: str
    cert: str
    key: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        """The three files' bytes; ConfigError naming the file that is missing, unreadable or not PEM."""
        return (
            _read(self.ca, "--tls-ca", "ca"),
            _read(self.cert, "--tls-cert", "cert"),
            _read(self.key, "--tls-key", "key"),
        )

    def check(self) -> TlsFiles:
        """Read everything once at start-up, so a bad file is a usage error and not a failed link later."""
        self.read()
        try:
            server_context(self)
        except ssl.SSLError as e:
            raise ConfigError(
                f"--tls-cert {self.cert} and --tls-key {self.key} do not make a usable pair: {e}"
            ) from None
        return self


def _read(path: str, flag: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot read: {e.strerror or e}") from None
    if _MARKERS[what] not in data:
        kind = "a PEM private key" if what == "key" else "a PEM certificate"
        raise ConfigError(f"{flag} {path}: not {kind}")
    return data


def from_options(o: Mapping[str, Any]) -> TlsFiles | None:
    """TlsFiles from the parsed ``--tls-ca/--tls-cert/--tls-key`` (all three or none), checked."""
    given = {k: o.get(k) for k in FLAGS}
    if not any(given.values()):
        return None
    missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if not v]
    if missing:
        raise ConfigError(
            f"TLS needs --tls-ca, --tls-cert and --tls-key together; missing {', '.join(missing)}"
        )
    return TlsFiles(str(given["tls_ca"]), str(given["tls_cert"]), str(given["tls_key"])).check()


F = TypeVar("F", bound=Callable[..., Any])


def tls_options(env: bool = False) -> Callable[[F], F]:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` (also TOML keys; with ``env``, $ROTA_TLS_*)."""
    helps = {
        "tls_ca": "PEM file of the CA whose certificates this process trusts (mutual TLS)",
        "tls_cert": "PEM file of this process's certificate, signed by the CA",
        "tls_key": "PEM file of that certificate's private key",
    }

    def decorate(fn: F) -> F:
        for name in reversed(FLAGS):
            suffix = f" [env: {ENV[name]}]" if env else ""
            fn = click.option(
                f"--{name.replace('_', '-')}",
                default=None,
                envvar=ENV[name] if env else None,
                metavar="FILE",
                help=f"{helps[name]}; give all three --tls-* or none.{suffix}",
            )(fn)
        return fn

    return decorate


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """mTLS: the server shows its certificate and refuses a client without one from the CA."""
    ca, cert, key = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def server_context(tls: TlsFiles) -> ssl.SSLContext:
    """The HTTP port's https: the node certificate, no client certificate asked for."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # An encrypted key would make OpenSSL prompt on the terminal: refuse it instead.
    ctx.load_cert_chain(tls.cert, tls.key, password=_no_password)
    return ctx


def _no_password() -> bytes:
    raise ConfigError("TLS private keys must not be encrypted (give the key without a passphrase)")


def client_context(tls: TlsFiles | None = None, ca: str | None = None) -> ssl.SSLContext:
    """An https client trusting the CA (``tls.ca`` or ``ca``), showing ``tls``'s certificate if given
    (etcd's ports ask for one)."""
    ctx = ssl.create_default_context(cafile=tls.ca if tls else ca)
    if tls is not None:
        ctx.load_cert_chain(tls.cert, tls.key, password=_no_password)
    return ctx

"""Building a development CA and node certificates (``master-client certs create``).

Pure functions over the ``cryptography`` package: nothing here touches files but
``write_pem``, so tests make odd certificates (another CA, an expired one) directly.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rota.common.config import ConfigError

DEFAULT_DAYS = 365
MAX_DAYS = 100 * 365
CA_FILES = ("ca.pem", "ca-key.pem")
NODE_FILES = ("node.pem", "node-key.pem")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _check_days(days: int) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise ConfigError(f"--days must be from 1 to {MAX_DAYS}, got {days}")


def make_ca(days: int = DEFAULT_DAYS, name: str = "Rota development CA") -> KeyPair:
    """A self-signed CA that may sign node certificates and nothing under them."""
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def parse_hosts(hosts: str | list[str]) -> list[str]:
    """``a,b,c`` into a list of IP addresses and DNS names, checked."""
    items = [h.strip() for h in (hosts.split(",") if isinstance(hosts, str) else hosts) if h.strip()]
    if not items:
        raise ConfigError("--hosts: give at least one IP address or DNS name (e.g. 127.0.0.1,localhost)")
    for h in items:
        if _ip(h) is None and not all(part and part.replace("-", "").isalnum() for part in h.split(".")):
            raise ConfigError(f"--hosts: {h!r} is neither an IP address nor a DNS name")
    return items


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def make_cert(
    ca: KeyPair,
    hosts: list[str],
    days: int = DEFAULT_DAYS,
    not_before: datetime.datetime | None = None,
) -> KeyPair:
    """A node certificate signed by ``ca``, good for both ends of a link (server and client auth),
    naming ``hosts`` as IP and DNS subject alternative names. ``not_before`` (default now) lets
    tests make one that has already expired."""
    _check_days(days)
    hosts = parse_hosts(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - datetime.timedelta(minutes=5)
    names: list[x509.GeneralName] = []
    for h in hosts:
        ip = _ip(h)
        names.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def load_ca(ca_dir: str) -> KeyPair:
    """The CA that ``certs create`` wrote to ``ca_dir`` (ca.pem, ca-key.pem)."""
    cert_path, key_path = (os.path.join(ca_dir, f) for f in CA_FILES)
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError as e:
        raise ConfigError(f"--ca-dir {ca_dir}: no {os.path.basename(str(e.filename))}") from None
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"--ca-dir {ca_dir}: cannot load the CA: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"--ca-dir {ca_dir}: {CA_FILES[1]} is not an EC key made by certs create")
    if cert.public_key() != key.public_key():
        raise ConfigError(f"--ca-dir {ca_dir}: {CA_FILES[0]} and {CA_FILES[1]} do not belong together")
    return KeyPair(cert, key)


def write_files(out: str, files: dict[str, tuple[bytes, bool]]) -> list[str]:
    """Write ``name -> (data, secret)`` under ``out`` (secret files 0600), refusing to overwrite any."""
    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in files}
    taken = [p for p in paths.values() if os.path.lexists(p)]
    if taken:
        raise ConfigError(f"--out {out}: refusing to overwrite {', '.join(taken)}")
    for name, (data, secret) in files.items():
        fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return list(paths.values())


def create(out: str, hosts: list[str], days: int = DEFAULT_DAYS, ca_dir: str | None = None) -> list[str]:
    """``certs create``: a new CA (or the one in ``ca_dir``) and one node certificate, into ``out``."""
    hosts = parse_hosts(hosts)
    _check_days(days)
    files: dict[str, tuple[bytes, bool]] = {}
    if ca_dir is None:
        ca = make_ca(days)
        files[CA_FILES[0]] = (ca.cert_pem(), False)
        files[CA_FILES[1]] = (ca.key_pem(), True)
    else:
        ca = load_ca(ca_dir)
        if os.path.realpath(ca_dir) != os.path.realpath(out):
            files[CA_FILES[0]] = (ca.cert_pem(), False)
    node = make_cert(ca, hosts, days)
    files[NODE_FILES[0]] = (node.cert_pem(), False)
    files[NODE_FILES[1]] = (node.key_pem(), True)
    return write_files(out, files)

"""API tokens: their text form, how they are made, and the hash a master stores instead of them.

A token reads ``rota_<id>_<secret>``: the id names its record (masters look it up without a scan),
the secret is 32 random bytes. Masters keep only a SHA-256 of the secret: the secret is random and
long, so a fast hash is enough (no password stretching), and a leaked etcd copy grants nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "rota_"
#: The longest text accepted where a token is expected (a header, a file): bounded before parsing.
MAX_TOKEN_TEXT = 200
#: The longest name a token may carry (who or what it is for).
MAX_NAME = 64

_TOKEN_RE = re.compile(r"rota_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}")
_ID_RE = re.compile(r"[0-9a-f]{12}")


class BadToken(ValueError):
    """Text that is not a Rota token."""


@dataclass(frozen=True)
class Token:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.id}_{self.secret}"


def generate() -> Token:
    return Token(secrets.token_hex(6), secrets.token_urlsafe(32))


def parse(text: str) -> Token:
    """The token in ``text`` (surrounding white space allowed); BadToken when it is not one."""
    if len(text) > MAX_TOKEN_TEXT:
        raise BadToken(f"a token is {MAX_TOKEN_TEXT} characters at most")
    m = _TOKEN_RE.fullmatch(text.strip())
    if m is None:
        raise BadToken("not a Rota token (expected rota_<12 hex digits>_<43 characters>)")
    return Token(m.group(1), m.group(2))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(token: Token, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(token.secret), stored_digest)


def validate_id(token_id: str) -> str:
    if not _ID_RE.fullmatch(token_id):
        raise BadToken(f"malformed token id {token_id!r}: expected 12 hex digits")
    return token_id


def validate_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise BadToken(
            f"bad token name {name!r}: 1-{MAX_NAME} characters of A-Z a-z 0-9 _ . @ - starting with a letter or digit"
        )
    return name


def read_file(path: str) -> Token:
    """The token kept in a file (its first line); BadToken naming the file when it holds none."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_TOKEN_TEXT + 2)
    except OSError as e:
        raise BadToken(f"cannot read token file {path}: {e.strerror or e}") from None
    try:
        return parse(text.strip().splitlines()[0] if text.strip() else "")
    except BadToken as e:
        raise BadToken(f"token file {path}: {e}") from None

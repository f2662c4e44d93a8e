"""What an executor may claim of itself: the bounds its hello is held to.

The leader trusted a hello: one Attach with ``slots = 2**31`` took every pending task, a huge TTL
kept a dead executor's tasks for ever, and an unchecked name or address went into etcd keys and was
dialled by clients. The executor checks its own flags against the same bounds at start, so a bad
setting is a usage error there, not a refusal later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from rota.common.config import ConfigError, parse_address

MAX_SLOTS = 1024
MIN_TTL = 1.0
MAX_TTL = 300.0
MAX_KINDS = 64
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_ADDR = 255
#: Attempts a re-attaching executor may report (running, queued, or finished and unacknowledged).
MAX_REPORTED = 100_000

#: A name leaves room for the id the leader makes of it: ``<name>-<6 hex digits>``.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,92}")
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_KIND_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class BadHello(ValueError):
    """A hello (or an executor's own flags) out of bounds; the message names the field."""


def check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise BadHello(
            f"executor name {name!r}: expected 1-93 characters of A-Z a-z 0-9 _ . - not starting with '.' or '-'"
        )


def check_hello(
    name: str,
    addr: str,
    slots: int,
    ttl: float,
    kinds: Iterable[str],
    labels: Mapping[str, str],
    reported: int = 0,
    executor_id: str = "",
) -> None:
    """Raise BadHello naming the first field out of bounds."""
    check_name(name)
    if not 1 <= slots <= MAX_SLOTS:
        raise BadHello(f"slots must be from 1 to {MAX_SLOTS}, got {slots}")
    if ttl and not MIN_TTL <= ttl <= MAX_TTL:  # 0: the leader's default
        raise BadHello(f"keepalive TTL must be from {MIN_TTL:g}s to {MAX_TTL:g}s, got {ttl:g}s")
    if len(addr) > MAX_ADDR:
        raise BadHello(f"address is {len(addr)} characters, at most {MAX_ADDR}")
    try:
        parsed = parse_address(addr)
    except ConfigError as e:
        raise BadHello(f"address: {e}") from None
    if not parsed.host or parsed.host in ("0.0.0.0", "::"):
        raise BadHello(f"address {addr!r} must name a host others can reach, not a wildcard")
    kinds = list(kinds)
    if not kinds or len(kinds) > MAX_KINDS:
        raise BadHello(f"an executor offers 1 to {MAX_KINDS} kinds, got {len(kinds)}")
    for kind in kinds:
        if not _KIND_RE.fullmatch(kind):
            raise BadHello(f"kind {kind!r}: expected 1-64 characters of A-Z a-z 0-9 _ . -")
    if len(labels) > MAX_LABELS:
        raise BadHello(f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
            raise BadHello(
                f"label {key[:80]!r}: keys are 1 to {MAX_LABEL_KEY} characters, values at most {MAX_LABEL_VALUE}"
            )
    if reported > MAX_REPORTED:
        raise BadHello(f"at most {MAX_REPORTED} attempts may be reported at once, got {reported}")
    if executor_id and not _ID_RE.fullmatch(executor_id):
        raise BadHello(f"executor id {executor_id[:120]!r} is malformed")

"""API tokens as every master holds them: the records in etcd, watched, so checking a token costs
a dict lookup and a hash, and a revoke reaches every master within a watch round trip.

A master started with ``--admin-token-file`` also accepts that bootstrap token as an admin; it is
never written to etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rota.common import roles, tokens
from rota.metastore import keys
from rota.metastore.client import EtcdClient, EtcdError, WatchCompacted, create_revision_is, put_op

log = logging.getLogger("rota.tokens")

#: The most tokens a cluster keeps: each is held by every master.
MAX_TOKENS = 10_000
#: Reads of etcd per second for token ids this master has not seen (one made a moment ago on
#: another master, before the watch brought it here); made-up ids beyond that are refused unread.
MISS_READS_PER_S = 20


@dataclass(frozen=True)
class Identity:
    """Who a call comes from: its token's id, role and name."""

    id: str
    role: str
    name: str

    def doc(self) -> dict[str, str]:
        return {"id": self.id, "role": self.role, "name": self.name}


class Unauthenticated(Exception):
    """No token, or one this cluster does not know (wrong, revoked, malformed)."""


class TokenError(ValueError):
    """A bad token request (role, name, id): INVALID_ARGUMENT."""


class TooManyTokens(Exception):
    pass


class TokenStore:
    def __init__(self, client: EtcdClient, bootstrap: tokens.Token | None) -> None:
        self.client = client
        self.bootstrap = bootstrap
        self._bootstrap_digest = tokens.digest(bootstrap.secret) if bootstrap else ""
        self.records: dict[str, dict[str, Any]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._miss_window = (0.0, 0)
        #: Called with a token's id when it is revoked (here or on another master).
        self.on_revoke: list[Callable[[str], None]] = []

    @property
    def enabled(self) -> bool:
        """Whether this master checks tokens."""
        return self.bootstrap is not None

    async def start(self) -> None:
        """Load every token, then follow changes (before the first call is answered)."""
        revision = await self._load()
        self._watcher = asyncio.create_task(self._watch(revision), name="token-watch")

    async def stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def _load(self) -> int:
        kvs, revision = await self.client.get_prefix(keys.TOKENS)
        records = {}
        for kv in kvs:
            with contextlib.suppress(ValueError):
                rec = json.loads(kv.value)
                records[keys.token_id(kv.key)] = rec
        self.records = records
        return revision + 1

    async def _watch(self, start: int) -> None:
        while True:
            try:
                async for events in self.client.watch(keys.TOKENS, start, prefix=True):
                    for e in events:
                        start = e.kv.mod_revision + 1
                        tid = keys.token_id(e.kv.key)
                        if e.type == "delete":
                            self.records.pop(tid, None)
                            self._revoked(tid)
                        else:
                            with contextlib.suppress(ValueError):
                                self.records[tid] = json.loads(e.kv.value)
            except WatchCompacted:
                before = set(self.records)
                while True:
                    try:
                        start = await self._load()
                        # Deletes in the compacted history were revokes too.
                        for tid in before - set(self.records):
                            self._revoked(tid)
                        break
                    except EtcdError as e:
                        log.warning("cannot list tokens yet: %s", e)
                        await asyncio.sleep(0.5)

    def identify(self, header: str | None) -> Identity:
        """The identity an ``authorization`` value (``Bearer <token>``) proves; Unauthenticated
        saying why otherwise (never which part of a token was wrong)."""
        if not header:
            raise Unauthenticated("this cluster needs a token: send 'authorization: Bearer <token>'")
        scheme, _, text = header.partition(" ")
        if scheme.lower() != "bearer" or not text:
            raise Unauthenticated("the authorization header must read 'Bearer <token>'")
        try:
            token = tokens.parse(text)
        except tokens.BadToken as e:
            raise Unauthenticated(str(e)) from None
        if self.bootstrap is not None and token.id == self.bootstrap.id:
            if tokens.matches(token, self._bootstrap_digest):
                return Identity(token.id, roles.ADMIN, "bootstrap")
            raise Unauthenticated("unknown or revoked token")
        rec = self.records.get(token.id)
        if rec is None or not tokens.matches(token, str(rec.get("digest", ""))):
            raise Unauthenticated("unknown or revoked token")
        return Identity(token.id, str(rec.get("role", "")), str(rec.get("name", "")))

    async def identify_fresh(self, header: str | None) -> Identity:
        """``identify``, reading etcd once for a well-formed token id this master has not seen yet."""
        try:
            return self.identify(header)
        except Unauthenticated:
            token = _token_in(header)
            if token is None or token.id in self.records or not self._may_read():
                raise
        with contextlib.suppress(EtcdError):
            kv = await self.client.get(keys.token(token.id))
            if kv is not None:
                with contextlib.suppress(ValueError):
                    self.records.setdefault(token.id, json.loads(kv.value))
        return self.identify(header)

    def _may_read(self) -> bool:
        now = time.monotonic()
        start, count = self._miss_window
        if now - start >= 1.0:
            start, count = now, 0
        self._miss_window = (start, count + 1)
        return count < MISS_READS_PER_S

    async def create(self, role: str, name: str, by: str) -> tuple[tokens.Token, dict[str, Any]]:
        if role not in roles.ROLES:
            raise TokenError(f"unknown role {role!r}: expected one of {', '.join(roles.ROLES)}")
        try:
            tokens.validate_name(name)
        except tokens.BadToken as e:
            raise TokenError(str(e)) from None
        if len(self.records) >= MAX_TOKENS:
            raise TooManyTokens(f"this cluster already has {MAX_TOKENS} tokens: revoke some first")
        while True:
            token = tokens.generate()
            rec = {
                "id": token.id, "role": role, "name": name, "digest": tokens.digest(token.secret),
                "created": time.time(), "by": by,
            }  # fmt: skip
            result = await self.client.txn(
                [create_revision_is(keys.token(token.id), 0)],
                [put_op(keys.token(token.id), json.dumps(rec).encode())],
            )
            if result.succeeded:
                self.records[token.id] = rec
                return token, public(rec)

    def _revoked(self, token_id: str) -> None:
        for hook in self.on_revoke:
            hook(token_id)

    def list(self) -> list[dict[str, Any]]:
        return sorted((public(r) for r in self.records.values()), key=lambda r: (r["created"], r["id"]))

    async def revoke(self, token_id: str) -> dict[str, Any] | None:
        """Delete a token; its record as it was, None when there is no such token."""
        try:
            tokens.validate_id(token_id)
        except tokens.BadToken as e:
            raise TokenError(str(e)) from None
        kv = await self.client.get(keys.token(token_id))
        if kv is None:
            return None
        await self.client.delete(keys.token(token_id))
        self.records.pop(token_id, None)
        self._revoked(token_id)
        return public(json.loads(kv.value))


def _token_in(header: str | None) -> tokens.Token | None:
    scheme, _, text = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        return tokens.parse(text)
    except tokens.BadToken:
        return None


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """A token record without its digest: what list and create show."""
    return {k: rec.get(k) for k in ("id", "role", "name", "created", "by")}

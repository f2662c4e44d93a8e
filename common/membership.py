"""Online membership (``master-client member``): the checks on names and peer URLs, and when adding
or removing a member would cost the cluster its quorum. Pure logic: the masters apply it to what
etcd says of its members, the client to what the user typed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from rota.common.config import ConfigError, parse_address

#: A master's name (``bin/master --name``), which is also its etcd member's name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
MAX_NAME = 64
#: An etcd member id as ``member list`` prints it.
ID_RE = re.compile(r"^[0-9a-f]{1,16}$")


class Member(Protocol):
    """What the checks need of one etcd member."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def peer_urls(self) -> Sequence[str]: ...
    @property
    def started(self) -> bool: ...
    @property
    def healthy(self) -> bool: ...


def check_name(name: str) -> str:
    """A master name, or ValueError saying what is wrong with it."""
    if not name:
        raise ValueError("name the member (its master's --name)")
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        raise ValueError(
            f"bad member name {name[:80]!r}: 1-{MAX_NAME} of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (the new master's --name)"
        )
    return name


def check_peer_url(url: str, scheme: str | None = None) -> str:
    """A peer URL ``http(s)://host:port`` others can dial (no wildcard host, no path), in ``scheme``
    when given (every member of a cluster speaks the same); ValueError otherwise."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"bad peer URL {url[:200]!r}: expected http://host:port or https://host:port")
    try:
        addr = parse_address(text)
    except ConfigError as e:
        raise ValueError(f"bad peer URL: {e}") from None
    if addr.host in ("", "0.0.0.0", "::"):
        raise ValueError(f"bad peer URL {url!r}: name the new master's own address, not a wildcard")
    if scheme and parts.scheme != scheme:
        raise ValueError(
            f"bad peer URL {url!r}: this cluster's members speak {scheme}:// "
            f"({'with' if scheme == 'https' else 'without'} --tls-*)"
        )
    host = f"[{addr.host}]" if ":" in addr.host else addr.host
    return f"{parts.scheme}://{host}:{addr.port}"


def quorum(size: int) -> int:
    """Members that must agree in a cluster of ``size``."""
    return size // 2 + 1


def find(members: Sequence[Member], name_or_id: str) -> Member | None:
    """The member of that name, else of that id (hex, as ``member list`` prints it)."""
    for m in members:
        if m.name and m.name == name_or_id:
            return m
    if ID_RE.match(name_or_id.lower()):
        wanted = int(name_or_id, 16)
        for m in members:
            if m.id == wanted:
                return m
    return None


def _label(m: Member) -> str:
    return m.name or f"{m.id:x} (not started, {','.join(m.peer_urls)})"


def removal_refusal(members: Sequence[Member], target_id: int) -> str | None:
    """Why removing member ``target_id`` must be refused, or None: never the last member, and never
    when the members left that answer could not make a quorum of the cluster left."""
    if len(members) <= 1:
        return "refusing to remove the last member: the cluster would have no etcd left"
    rest = [m for m in members if m.id != target_id]
    healthy = [m for m in rest if m.healthy]
    need = quorum(len(rest))
    if len(healthy) < need:
        down = ", ".join(_label(m) for m in rest if not m.healthy)
        return (
            f"refusing to remove it: the {len(rest)} members left need {need} healthy for a quorum and only "
            f"{len(healthy)} answer (not answering: {down}); bring those back or remove them first"
        )
    return None


def addition_refusal(members: Sequence[Member]) -> str | None:
    """Why adding a member must be refused, or None. A member that was added but never started
    must be started (or removed) first; and until the new one starts, the members that answer must
    make a quorum of the bigger cluster, or etcd stops answering while it joins (a single healthy
    member excepted: it stops answering until the second one starts)."""
    pending = [m for m in members if not m.started]
    if pending:
        return (
            f"member {_label(pending[0])} was added but never started: start its master "
            "(or remove it with 'member remove ID') before adding another"
        )
    healthy = [m for m in members if m.healthy]
    need = quorum(len(members) + 1)
    # One healthy member alone may grow (etcd allows it too): the cluster waits for the second to
    # start, which is the only way a single master or the survivor of a pair gets company.
    if len(healthy) < need and not (len(members) == 1 and healthy):
        down = ", ".join(_label(m) for m in members if not m.healthy)
        return (
            f"refusing to add a member: {len(members) + 1} members need {need} healthy for a quorum while "
            f"the new one starts, and only {len(healthy)} answer (not answering: {down}); "
            "remove the dead members first (member remove NAME), then add their replacements"
        )
    return None


def duplicate(members: Sequence[Member], name: str, peer_url: str) -> str | None:
    """Why a new member of this name and peer URL clashes with one there is, or None."""
    for m in members:
        if m.name == name:
            return f"a member named {name!r} exists already ({','.join(m.peer_urls)}); pick another name"
        if peer_url in m.peer_urls:
            return f"member {_label(m)} has peer URL {peer_url} already"
    return None


def initial_cluster(members: Sequence[Member], new_id: int, new_name: str) -> str:
    """``--initial-cluster`` for the member just added: every member as name=peer-url."""
    return ",".join(f"{new_name if m.id == new_id else m.name}={url}" for m in members for url in m.peer_urls)


def master_flags(name: str, peer_url: str, cluster: str) -> list[str]:
    """The flags the new master is started with, besides its own addresses, TLS files and token."""
    return [
        "--name", name, "--peer-urls", peer_url, "--advertise-peer-urls", peer_url,
        "--initial-cluster", cluster, "--initial-cluster-state", "existing",
    ]  # fmt: skip

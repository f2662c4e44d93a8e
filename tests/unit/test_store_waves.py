"""How one commit of the leader is cut into etcd transactions (scheduler.store._waves). No I/O."""

from __future__ import annotations

from rota.metastore import keys
from rota.scheduler.store import MAX_OPS, _waves


def key_of(op) -> bytes:
    return op.request_put.key or op.request_delete_range.key


def test_one_transaction_when_it_fits_barrier_records_last_when_split() -> None:
    small = {keys.checkpoint("j", 0): b"c", keys.barrier("j", "ddl"): b"{}"}
    assert [[[key_of(op) for op in b] for b in wave] for wave in _waves(small)] == [
        [[keys.checkpoint("j", 0), keys.barrier("j", "ddl")]]
    ]
    big: dict[bytes, bytes | None] = {keys.checkpoint("j", i): b"c" for i in range(MAX_OPS)}
    big[keys.barrier("j", "ddl")] = b"{}"
    big[keys.task("j", 0)] = None
    waves = _waves(big)
    assert len(waves) == 2 and len(waves[0]) == 2
    first = [key_of(op) for b in waves[0] for op in b]
    assert keys.barrier("j", "ddl") not in first and len(first) == MAX_OPS + 1
    assert [[key_of(op) for op in b] for b in waves[1]] == [[keys.barrier("j", "ddl")]]
    assert all(len(b) <= MAX_OPS - 1 for wave in waves for b in wave)
    assert _waves({}) == [[]]

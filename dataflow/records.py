"""Records, their routing, and how batches of them travel.

A record is (table, pk) with pk 0..rcd-cnt-1; its ddl-version is pk // ddl-freq, and pk is a DDL
record (the first of its version) when pk % ddl-freq == 0 and pk > 0. A data record goes to binlog
pk % servers, a DDL record to every binlog. All of it follows from the config, so a record is never
stored anywhere as an object: a batch is two int64 arrays (pks, t_produce in microseconds).

A *position* in the records of one table routed to one binlog is the next pk still needed there
(the end, ``Config.end``, once there is none): positions always name a routed pk or the end.
"""

from __future__ import annotations

import sys
import time
from array import array

assert sys.byteorder == "little", "batches are little-endian int64 arrays"

DATA, DDL = "data", "ddl"


def now_us() -> int:
    return time.time_ns() // 1000


def is_ddl(pk: int, freq: int) -> bool:
    return pk > 0 and pk % freq == 0


def version(pk: int, freq: int) -> int:
    return pk // freq


def routed(shard: int, servers: int, freq: int, lo: int, hi: int, n: int) -> array:
    """The first ``n`` pks in [lo, hi) that binlog ``shard`` of ``servers`` gets, in order."""
    if lo >= hi or n <= 0:
        return array("q")
    if servers == 1:
        return array("q", range(lo, min(hi, lo + n)))
    data = range(lo + (shard - lo) % servers, hi, servers)[:n]
    upper = data[-1] if len(data) == n else hi - 1
    first_ddl = max(lo + (-lo) % freq, freq)
    extras = [d for d in range(first_ddl, upper + 1, freq) if d % servers != shard]
    if not extras:
        return array("q", data)
    merged = sorted([*data, *extras])
    return array("q", merged[:n])


def next_position(shard: int, servers: int, freq: int, pk: int, end: int) -> int:
    """The position at or after ``pk``: the first routed pk from there, or ``end``."""
    got = routed(shard, servers, freq, pk, end, 1)
    return got[0] if got else end


def count_routed(shard: int, servers: int, freq: int, end: int) -> int:
    """How many of a table's records binlog ``shard`` gets (a finite flow)."""
    data = len(range(shard, end, servers))
    ddls = sum(1 for d in range(freq, end, freq) if d % servers != shard) if servers > 1 else 0
    return data + ddls


def pack(values: array) -> bytes:
    return values.tobytes()


def unpack(data: bytes) -> array:
    out = array("q")
    out.frombytes(data)
    return out


def first_last(pks: bytes) -> tuple[int, int]:
    """The first and last pk of a packed batch, without unpacking it."""
    return int.from_bytes(pks[:8], "little", signed=True), int.from_bytes(pks[-8:], "little", signed=True)

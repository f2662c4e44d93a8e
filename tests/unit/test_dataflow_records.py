"""Records: routing (data to pk % servers, DDL to every binlog), positions, and batch encoding."""

from __future__ import annotations

from array import array

import pytest

from rota.dataflow import records as rec


def _slow(shard, servers, freq, lo, hi):
    return [pk for pk in range(lo, hi) if pk % servers == shard or rec.is_ddl(pk, freq)]


@pytest.mark.parametrize("servers", [1, 2, 3, 5])
@pytest.mark.parametrize("freq", [1, 2, 7, 500])
def test_routing_matches_the_rule_from_any_start_and_in_any_batch_size(servers, freq):
    hi = 1200
    for shard in range(servers):
        want = _slow(shard, servers, freq, 0, hi)
        assert list(rec.routed(shard, servers, freq, 0, hi, hi)) == want
        assert rec.count_routed(shard, servers, freq, hi) == len(want)
        for lo, n in [(0, 1), (1, 128), (499, 3), (500, 128), (777, 1000), (1199, 5)]:
            assert list(rec.routed(shard, servers, freq, lo, hi, n)) == [pk for pk in want if pk >= lo][:n]


def test_every_record_is_routed_once_except_ddl_records_which_go_everywhere():
    servers, freq, hi = 3, 10, 100
    lines = [pk for s in range(servers) for pk in rec.routed(s, servers, freq, 0, hi, hi)]
    for pk in range(hi):
        assert lines.count(pk) == (servers if rec.is_ddl(pk, freq) else 1)


def test_versions_and_ddl_records():
    assert [rec.version(pk, 500) for pk in (0, 499, 500, 1999)] == [0, 0, 1, 3]
    assert [rec.is_ddl(pk, 500) for pk in (0, 1, 500, 1000, 1001)] == [False, False, True, True, False]


def test_a_position_is_the_next_routed_pk_or_the_end():
    assert rec.next_position(1, 2, 500, 0, 2000) == 1
    assert rec.next_position(1, 2, 500, 498, 2000) == 499
    assert rec.next_position(1, 2, 500, 500, 2000) == 500  # a DDL record goes to every binlog
    assert rec.next_position(0, 2, 500, 1999, 2000) == 2000


def test_a_batch_is_two_packed_int64_arrays():
    pks = array("q", [5, 7, 2**40])
    data = rec.pack(pks)
    assert len(data) == 24 and rec.unpack(data) == pks
    assert rec.first_last(data) == (5, 2**40)

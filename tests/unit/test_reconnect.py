"""The executor's pause between rounds of failed attaches: short at first, doubling, capped, jittered."""

from __future__ import annotations

import pytest

from rota.executor.link import RECONNECT_CAP, RECONNECT_DELAY, reconnect_pause


def test_the_first_pause_is_as_short_as_before_so_a_failover_stays_quick() -> None:
    assert RECONNECT_DELAY / 2 <= reconnect_pause(1, 0.0) < reconnect_pause(1, 0.999) <= RECONNECT_DELAY


def test_the_ceiling_doubles_each_round_and_stops_at_the_cap() -> None:
    tops = [reconnect_pause(r, 0.999999) for r in range(1, 12)]
    assert tops[1] == pytest.approx(2 * tops[0], rel=1e-3) and tops[2] == pytest.approx(4 * tops[0], rel=1e-3)
    assert max(tops) <= RECONNECT_CAP and tops[-1] == pytest.approx(RECONNECT_CAP, rel=1e-3)
    assert reconnect_pause(10**6, 0.5) <= RECONNECT_CAP  # no overflow however long the outage


def test_the_pause_is_spread_over_its_range_by_the_draw() -> None:
    pauses = [reconnect_pause(8, d / 10) for d in range(10)]
    assert pauses == sorted(pauses) and pauses[-1] - pauses[0] > RECONNECT_CAP / 2

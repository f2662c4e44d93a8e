"""The executor's lease bookkeeping: when it counts as renewed, and when it is fenced out."""

from __future__ import annotations

from rota.executor.fencing import Lease


def test_a_granted_lease_expires_only_after_a_whole_ttl_of_silence():
    lease = Lease(5.0)
    lease.granted(3.0, now=100.0)
    assert lease.ttl == 3.0
    assert not lease.expired(103.0)
    assert lease.expired(103.01)
    assert lease.silent_for(103.5) == 3.5


def test_an_acknowledged_heartbeat_renews_as_of_when_it_was_sent():
    lease = Lease(3.0)
    lease.granted(3.0, now=0.0)
    lease.beat_sent(1.0)
    lease.beat_sent(2.0)
    lease.beat_acked()
    assert lease.renewed_at == 1.0
    assert lease.expired(4.5)
    lease.beat_acked()
    assert lease.renewed_at == 2.0
    assert not lease.expired(4.5)


def test_an_acknowledgement_without_a_heartbeat_in_flight_renews_nothing():
    lease = Lease(3.0)
    lease.granted(3.0, now=10.0)
    lease.beat_acked()
    assert lease.renewed_at == 10.0


def test_a_new_grant_drops_heartbeats_sent_before_it():
    lease = Lease(3.0)
    lease.beat_sent(1.0)
    lease.granted(3.0, now=5.0)
    lease.beat_acked()
    assert lease.renewed_at == 5.0
    lease.beat_sent(6.0)
    lease.beat_acked()
    assert lease.renewed_at == 6.0

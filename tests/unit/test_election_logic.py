"""Election and key-range logic that needs no etcd: campaign outcomes, fencing, master flags."""

from __future__ import annotations

import json

import pytest
from aetcd import rpc

from rota.common import config as cfg
from rota.metastore.client import KV, TxnResult, prefix_end
from rota.metastore.election import Leader, campaign_outcome, fence
from rota.metastore.session import held_surely
from rota.scheduler.master import build_config, master_command


def _range_response(*kvs: rpc.KeyValue) -> rpc.ResponseOp:
    return rpc.ResponseOp(response_range=rpc.RangeResponse(kvs=list(kvs)))


def test_prefix_end_covers_exactly_the_prefix():
    assert prefix_end(b"/rota/") == b"/rota0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_campaign_won_takes_the_txn_revision_as_term():
    assert campaign_outcome(TxnResult(True, 42, []), lease_id=7) == (42, None)


def test_campaign_lost_returns_the_holder_to_wait_on():
    holder = rpc.KeyValue(key=b"/rota/leader", value=b"{}", create_revision=10, mod_revision=11, lease=99)
    term, kv = campaign_outcome(TxnResult(False, 50, [_range_response(holder)]), lease_id=7)
    assert term == 0 and kv is not None and kv.mod_revision == 11 and kv.lease == 99


def test_campaign_retry_that_already_committed_is_a_win():
    ours = rpc.KeyValue(key=b"/rota/leader", value=b"{}", create_revision=10, mod_revision=10, lease=7)
    assert campaign_outcome(TxnResult(False, 50, [_range_response(ours)]), lease_id=7) == (10, None)


def test_fence_compares_the_create_revision_of_the_leader_key():
    c = fence(b"/rota/leader", 42)
    assert c.target == rpc.Compare.CREATE and c.result == rpc.Compare.EQUAL
    assert c.create_revision == 42 and c.key == b"/rota/leader"


def test_leader_from_kv_tolerates_garbage():
    kv = KV(b"/rota/leader", json.dumps({"name": "m1", "addr": "h:1"}).encode(), 5, 6, 1, 77)
    assert Leader.from_kv(kv) == Leader("m1", "h:1", 77, 5)
    assert Leader.from_kv(KV(b"k", b"not json", 5, 5, 1, 0)).name == ""


def _options(**over):
    ctx = master_command.make_context("master", [], resilient_parsing=True)
    opts = dict(ctx.params)
    opts.update(over)
    for p in master_command.params:
        if p.name in opts and isinstance(opts[p.name], str) and p.type is not None:
            opts[p.name] = p.type.convert(opts[p.name], p, ctx)
    return opts


def test_master_defaults_make_a_single_member_cluster():
    conf = build_config(_options(name="m0"))
    assert conf.member is not None
    assert conf.member.initial_cluster == "m0=http://127.0.0.1:8291"
    assert conf.etcd_endpoints == ["http://127.0.0.1:2379"]
    assert str(conf.advertise_addr) == "127.0.0.1:10240"


def test_master_wildcard_listen_advertises_a_real_host():
    conf = build_config(
        _options(
            name="m0",
            master_addr=":10240",
            peer_urls="http://0.0.0.0:8291",
            advertise_addr="10.1.2.3:10240",
            initial_cluster="m0=http://10.1.2.3:8291",
            insecure=True,
        )
    )
    assert conf.member is not None
    assert conf.member.advertise_peer_urls == ["http://10.1.2.3:8291"]
    assert conf.master_addr.listen() == "0.0.0.0:10240"


def test_master_external_etcd_starts_no_member():
    conf = build_config(_options(name="m0", etcd_endpoints="a:1,b:2"))
    assert conf.member is None and conf.etcd_endpoints == ["http://a:1", "http://b:2"]


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"name": "m9", "initial_cluster": "m0=http://127.0.0.1:8291"}, "does not list"),
        ({"name": "m0", "initial_cluster": "m0=http://127.0.0.1:9999"}, "advertises peer URL"),
        ({"name": "bad name"}, "--name"),
        ({"name": "m0", "leader_lease_ttl": "500ms"}, "at least 1s"),
        ({"name": "m0", "etcd_heartbeat_interval": "100ms", "etcd_election_timeout": "200ms"}, "5 times"),
    ],
)
def test_master_inconsistent_flags_are_named(over, needle):
    with pytest.raises(cfg.ConfigError, match=needle):
        build_config(_options(**over))


@pytest.mark.parametrize(
    ("ttl", "since", "sure"),
    [
        (3, 0.0, True),
        (3, 1.9, True),  # one renewal (every 1 s) missed, a second still in hand
        (3, 2.1, False),
        (2, 0.9, True),
        (2, 1.0, False),  # within the lease, but not with a second to spare
        (1, 0.0, False),  # a 1 s lease is never sure enough to answer without etcd
        (10, 6.0, True),
        (10, 7.0, False),  # two renewals (every 3.3 s) missed: etcd is not answering
    ],
)
def test_a_lease_is_held_surely_with_a_second_in_hand_and_one_renewal_missed_at_most(ttl, since, sure):
    assert held_surely(ttl, ttl / 3, since) is sure

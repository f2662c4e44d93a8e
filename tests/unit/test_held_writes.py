"""etcd out of space, in the leader's pure parts: what is held, what a refused submission undoes,
and how the NOSPACE refusal is recognised and reported."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import generate_latest

from rota.common.config import ConfigError, parse_size
from rota.common.jobspec import JobSpec
from rota.common.states import ASSIGNED
from rota.metastore.client import Alarm, EtcdError, MemberStatus, NoSpace, Refused, _error
from rota.scheduler.core import Ack, Core, DeleteJob, Dispatch, Job, JobEnded, PutJob, PutTask, TaskRef
from rota.scheduler.job_api import without_job
from rota.scheduler.metrics import MasterMetrics
from rota.scheduler.pipeline import held
from rota.scheduler.placement import ExecutorSlot
from rota.scheduler.upkeep import EtcdSpace


def _job(job_id: str, tasks: int = 1) -> Job:
    spec = JobSpec.from_dict({"name": job_id, "task": [{"name": "t", "kind": "noop", "count": tasks}]})
    return Job(job_id, spec, 1, 0.0)


def test_held_writes_lose_the_deletes_and_every_write_of_a_deleted_job_but_keep_the_rest_in_order():
    a, gone = _job("a"), _job("gone")
    decisions = [
        PutTask(a.tasks[0], {"s": "ASSIGNED"}),
        PutTask(gone.tasks[0], {"s": "SUCCEEDED"}),
        PutJob(gone),
        JobEnded(gone),
        Dispatch("e1", [(a.tasks[0], 1)]),
        DeleteJob(gone),
        Ack("e1", [TaskRef("a", 0, 1)]),
    ]
    assert held(decisions) == [decisions[0], decisions[3], decisions[4], decisions[6]]
    assert held(decisions[:1]) == decisions[:1]


def test_a_withdrawn_submission_frees_its_slots_for_the_next_job_as_if_it_never_came():
    core = Core(clock=lambda: 100.0)
    core.attach_executor(ExecutorSlot(id="e1", name="e1", addr="e1:1", slots=2, kinds=frozenset(["noop"])))
    refused, waiting = _job("refused", 2), _job("waiting", 2)
    waiting.seq = 2
    core.add_job(refused)
    core.add_job(waiting)
    drained = core.drain()
    assert [t.id for d in drained if isinstance(d, Dispatch) for t, _ in d.tasks] == [
        "refused/0",
        "refused/1",
    ]
    core.withdraw_job("refused")
    assert "refused" not in core.jobs and core.stats.dispatched == 2
    again = core.drain()
    assert [t.id for d in again if isinstance(d, Dispatch) for t, _ in d.tasks] == ["waiting/0", "waiting/1"]
    core.withdraw_job("refused")  # twice is harmless
    assert [t.state for t in waiting.tasks] == [ASSIGNED, ASSIGNED] and core.drain() == []


def test_a_refused_submission_drops_its_own_writes_and_dispatches_only():
    mine, other = _job("mine", 2), _job("other")
    decisions = [
        PutTask(mine.tasks[0], {}),
        PutTask(other.tasks[0], {}),
        Dispatch("e1", [(mine.tasks[0], 1), (other.tasks[0], 1)]),
        Dispatch("e2", [(mine.tasks[1], 1)]),
        Ack("e2", []),
    ]
    kept = without_job(decisions, mine)
    assert kept[0] is decisions[1] and kept[2] is decisions[4] and len(kept) == 3
    assert isinstance(kept[1], Dispatch) and kept[1].tasks == [(other.tasks[0], 1)]


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_only_etcds_space_refusal_is_nospace():
    full = _error(
        "Txn", _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
    )
    busy = _error("Txn", _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"))
    assert isinstance(full, NoSpace) and "database space exceeded" in str(full)
    assert isinstance(busy, EtcdError) and not isinstance(busy, NoSpace)
    assert not isinstance(full, Refused) and not isinstance(busy, Refused)


def test_a_request_etcd_can_never_take_is_refused_not_retried():
    too_large = _error(
        "Txn", _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
    )
    over_grpc = _error(
        "Txn",
        _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "grpc: received message larger than max (9 vs. 4)"),
    )
    down = _error("Txn", _rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert isinstance(too_large, Refused) and isinstance(over_grpc, Refused)
    assert not isinstance(down, Refused)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8GiB", 8 * 1024**3),
        ("4MiB", 4 * 1024**2),
        ("4M", 4 * 1024**2),
        ("512kb", 512 * 1024),
        ("1000", 1000),
    ],
)
def test_sizes_count_in_1024s(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "4 MiBs", "-1", ""])
def test_a_malformed_size_says_what_is_expected(text):
    with pytest.raises(ConfigError, match="expected e.g. 64MiB"):
        parse_size(text)


def test_the_metrics_show_the_alarm_and_each_members_database():
    space = EtcdSpace(4 * 1024**2)
    space.observe(
        [Alarm(1, "NOSPACE")],
        [MemberStatus(1, "m1", "u1", 4_300_000, 4_200_000), MemberStatus(2, "m2", "u2", error="down")],
    )
    space.defrags = 2
    metrics = MasterMetrics(lambda: None, lambda: None, space)
    text = generate_latest(metrics.registry).decode()
    for line in (
        'rota_etcd_alarm{alarm="NOSPACE"} 1.0',
        'rota_etcd_alarm{alarm="CORRUPT"} 0.0',
        "rota_etcd_quota_bytes 4.194304e+06",
        'rota_etcd_db_bytes{member="m1"} 4.3e+06',
        'rota_etcd_db_bytes_in_use{member="m1"} 4.2e+06',
        "rota_etcd_defragmentations_total 2.0",
    ):
        assert line in text.splitlines(), (line, text)
    assert 'member="m2"' not in text

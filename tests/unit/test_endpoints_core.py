"""Endpoints in the scheduling core: publishing (fenced to the current attempt), finding one
(answered at once, or parked until it is published or WAIT_MAX passes), withdrawal when the
attempt ends, and the rebuild after a leader change. Pure logic, no I/O."""

from __future__ import annotations

import json
from typing import Any

from test_core import Harness, tmpl

from rota.common.states import FAILED, RUNNING, SUCCEEDED
from rota.metastore import keys
from rota.scheduler import endpoints as ep
from rota.scheduler.core import CallReply, Job, PutRecord, TaskRef, restore_task
from rota.scheduler.views import job_page_doc


def served(name: str = "server", ports: tuple[str, ...] = ("feed",), count: int = 1) -> dict[str, Any]:
    return {**tmpl(name, "python", count=count), "ports": list(ports)}


def started(h: Harness, *tasks: dict[str, Any], slots: int = 8) -> Job:
    """A job whose tasks all run on executor e1."""
    job = h.add_job("j", *tasks)
    h.attach("e1", slots=slots, kinds=("python", "noop"))
    h.drain()
    for t in job.tasks:
        assert t.executor == "e1"
        h.report("e1", t.ref(), RUNNING)
    h.drain()
    return job


def replies(out: list[Any]) -> list[CallReply]:
    return [d for d in out if isinstance(d, CallReply)]


def test_a_publish_writes_the_record_then_answers() -> None:
    h = Harness()
    job = started(h, served(), tmpl("client", "python"))
    server = job.tasks[0]
    h.core.publish_endpoint("e1", 5, server.ref(), "feed", "127.0.0.1:4000")
    out = h.drain()
    assert [type(d) for d in out] == [PutRecord, CallReply]
    assert out[0].key == keys.endpoint("j", "server.feed")
    assert json.loads(out[0].value) == {"addr": "127.0.0.1:4000", "index": 0, "attempt": server.attempt}
    assert out[1] == CallReply("e1", 5)
    # The executor sends it again after a leader change: answered, not written twice.
    h.core.publish_endpoint("e1", 6, server.ref(), "feed", "127.0.0.1:4000")
    assert h.drain() == [CallReply("e1", 6)]
    assert job_page_doc(job, 0, 10, h.core.endpoints.of_job("j"))["tasks"][0]["endpoints"] == {
        "feed": "127.0.0.1:4000"
    }
    assert "endpoints" not in job_page_doc(job, 0, 10, h.core.endpoints.of_job("j"))["tasks"][1]


def test_publishes_are_fenced_and_checked() -> None:
    h = Harness()
    job = started(h, served(), tmpl("client", "python"))
    ref = job.tasks[0].ref()
    cases = [
        ("e1", TaskRef("j", 0, ref.attempt + 1), "feed", "h:1", "not its current one"),
        ("e2", ref, "feed", "h:1", "does not run on this executor"),
        ("e1", ref, "other", "h:1", "declares no port 'other'"),
        ("e1", job.tasks[1].ref(), "feed", "h:1", "declares no port 'feed'"),
        ("e1", ref, "feed", "h", "malformed endpoint address"),
        ("e1", ref, "feed", ":1", "malformed endpoint address"),
        ("e1", ref, "feed", "h:0", "malformed endpoint address"),
        ("e1", ref, "feed", "h:70000", "malformed endpoint address"),
        ("e1", ref, "feed", "h:x", "malformed endpoint address"),
    ]
    for ex, r, port, addr, needle in cases:
        h.core.publish_endpoint(ex, 1, r, port, addr)
        out = h.drain()
        assert len(out) == 1 and isinstance(out[0], CallReply) and needle in out[0].error, (needle, out)
    assert len(h.core.endpoints) == 0


def test_finding_a_published_endpoint_answers_at_once_by_either_name() -> None:
    h = Harness()
    job = started(h, served(), tmpl("client", "python"))
    h.core.publish_endpoint("e1", 1, job.tasks[0].ref(), "feed", "10.0.0.1:4000")
    h.drain()
    client = job.tasks[1].ref()
    for name in ("server.feed", "server"):
        h.core.find_endpoint("e1", 9, client, name)
        assert h.drain() == [CallReply("e1", 9, addr="10.0.0.1:4000")]


def test_unknown_names_are_refused_at_once() -> None:
    h = Harness()
    job = started(h, served(ports=("feed", "admin")), tmpl("client", "python"), served("web", count=2))
    client = job.tasks[1].ref()
    cases = [
        ("nope.feed", "has no task named 'nope'"),
        ("nope", "has no task named 'nope'"),
        ("server.other", "has no port 'other' (its ports: feed, admin)"),
        ("server", "has 2 ports: name one, as server.feed"),
        ("client", "declares no ports"),
        ("client.feed", "has no port 'feed' (it declares no ports)"),
        ("web.feed", "has no task named 'web'"),
        ("web-2.feed", "has no task named 'web-2'"),
        ("web-01.feed", "has no task named 'web-01'"),
        ("", "an endpoint name is required"),
        ("x" * 400, "at most 300 characters"),
    ]
    for name, needle in cases:
        h.core.find_endpoint("e1", 2, client, name)
        out = h.drain()
        assert len(out) == 1 and needle in out[0].error, (name, out)
    h.core.find_endpoint("e2", 3, client, "server.feed")
    assert "does not run on this executor" in h.drain()[0].error
    assert h.core.endpoints.parked() == 0


def test_a_parked_call_is_answered_by_the_publish_after_its_commit() -> None:
    h = Harness()
    job = started(h, served("web", count=2), tmpl("client", "python"))
    client = job.tasks[2].ref()
    h.core.find_endpoint("e1", 1, client, "web-1.feed")
    h.core.find_endpoint("e1", 2, client, "web-1")
    h.core.find_endpoint("e1", 3, client, "web-0")
    assert h.drain() == [] and h.core.endpoints.parked() == 3
    h.core.publish_endpoint("e1", 4, job.tasks[1].ref(), "feed", "h:7")
    out = h.drain()
    assert isinstance(out[0], PutRecord) and out[0].key == keys.endpoint("j", "web-1.feed")
    assert out[1:] == [CallReply("e1", 1, addr="h:7"), CallReply("e1", 2, addr="h:7"), CallReply("e1", 4)]
    assert h.core.endpoints.parked() == 1


def test_a_parked_call_is_answered_not_ready_after_wait_max() -> None:
    h = Harness()
    job = started(h, served(), tmpl("client", "python"))
    h.core.find_endpoint("e1", 1, job.tasks[1].ref(), "server.feed")
    h.now[0] += ep.WAIT_MAX - 0.1
    h.core.tick()
    assert replies(h.drain()) == []
    h.now[0] += 0.2
    h.core.tick()
    assert replies(h.drain()) == [CallReply("e1", 1, ready=False)]
    assert h.core.endpoints.parked() == 0
    # Published later: nothing left to answer.
    h.core.publish_endpoint("e1", 2, job.tasks[0].ref(), "feed", "h:7")
    assert replies(h.drain()) == [CallReply("e1", 2)]
    h.now[0] += ep.WAIT_MAX
    h.core.tick()
    assert replies(h.drain()) == []


def test_an_ended_attempt_withdraws_its_endpoint_and_refuses_its_parked_calls() -> None:
    h = Harness()
    job = started(h, served(), served("other", ports=("rpc",)))
    server, other = job.tasks
    h.core.find_endpoint("e1", 1, other.ref(), "server.feed")
    h.core.publish_endpoint("e1", 2, other.ref(), "rpc", "h:9")
    h.drain()
    # The parked caller fails: its call is refused, its own endpoint withdrawn, once.
    h.report("e1", other.ref(), FAILED, {"error": "boom"})
    out = h.drain()
    assert [d for d in out if isinstance(d, PutRecord)] == [
        PutRecord(job, keys.endpoint("j", "other.rpc"), None)
    ]
    assert [r.call_id for r in replies(out)] == [1] and "ended while it waited" in replies(out)[0].error
    assert h.core.endpoints.lookup("j", "other.rpc") is None
    # A task that ended for good: asking for it is refused at once.
    h.report("e1", server.ref(), SUCCEEDED, {})
    h.drain()
    h.report("e1", TaskRef("j", 1, 2), RUNNING)  # other's retry (placed again after its backoff)
    h.now[0] += 60
    h.core.tick()
    h.drain()
    assert other.state in ("ASSIGNED", "RUNNING")
    h.core.find_endpoint("e1", 3, other.ref(), "server")
    assert "has ended (SUCCEEDED)" in h.drain()[0].error


def test_withdrawal_only_removes_the_ending_attempts_record() -> None:
    h = Harness()
    job = started(h, served())
    server = job.tasks[0]
    h.core.publish_endpoint("e1", 1, server.ref(), "feed", "h:1")
    h.drain()
    h.core.executor_lost("e1")
    out = h.drain()
    assert PutRecord(job, keys.endpoint("j", "server.feed"), None) in out
    # A stale record (an old attempt's) stays out of the way of the new one's.
    h.attach("e2", kinds=("python",))
    h.drain()
    assert server.executor == "e2" and server.attempt == 2
    h.core.publish_endpoint("e2", 2, server.ref(), "feed", "h:2")
    h.drain()
    assert h.core.endpoints.withdraw("j", 0, 1, iter(["server.feed"])) == []
    assert h.core.endpoints.lookup("j", "server.feed") == ep.Published("h:2", 0, 2)


def test_cancelling_the_job_withdraws_everything() -> None:
    h = Harness()
    job = started(h, served(count=3), tmpl("client", "python"))
    for t in job.tasks[:3]:
        h.core.publish_endpoint("e1", t.index, t.ref(), "feed", f"h:{100 + t.index}")
    h.core.find_endpoint("e1", 50, job.tasks[3].ref(), "server-2")
    h.drain()
    h.core.cancel_job("j")
    out = h.drain()
    deleted = sorted(d.key for d in out if isinstance(d, PutRecord) and d.value is None)
    assert deleted == [keys.endpoint("j", f"server-{i}.feed") for i in range(3)]
    assert len(h.core.endpoints) == 0 and h.core.endpoints.parked() == 0


def test_a_rebuild_keeps_the_endpoints_of_current_attempts_and_deletes_the_rest() -> None:
    h = Harness()
    job = h.new_job("j", served(count=3), tmpl("client", "python"))
    restore_task(job, 0, {"s": RUNNING, "a": 2, "e": "e1"})
    restore_task(job, 1, {"s": RUNNING, "a": 1, "e": "e1"})
    restore_task(job, 2, {"s": SUCCEEDED, "a": 1, "e": "e1"})
    h.core.add_job(job)
    h.drain()

    def rec(index: int, attempt: int) -> bytes:
        return ep.Published(f"h:{index}{attempt}", index, attempt).encode()

    h.core.restore_endpoints([
        ("j", "server-0.feed", rec(0, 2)),  # current: kept
        ("j", "server-1.feed", rec(1, 0)),  # an older attempt's
        ("j", "server-2.feed", rec(2, 1)),  # the task ended
        ("j", "server-0.other", rec(0, 2)),  # no such port
        ("j", "server-1.feed2", b"{not json"),
        ("gone", "x.feed", rec(0, 1)),  # no such job: nothing to do
    ])  # fmt: skip
    out = h.drain()
    assert sorted(d.key for d in out if isinstance(d, PutRecord) and d.value is None) == [
        keys.endpoint("j", n) for n in ("server-0.other", "server-1.feed", "server-1.feed2", "server-2.feed")
    ]
    assert h.core.endpoints.of_job("j") == {0: {"feed": "h:02"}}
    # Then the executor of the kept one is gone: it is withdrawn like any other.
    h.core.adopt_running()
    assert PutRecord(job, keys.endpoint("j", "server-0.feed"), None) in h.drain()


def test_resolve_and_find_task_read_copy_names_without_walking_every_task() -> None:
    h = Harness()
    job = h.new_job(
        "j",
        served("a.b"),
        served("a", ports=("b", "c")),
        {**tmpl("s", "python", shards=3), "ports": ["p"]},
        {**tmpl("one", "python", shards=1), "ports": ["p"]},
    )
    assert ep.find_task(job, "s-shard2") is job.tasks[4]
    assert ep.find_task(job, "one-shard0") is job.tasks[5] and ep.find_task(job, "one") is None
    assert ep.find_task(job, "s-shard3") is None and ep.find_task(job, "s-shard٣") is None
    found = ep.resolve(job, "a.b")
    assert not isinstance(found, str) and found == (job.tasks[1], "b")  # task.port first
    found = ep.resolve(job, "a.b.feed")
    assert found == (job.tasks[0], "feed")
    assert ep.resolve(job, "s-shard1") == (job.tasks[3], "p")

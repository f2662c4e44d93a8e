"""The event stream on a real cluster (issue 16): job and task changes from etcd's history, any
master serving it. A stream whose master is SIGKILLed (the leader) goes on from another master
and yields every change once, in order: the same list as a stream that never broke. The HTTP
API serves it as server-sent events that resume from Last-Event-ID."""

from __future__ import annotations

import json
import signal
import threading
import urllib.request

import pytest

from rota.client.api import Client

pytestmark = pytest.mark.etcd

ORDER = {"PENDING": 0, "ASSIGNED": 1, "RUNNING": 2, "SUCCEEDED": 3}


def collect(addrs: str, job_id: str, start: int, out: list, done: threading.Event) -> None:
    with Client(addrs, timeout=30) as c:
        for revision, changes in c.watch_events(job_id, start):
            out.extend((revision, ch) for ch in changes)
            if any(ch["event"] == "ended" for ch in changes):
                break
    done.set()


def test_a_stream_survives_its_master_being_killed_and_misses_nothing(local_cluster, wait_until):
    cluster = local_cluster(executors=2, executor_slots=2)
    job = {
        "name": "watched",
        "id": "watched",
        "task": [{"name": "s", "kind": "sleep", "seconds": 0.4, "count": 12}],
    }
    leader = cluster.leader()
    others = [m for m in cluster.masters if m is not leader]
    with cluster.client() as c:
        start = next(c.watch_events("watched", cursor=True))[0] + 1
    got, steady = [], []
    a, b = threading.Event(), threading.Event()
    # One stream on the leader first (its address first), one on a follower only.
    threading.Thread(
        target=collect, args=(",".join(m.addr for m in [leader, *others]), "watched", start, got, a)
    ).start()
    threading.Thread(target=collect, args=(others[1].addr, "watched", start, steady, b)).start()
    with cluster.client(timeout=30) as c:
        c.submit_job(job)
        wait_until("half done", lambda: c.get_job("watched")["counts"].get("SUCCEEDED", 0) >= 4)
        leader.signal(signal.SIGKILL)
        cluster.wait_for_leader(exclude=leader.name, timeout=30)
        assert c.wait_job("watched", timeout=60)["state"] == "SUCCEEDED"
    assert a.wait(60) and b.wait(60)
    assert got == steady
    revisions = [r for r, _ in got]
    assert revisions == sorted(revisions)
    assert got[0][1] == {"job": "watched", "event": "submitted"} and got[-1][1]["event"] == "ended"
    keys = [(r, json.dumps(ch, sort_keys=True)) for r, ch in got]
    assert len(keys) == len(set(keys))  # nothing twice
    for index in range(12):
        states = [ch["state"] for _, ch in got if ch.get("task") == index]
        assert states == sorted(states, key=ORDER.__getitem__) and states[-1] == "SUCCEEDED", (index, states)
        assert {"ASSIGNED", "SUCCEEDED"} <= set(states)


def test_server_sent_events_resume_from_last_event_id(local_cluster):
    cluster = local_cluster(executors=1, executor_slots=2)
    url = cluster.masters[0].http_url + "/api/v1/events?job=sse"

    def read(headers: dict, until: str) -> list[tuple[int, str, list]]:
        events, current = [], {}
        req = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line:
                    field, _, value = line.partition(": ")
                    current[field] = value
                    continue
                events.append((int(current["id"]), current["event"], json.loads(current["data"])))
                current = {}
                if any(ch.get("event") == until for ch in events[-1][2]):
                    return events

    with cluster.client(timeout=30) as c:
        start = next(c.watch_events("sse", cursor=True))[0]
        c.run_job(
            {"name": "sse", "id": "sse", "task": [{"name": "t", "kind": "noop", "count": 3}]}, timeout=60
        )
    first, *whole = read({"Last-Event-ID": str(start)}, "ended")
    assert first == (start, "cursor", [])  # where it starts: resuming from there loses nothing
    assert whole[0][1] == "changes" and whole[0][2][0] == {"job": "sse", "event": "submitted"}
    middle = whole[len(whole) // 2][0]
    cursor, *rest = read({"Last-Event-ID": str(middle)}, "ended")
    assert cursor[0] == middle and rest == [e for e in whole if e[0] > middle]


def test_a_progress_wait_follows_the_stream_not_a_timer(local_cluster):
    """wait_job(progress=...) asks for fresh counts after a change, so a task that sleeps 4 s
    without changing state costs a call or two, where looking twice a second would cost eight."""
    cluster = local_cluster(executors=1, executor_slots=1)
    seen: list[dict] = []
    with cluster.client(timeout=30) as c:
        c.submit_job({"name": "slow", "id": "slow", "task": [{"name": "s", "kind": "sleep", "seconds": 4}]})
        doc = c.wait_job("slow", timeout=60, progress=seen.append)
    assert doc["state"] == "SUCCEEDED"
    assert 1 <= len(seen) <= 3, [d["state"] for d in seen]

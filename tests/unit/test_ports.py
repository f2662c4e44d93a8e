"""Named ports on the executor (pick, tell, watch, publish) and the endpoint call of the task SDK
and the rota-task program, against the executor's socket with a fake leader."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_task_call_protocol import REF, Served, cli, line

from rota import task as sdk
from rota.executor import ports as ports_mod
from rota.executor.ports import Ports, addresses_of, host_of, join, listening
from rota.executor.task_calls import Refused, parse
from rota.protos import rota_pb2

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def table_line(port: int, state: str = "0A", v6: bool = False) -> str:
    local = ("0" * 32 if v6 else "0100007F") + f":{port:04X}"
    return f"   0: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000  0  0 1 1\n"


def test_listening_ports_are_read_from_the_kernels_tables(tmp_path: Path) -> None:
    v4, v6 = tmp_path / "tcp", tmp_path / "tcp6"
    v4.write_text(HEADER + table_line(4000) + table_line(4001, "01") + "garbage\n")
    v6.write_text(HEADER + table_line(5000, v6=True))
    assert listening([str(v4), str(v6), str(tmp_path / "missing")]) == {4000, 5000}
    with socket.socket() as s:  # the real tables, a real listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert port not in listening()
        s.listen()
        assert port in listening()


def test_only_a_listener_clients_of_the_host_can_reach_counts(tmp_path: Path) -> None:
    """Bound to the advertised host, or to a wildcard: published. Bound only to another address
    (a task listening on 127.0.0.1 of a host advertised as 127.0.0.2): not."""
    v4, v6 = tmp_path / "tcp", tmp_path / "tcp6"
    other = "0200007F"  # 127.0.0.2
    v4.write_text(
        HEADER
        + table_line(4000)  # 127.0.0.1
        + table_line(4001).replace("0100007F", "00000000")  # 0.0.0.0
        + table_line(4002).replace("0100007F", other)
    )
    v6.write_text(
        HEADER
        + table_line(5000, v6=True)
        + table_line(5001, v6=True).replace("0" * 32, "0" * 16 + "FFFF0000" + other)
    )
    tables = [str(v4), str(v6)]
    on_127_0_0_2 = addresses_of("127.0.0.2")
    assert listening(tables, on_127_0_0_2) == {4001, 4002, 5000, 5001}
    assert listening(tables, addresses_of("127.0.0.1")) == {4000, 4001, 5000}
    assert listening(tables, None) == {4000, 4001, 4002, 5000, 5001}


def test_ports_picked_before_a_failure_are_given_back(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Ports("127.0.0.1:7000", _never)
    picks = iter([41000] * 40)  # "b" only ever gets the port "a" holds
    monkeypatch.setattr("rota.executor.ports.free_port", lambda host: next(picks))
    with pytest.raises(OSError, match="no free port for 'b'"):
        p.allocate(["a", "b"])
    assert not p._given


def test_addresses_and_environment() -> None:
    assert host_of("127.0.0.1:7000") == "127.0.0.1" and host_of("[::1]:7000") == "::1"
    assert host_of("node-3.example:7000") == "node-3.example"
    assert join("::1", 80) == "[::1]:80" and join("h", 80) == "h:80"
    p = Ports("127.0.0.1:7000", _never)
    given = p.allocate(["feed", "admin_2"])
    assert len(set(given.values())) == 2 and all(0 < v < 65536 for v in given.values())
    assert p.env(given) == {
        "ROTA_HOST": "127.0.0.1",
        "ROTA_PORT_FEED": str(given["feed"]),
        "ROTA_PORT_ADMIN_2": str(given["admin_2"]),
    }
    p.release(given)
    assert not p._given


async def _never(call: rota_pb2.TaskCall) -> rota_pb2.TaskCallReply:
    raise AssertionError("no call expected")


def test_a_port_is_published_once_it_listens_and_sent_again_after_a_transient_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports_mod, "POLL_EVERY", 0.01)
    monkeypatch.setattr(ports_mod, "RETRY_FIRST", 0.01)
    table = tmp_path / "tcp"
    table.write_text(HEADER)
    calls: list[rota_pb2.TaskCall] = []
    answers = [
        rota_pb2.TaskCallReply(ok=False, error="not connected to a leader (waited 30s)"),
        rota_pb2.TaskCallReply(ok=True),
        rota_pb2.TaskCallReply(ok=False, error="task j1/2 declares no port 'b'"),
    ]

    async def call(c: rota_pb2.TaskCall) -> rota_pb2.TaskCallReply:
        calls.append(c)
        return answers.pop(0)

    async def scenario() -> None:
        p = Ports("127.0.0.1:1", call, tables=[str(table)])
        watch = asyncio.create_task(p.publish_when_listening(REF, {"a": 4000, "b": 4001}))
        await asyncio.sleep(0.1)
        assert calls == [] and not watch.done()  # nothing listens: nothing published
        table.write_text(HEADER + table_line(4000))
        await asyncio.sleep(0.1)
        assert [(c.op, c.name, c.addr) for c in calls] == [("endpoint.publish", "a", "127.0.0.1:4000")] * 2
        assert calls[0].task == REF and not watch.done()
        table.write_text(HEADER + table_line(4000) + table_line(4001))
        await asyncio.wait_for(watch, 2)  # refused for good: not sent again
        assert [c.name for c in calls] == ["a", "a", "b"]
        # The attempt ends before its port listens: the watch stops.
        stopped = asyncio.create_task(p.publish_when_listening(REF, {"c": 4002}))
        await asyncio.sleep(0.05)
        stopped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopped
        assert len(calls) == 3

    asyncio.run(scenario())


# -- the endpoint call ----------------------------------------------------------------------------


def test_endpoint_requests_are_checked() -> None:
    from test_task_call_protocol import attempts_with

    held: list[str] = []
    attempts = attempts_with(held)
    s = held[0]
    assert parse(line(secret=s, op="endpoint", name="server.feed"), attempts).name == "server.feed"
    for body, needle in (
        ({"op": "endpoint"}, "endpoint needs 'name'"),
        ({"op": "endpoint", "name": 3}, "endpoint needs 'name'"),
        ({"op": "endpoint", "name": "x" * 301}, "at most 300 printable"),
        ({"op": "endpoint", "name": "a\nb"}, "at most 300 printable"),
        ({"op": "endpoint", "name": "a", "addr": "h:1"}, "takes no field 'addr'"),
        ({"op": "endpoint.publish", "name": "a", "addr": "h:1"}, "unknown op 'endpoint.publish'"),
    ):
        with pytest.raises(Refused, match=needle):
            parse(line(secret=s, **body), attempts)


class Endpoints:
    """A fake leader for endpoint calls: answers "not ready" ``not_ready`` times, then the address."""

    def __init__(self, served: Served, not_ready: int = 0, addr: str = "10.0.0.7:4000") -> None:
        self.not_ready = not_ready
        self.addr = addr
        self.calls: list[rota_pb2.TaskCall] = []
        self.refuse = ""
        self.hold = False
        served.server.forward = self.forward

    async def forward(self, call: rota_pb2.TaskCall) -> rota_pb2.TaskCallReply:
        self.calls.append(call)
        if self.hold:
            await asyncio.sleep(5)
        if self.refuse:
            return rota_pb2.TaskCallReply(ok=False, error=self.refuse)
        if self.not_ready > 0:
            self.not_ready -= 1
            return rota_pb2.TaskCallReply(ok=True, ready=False)
        return rota_pb2.TaskCallReply(ok=True, ready=True, addr=self.addr)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    s = Served(tmp_path)
    for k, v in s.env.items():
        monkeypatch.setenv(k, v)
    try:
        yield s
    finally:
        s.close()


def test_the_sdk_asks_again_until_the_endpoint_is_up(served: Served) -> None:
    leader = Endpoints(served, not_ready=2)
    assert sdk.endpoint("server.feed", timeout=10) == "10.0.0.7:4000"
    assert [(c.op, c.name, c.task) for c in leader.calls] == [("endpoint", "server.feed", REF)] * 3


def test_the_sdk_says_when_it_is_not_up_or_refused(served: Served) -> None:
    leader = Endpoints(served, not_ready=10**6)
    t0 = time.monotonic()
    with pytest.raises(sdk.TaskCallError, match=r"^endpoint server.feed: not up within 0.3s$"):
        sdk.endpoint("server.feed", timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    leader.not_ready, leader.hold = 0, True  # the leader holds the call past the timeout
    with pytest.raises(sdk.TaskCallError, match="not up within 0.3s"):
        sdk.endpoint("server.feed", timeout=0.3)
    leader.hold, leader.refuse = False, "job j1 has no task named 'nope'"
    with pytest.raises(sdk.TaskCallError, match="^endpoint: job j1 has no task named 'nope'$"):
        sdk.endpoint("nope.feed")
    with pytest.raises(ValueError, match="1 to 300 characters"):
        sdk.endpoint("")
    with pytest.raises(TypeError):
        sdk.endpoint(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        sdk.endpoint("a", timeout=-1)


def test_the_program_prints_the_address(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    leader = Endpoints(served, not_ready=1)
    assert sdk.main(["endpoint", "server.feed", "--timeout", "5"]) == 0
    assert capsys.readouterr().out == "10.0.0.7:4000\n"
    assert sdk.main(["endpoint", "server", "--timeout=5"]) == 0
    assert capsys.readouterr().out == "10.0.0.7:4000\n"
    leader.not_ready = 10**6
    code, err = cli(["endpoint", "server.feed", "--timeout", "0.2"], capsys)
    assert (code, err) == (3, "rota-task: endpoint server.feed: not up within 0.2s\n")
    for usage in (["endpoint"], ["endpoint", "a", "b"], ["endpoint", "a", "--timeout"],
                  ["endpoint", "a", "--timeout", "soon"], ["endpoint", "--timeout", "3"]):  # fmt: skip
        code, err = cli(usage, capsys)
        assert code == 2 and "Usage: rota-task" in err, usage
    assert "rota-task endpoint NAME" in sdk.USAGE and "endpoint" in sdk.OPS

"""Task calls without a cluster: the executor's line protocol and its bounds, the rota.task SDK and
the rota-task program against the executor's socket (the leader is a fake), and the link's part."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from rota import task as sdk
from rota.executor import link as link_mod
from rota.executor import task_calls
from rota.executor.config import AgentConfig
from rota.executor.fencing import Lease
from rota.executor.kinds.call import CallKind
from rota.executor.kinds.python import PythonKind
from rota.executor.link import Link
from rota.executor.runner import Runner
from rota.executor.task_calls import Attempts, Refused, TaskCallServer, parse
from rota.protos import rota_pb2

REF = rota_pb2.TaskRef(job_id="j1", index=2, attempt=3)


def attempts_with(secret_holder: list[str]) -> Attempts:
    attempts = Attempts()
    attempts.socket_path = "/nowhere/task.sock"
    secret, env = attempts.add(REF)
    secret_holder.append(secret)
    assert env[sdk.SOCKET_ENV] == "/nowhere/task.sock" and env[sdk.SECRET_ENV] == secret
    return attempts


def line(**body: Any) -> bytes:
    return json.dumps(body).encode() + b"\n"


# -- the line protocol ----------------------------------------------------------------------------


def test_requests_are_checked_field_by_field() -> None:
    held: list[str] = []
    attempts = attempts_with(held)
    s = held[0]
    blob = b"\x00state\xff"
    save = parse(line(secret=s, op="checkpoint.save", data=base64.b64encode(blob).decode()), attempts)
    assert (save.ref, save.op, save.data) == (REF, "checkpoint.save", blob)
    assert parse(line(secret=s, op="checkpoint.load"), attempts).op == "checkpoint.load"
    done = parse(line(secret=s, op="progress", fraction=1, message="done"), attempts)
    assert (done.fraction, done.message) == (1.0, "done")
    assert parse(line(secret=s, op="progress", fraction=0.25), attempts).message == ""

    bad = {
        b"{not json\n": "not valid JSON",
        b"\xff\xfe\n": "not valid JSON",
        b"[1, 2]\n": "must be a JSON object",
        line(op="progress", fraction=0.5): "no 'secret'",
        line(secret="guessed", op="checkpoint.load"): "unknown task secret",
        line(secret=s, op="delete everything"): "unknown op 'delete everything'",
        line(secret=s): "unknown op None",
        line(secret=s, op="checkpoint.load", data="AA=="): "checkpoint.load takes no field 'data'",
        line(secret=s, op="checkpoint.save"): "needs 'data'",
        line(secret=s, op="checkpoint.save", data="not base64!"): "not valid base64",
        line(
            secret=s, op="checkpoint.save", data=base64.b64encode(b"x" * (sdk.CHECKPOINT_MAX + 1)).decode()
        ): "65537 bytes is over the checkpoint limit of 65536 bytes",
        line(secret=s, op="progress"): "needs 'fraction'",
        line(secret=s, op="progress", fraction=True): "needs 'fraction'",
        line(secret=s, op="progress", fraction="0.5"): "needs 'fraction'",
        line(secret=s, op="progress", fraction=1.5): "from 0 to 1, got 1.5",
        line(secret=s, op="progress", fraction=-0.1): "from 0 to 1",
        b'{"secret": "%s", "op": "progress", "fraction": NaN}\n' % s.encode(): "from 0 to 1, got nan",
        line(secret=s, op="progress", fraction=0.5, message=7): "'message' must be a string",
        line(
            secret=s, op="progress", fraction=0.5, message="m" * 257
        ): "257 characters, over the limit of 256",
    }
    for request, why in bad.items():
        with pytest.raises(Refused, match=why.replace("(", r"\(")):
            parse(request, attempts)
    # exactly at the limits is fine
    full = base64.b64encode(b"x" * sdk.CHECKPOINT_MAX).decode()
    assert len(parse(line(secret=s, op="checkpoint.save", data=full), attempts).data) == sdk.CHECKPOINT_MAX
    assert len(sdk.json.dumps({"secret": s, "op": "checkpoint.save", "data": full})) < sdk.LINE_MAX
    parse(line(secret=s, op="progress", fraction=0.5, message="m" * 256), attempts)


def test_a_secret_stands_for_its_attempt_only_while_it_runs() -> None:
    attempts = Attempts()
    assert attempts.add(REF) == ("", {})  # no socket yet: the task gets no variables
    attempts.socket_path = "/s"
    one, env = attempts.add(REF)
    two, _ = attempts.add(rota_pb2.TaskRef(job_id="j1", index=2, attempt=4))
    assert one != two and len(one) >= 40 and attempts.get(one) == REF
    assert env.get(task_calls.CLI_ENV, "") == task_calls.cli_path()
    attempts.remove(one)
    with pytest.raises(Refused, match="unknown task secret"):
        parse(line(secret=one, op="checkpoint.load"), attempts)
    assert attempts.get(two) is not None and len(attempts) == 1


# -- the socket, with a fake leader ---------------------------------------------------------------


class FakeLeader:
    """Keeps one checkpoint and the last progress; ``refuse`` makes it answer ok false."""

    def __init__(self) -> None:
        self.calls: list[rota_pb2.TaskCall] = []
        self.checkpoint: bytes | None = None
        self.progress: tuple[float, str] | None = None
        self.refuse = ""
        self.hold: asyncio.Event | None = None
        #: Answers to barrier calls, in turn; ready once they run out.
        self.barrier_replies: list[rota_pb2.TaskCallReply] = []

    async def forward(self, call: rota_pb2.TaskCall) -> rota_pb2.TaskCallReply:
        self.calls.append(call)
        if self.hold is not None:
            await self.hold.wait()
        if self.refuse == "raise":
            raise RuntimeError("the link broke")
        if self.refuse:
            return rota_pb2.TaskCallReply(ok=False, error=self.refuse)
        if call.op == "checkpoint.save":
            self.checkpoint = call.data
        elif call.op == "progress":
            self.progress = (call.fraction, call.message)
        elif call.op == "barrier":
            return (
                self.barrier_replies.pop(0)
                if self.barrier_replies
                else rota_pb2.TaskCallReply(ok=True, ready=True)
            )
        elif self.checkpoint is not None:
            return rota_pb2.TaskCallReply(ok=True, found=True, data=self.checkpoint)
        return rota_pb2.TaskCallReply(ok=True)


class Served:
    """A TaskCallServer on its own loop in a thread, so the synchronous SDK can call it."""

    def __init__(self, work_dir: Path) -> None:
        self.leader = FakeLeader()
        self.attempts = Attempts()
        self.loop = asyncio.new_event_loop()
        self.server = TaskCallServer(str(work_dir), self.attempts, self.leader.forward)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.server.start())
        self.secret, self.env = self.attempts.add(REF)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def raw(self, data: bytes, shut: bool = False) -> list[dict[str, Any]]:
        """Send bytes as they are; every answer line until the executor closes (or one, if not shut)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.server.path)
            try:
                s.sendall(data)
                if shut:
                    s.shutdown(socket.SHUT_WR)
            except BrokenPipeError:
                pass  # the executor answered and closed first (too many connections): read that
            out = b""
            while not out.endswith(b"\n") or shut:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return [json.loads(x) for x in out.splitlines()]


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    s = Served(tmp_path)
    for k, v in s.env.items():
        monkeypatch.setenv(k, v)
    try:
        yield s
    finally:
        s.close()


def test_the_sdk_saves_loads_and_reports_progress_through_the_executor(served: Served) -> None:
    assert oct(os.stat(served.server.path).st_mode & 0o777) == "0o666"
    assert sdk.checkpoint.load() is None
    sdk.checkpoint.save(b"step 41\x00")
    assert sdk.checkpoint.load() == b"step 41\x00"
    sdk.checkpoint.save(bytearray(b"x" * sdk.CHECKPOINT_MAX))
    sdk.progress(0.5, "halfway")
    sdk.progress(1)
    assert served.leader.progress == (1.0, "")
    assert [c.op for c in served.leader.calls][-2:] == ["progress", "progress"]
    assert all(c.task == REF for c in served.leader.calls)


def test_the_sdk_says_clearly_what_went_wrong(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(sdk.TaskCallError, match="65537 bytes is over the checkpoint limit"):
        sdk.checkpoint.save(b"x" * (sdk.CHECKPOINT_MAX + 1))
    with pytest.raises(TypeError, match="bytes, not str"):
        sdk.checkpoint.save("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 0 and 1"):
        sdk.progress(2)
    with pytest.raises(ValueError, match="over the limit of 256"):
        sdk.progress(0.1, "m" * 300)
    served.leader.refuse = "task j1/2 attempt 3 is not the current attempt"
    with pytest.raises(sdk.TaskCallError, match="^checkpoint.save: task j1/2 attempt 3 is not the current"):
        sdk.checkpoint.save(b"late")
    served.leader.refuse = "raise"
    with pytest.raises(sdk.TaskCallError, match="progress: RuntimeError: the link broke"):
        sdk.progress(0.2)
    served.attempts.remove(served.secret)  # the attempt ended
    with pytest.raises(sdk.TaskCallError, match="unknown task secret"):
        sdk.checkpoint.load()
    monkeypatch.delenv(sdk.SOCKET_ENV)
    with pytest.raises(sdk.TaskCallError, match="not inside a Rota task"):
        sdk.checkpoint.load()
    monkeypatch.setenv(sdk.SOCKET_ENV, str(Path(served.server.path).with_name("gone.sock")))
    with pytest.raises(sdk.TaskCallError, match="cannot reach the executor"):
        sdk.progress(0.3)


def test_the_socket_refuses_what_is_too_long_or_too_many_and_keeps_serving(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = served.secret
    # several requests on one connection, answered in order; a bad one does not end it
    answers = served.raw(line(secret=s, op="progress", fraction=0.1) + b"{}\n" + line(secret=s, op="x"), True)
    assert [a["ok"] for a in answers] == [True, False, False]
    assert "no 'secret'" in answers[1]["error"] and "unknown op 'x'" in answers[2]["error"]
    # a line over the limit: told so, and the connection ends
    too_long = served.raw(b"{" + b" " * (sdk.LINE_MAX + 10), shut=True)
    assert too_long == [{"ok": False, "error": f"the request is longer than {sdk.LINE_MAX} bytes"}]
    assert served.raw(b'{"secret": 1', shut=True)[0]["error"] == "the request does not end with a newline"
    # calls in flight for one attempt are bounded
    hold = asyncio.Event()
    served.leader.hold = hold
    socks = []
    for _ in range(task_calls.MAX_IN_FLIGHT):
        c = socket.socket(socket.AF_UNIX)
        c.connect(served.server.path)
        c.sendall(line(secret=s, op="progress", fraction=0.5))
        socks.append(c)
    deadline = 100
    while len(served.leader.calls) < 3 + task_calls.MAX_IN_FLIGHT and deadline:
        served.run(asyncio.sleep(0.02))
        deadline -= 1
    refused = served.raw(line(secret=s, op="checkpoint.load"))
    assert refused == [
        {"ok": False, "error": f"this attempt has {task_calls.MAX_IN_FLIGHT} calls in flight already"}
    ]
    served.loop.call_soon_threadsafe(hold.set)
    for c in socks:
        c.settimeout(10)
        assert json.loads(c.recv(1000)) == {"ok": True}
        c.close()
    # connections are bounded too
    monkeypatch.setattr(task_calls, "MAX_CONNECTIONS", 1)
    with socket.socket(socket.AF_UNIX) as first:
        first.connect(served.server.path)
        first.sendall(line(secret=s, op="progress", fraction=0.6))
        first.settimeout(10)
        assert json.loads(first.recv(1000)) == {"ok": True}
        assert served.raw(line(secret=s, op="checkpoint.load"))[0]["error"].startswith("too many connections")
    assert served.leader.progress == (0.6, "")


def test_the_socket_goes_to_a_short_dir_when_the_work_dir_is_too_deep(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    s = Served(deep)
    try:
        path = s.server.path
        assert not path.startswith(str(deep)) and len(path) <= task_calls.SOCKET_PATH_MAX
        assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == "0o711"
    finally:
        s.close()
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


# -- the rota-task program ------------------------------------------------------------------------


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = sdk.main(args)
    return code, capsys.readouterr().err


def test_the_program_saves_loads_and_reports(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(["checkpoint", "load"], capsys) == (1, "")  # none yet: exit 1, quietly
    state = tmp_path / "state.json"
    state.write_bytes(b'{"step": 7}')
    assert cli(["checkpoint", "save", str(state)], capsys) == (0, "")
    back = tmp_path / "back.json"
    assert cli(["checkpoint", "load", str(back)], capsys) == (0, "")
    assert back.read_bytes() == b'{"step": 7}'
    assert cli(["progress", "0.75", "three quarters"], capsys) == (0, "")
    assert served.leader.progress == (0.75, "three quarters")

    for usage in (
        [],
        ["checkpoint"],
        ["checkpoint", "save"],
        ["checkpoint", "load", "a", "b"],
        ["progress"],
        ["progress", "half"],
        ["progress", "1.5"],
        ["progress", "0.5", "m" * 257],
        ["checkpoint", "save", str(tmp_path / "missing")],
        ["frobnicate"],
    ):
        code, err = cli(usage, capsys)
        assert code == 2, usage
        assert err.startswith("rota-task: ") and "Usage: rota-task" in err
    big = tmp_path / "big"
    big.write_bytes(b"x" * (sdk.CHECKPOINT_MAX + 1))
    code, err = cli(["checkpoint", "save", str(big)], capsys)
    assert code == 3 and "over the checkpoint limit of 65536 bytes" in err
    served.leader.refuse = "stale attempt"
    assert cli(["progress", "0.9"], capsys) == (3, "rota-task: progress: stale attempt\n")
    monkeypatch.delenv(sdk.SECRET_ENV)
    code, err = cli(["checkpoint", "load"], capsys)
    assert code == 3 and "not inside a Rota task" in err


def test_the_program_runs_as_a_module_and_reads_standard_input(served: Served) -> None:
    import subprocess

    env = {**os.environ, **served.env}
    saved = subprocess.run(
        [sys.executable, "-m", "rota.task", "checkpoint", "save", "-"], input=b"\x01\x02", env=env, timeout=60
    )
    assert saved.returncode == 0
    loaded = subprocess.run(
        [sys.executable, "-m", "rota.task", "checkpoint", "load"], capture_output=True, env=env, timeout=60
    )
    assert (loaded.returncode, loaded.stdout) == (0, b"\x01\x02")


def test_importing_the_sdk_needs_no_grpc() -> None:
    import subprocess

    code = "import sys, rota.task; assert 'grpc' not in sys.modules, 'grpc imported'; import rota; rota.task.progress"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the runner gives each attempt its variables; the link passes calls on -------------------------


class Reports:
    executor_id = "e"

    def __init__(self) -> None:
        self.sent: list[rota_pb2.TaskReport] = []

    def send(self, report: rota_pb2.TaskReport) -> None:
        self.sent.append(report)


def conf(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        name="e", join=["127.0.0.1:1"], addr="", slots=2, labels={}, keepalive_ttl=5,
        keepalive_interval=1, work_dir=str(tmp_path),
    )  # fmt: skip


CODE = """
import os, rota.task
old = rota.task.checkpoint.load()
rota.task.checkpoint.save(b"from " + os.environ["ROTA_ATTEMPT"].encode())
rota.task.progress(0.5, "half")
print(old, os.environ["ROTA_TASK_SECRET"] != "", os.environ.get("ROTA_TASK_CLI", "none"))
"""


def test_an_attempt_calls_with_its_own_secret_in_python_and_call_tasks(tmp_path: Path) -> None:
    async def check() -> list[rota_pb2.TaskReport]:
        leader = FakeLeader()
        call = CallKind(1)
        runner = Runner(conf(tmp_path), {"python": PythonKind(1), "call": call})
        runner.reporter = Reports()
        await call.start()
        server = TaskCallServer(str(tmp_path), runner.attempts, leader.forward)
        await server.start()
        try:
            env = {"ROTA_ATTEMPT": "1", "ROTA_TASK_ID": "j/0"}
            runner.start(
                rota_pb2.TaskAssignment(
                    task=REF, kind="python", params_json=json.dumps({"code": CODE}).encode(), env=env
                )
            )
            while (REF.job_id, REF.index, REF.attempt) not in runner.unacked:
                await asyncio.sleep(0.05)
            ref2 = rota_pb2.TaskRef(job_id="j1", index=3, attempt=1)
            params = {"function": "rota.task:progress", "args": [0.9, "from a call"]}
            runner.start(
                rota_pb2.TaskAssignment(
                    task=ref2, kind="call", params_json=json.dumps(params).encode(), env=env
                )
            )
            while (ref2.job_id, ref2.index, ref2.attempt) not in runner.unacked:
                await asyncio.sleep(0.05)
            assert len(runner.attempts) == 0  # each secret went with its attempt
            assert leader.progress == (0.9, "from a call") and leader.calls[-1].task == ref2
            assert leader.checkpoint == b"from 1" and leader.calls[0].task == REF
            return list(runner.unacked.values())
        finally:
            await server.close()
            await runner.kill_all()
            await call.close()

    python, called = asyncio.run(check())
    assert python.error == "" and python.exit_code == 0, python
    assert python.stdout.split() == ["None", "True", task_calls.cli_path() or "none"]
    assert called.state == "SUCCEEDED" and called.error == "", called


def test_the_link_passes_a_call_on_and_matches_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def check() -> None:
        runner = Runner(conf(tmp_path), {})
        link = Link(conf(tmp_path), runner, Lease(5))
        monkeypatch.setattr(link_mod, "CALL_ATTACH_WAIT", 0.05)
        lonely = await link.task_call(rota_pb2.TaskCall(task=REF, op="progress"))
        assert not lonely.ok and lonely.error.startswith("not connected to a leader")

        link._outbox = asyncio.Queue()
        link._up.set()
        asked = [
            asyncio.ensure_future(link.task_call(rota_pb2.TaskCall(task=REF, op=op)))
            for op in ("checkpoint.load", "progress")
        ]
        sent = [(await link._outbox.get()).task_call for _ in asked]
        assert [m.op for m in sent] == ["checkpoint.load", "progress"] and sent[0].call_id != sent[1].call_id

        class Stream:
            def __init__(self, *msgs: rota_pb2.LeaderMessage) -> None:
                self.msgs = list(msgs)

            async def read(self) -> Any:
                return self.msgs.pop(0) if self.msgs else grpc.aio.EOF

        await link._read(Stream(  # answered out of order; an unknown id is ignored
            rota_pb2.LeaderMessage(task_call_reply=rota_pb2.TaskCallReply(call_id=sent[1].call_id, ok=True)),
            rota_pb2.LeaderMessage(task_call_reply=rota_pb2.TaskCallReply(call_id=999, ok=True)),
            rota_pb2.LeaderMessage(task_call_reply=rota_pb2.TaskCallReply(
                call_id=sent[0].call_id, ok=True, found=True, data=b"blob")),
        ))  # fmt: skip
        load, prog = await asyncio.gather(*asked)
        assert (load.found, load.data, prog.ok) == (True, b"blob", True)
        assert not link._calls

        monkeypatch.setattr(link_mod, "CALL_REPLY_TIMEOUT", 0.05)
        unanswered = await link.task_call(rota_pb2.TaskCall(task=REF, op="progress"))
        assert not unanswered.ok and "did not answer" in unanswered.error and not link._calls
        # A barrier is not refused for want of an answer: the task asks again.
        waiting = await link.task_call(rota_pb2.TaskCall(task=REF, op="barrier", name="b", parties=2))
        assert waiting.ok and not waiting.ready and not link._calls
        link._outbox = None
        link._up.clear()
        lonely = await link.task_call(rota_pb2.TaskCall(task=REF, op="barrier", name="b", parties=2))
        assert lonely.ok and not lonely.ready

    asyncio.run(check())


# -- barriers ---------------------------------------------------------------------------------------


def test_barrier_requests_are_checked() -> None:
    held: list[str] = []
    attempts = attempts_with(held)
    s = held[0]
    req = parse(line(secret=s, op="barrier", name="start", parties=5), attempts)
    assert (req.op, req.name, req.parties, req.round) == ("barrier", "start", 5, None)
    req = parse(line(secret=s, op="barrier", name="ddl", parties=2, round=0), attempts)
    assert req.round == 0 and req.checkpoint is None
    req = parse(line(secret=s, op="barrier", name="ddl", parties=2, checkpoint="c3RhdGU="), attempts)
    assert req.checkpoint == b"state"
    for body, needle in (
        ({"parties": 2}, "needs 'name'"),
        ({"name": "", "parties": 2}, "needs 'name'"),
        ({"name": "x" * 65, "parties": 2}, "65 characters, over the limit of 64"),
        ({"name": "a"}, "needs 'parties'"),
        ({"name": "a", "parties": True}, "needs 'parties'"),
        ({"name": "a", "parties": 0}, "needs 'parties'"),
        ({"name": "a", "parties": 2**31}, "needs 'parties'"),
        ({"name": "a", "parties": 2, "data": ""}, "barrier takes no field 'data'"),
        ({"name": "a", "parties": 2, "round": -1}, "'round' must be a whole number from 0"),
        ({"name": "a", "parties": 2, "round": "1"}, "'round' must be a whole number from 0"),
        ({"name": "a", "parties": 2, "round": 2**62 + 1}, "'round' must be a whole number from 0"),
        ({"name": "a", "parties": 2, "checkpoint": 5}, "'checkpoint' must be the checkpoint in base64"),
        ({"name": "a", "parties": 2, "checkpoint": "!!"}, "'checkpoint' is not valid base64"),
        (
            {"name": "a", "parties": 2, "checkpoint": base64.b64encode(b"x" * 65537).decode()},
            "65537 bytes is over the checkpoint limit",
        ),
    ):
        with pytest.raises(Refused, match=needle):
            parse(line(secret=s, op="barrier", **body), attempts)


def test_the_sdk_waits_at_a_barrier_asking_again_until_released(served: Served, capsys) -> None:
    not_yet = rota_pb2.TaskCallReply(ok=True, ready=False, addr="2/3")
    released = rota_pb2.TaskCallReply(ok=True, ready=True, released_us=1_700_000_000_250_000)
    served.leader.barrier_replies = [not_yet, not_yet, released]
    assert sdk.barrier("start", 3) == 1_700_000_000.25  # the leader's release time, for all parties
    calls = [c for c in served.leader.calls if c.op == "barrier"]
    assert [(c.name, c.parties) for c in calls] == [("start", 3)] * 3
    assert task_calls.reply_for("barrier", not_yet) == {
        "ok": True,
        "ready": False,
        "arrived": 2,
        "parties": 3,
    }
    served.leader.barrier_replies = [not_yet] * 100_000
    with pytest.raises(
        sdk.TaskCallError, match=r"barrier 'start': not released within 0.2s \(2 of 3 tasks arrived\)"
    ):
        sdk.barrier("start", 3, timeout=0.2)
    assert cli(["barrier", "start", "3", "--timeout", "0.1"], capsys)[0] == 3
    served.leader.barrier_replies = []
    assert cli(["barrier", "start", "3"], capsys) == (0, "")
    assert cli(["barrier", "start", "--timeout", "1", "3"], capsys) == (0, "")
    for args in (
        ["barrier", "start"],
        ["barrier", "a/b", "2"],
        ["barrier", "a", "x"],
        ["barrier", "a", "2", "--timeout"],
    ):
        assert cli(args, capsys)[0] == 2, args
    served.leader.refuse = "barrier 'start' has 3 parties (set by its first arrival); this call says 4"
    code, err = cli(["barrier", "start", "4"], capsys)
    assert code == 3 and "has 3 parties" in err
    with pytest.raises(ValueError, match="1 to 64 characters"):
        sdk.barrier("", 2)
    with pytest.raises(TypeError, match="whole number"):
        sdk.barrier("a", 2.0)  # type: ignore[arg-type]


def test_the_sdk_and_the_command_send_a_cyclic_barrier_round(served: Served, capsys) -> None:
    sdk.barrier("ddl", 2, round=0)
    assert cli(["barrier", "ddl", "2", "--round", "7", "--timeout", "5"], capsys) == (0, "")
    sdk.barrier("plain", 2)
    calls = [c for c in served.leader.calls if c.op == "barrier"]
    assert [(c.name, c.HasField("round"), c.round) for c in calls] == [
        ("ddl", True, 0),
        ("ddl", True, 7),
        ("plain", False, 0),
    ]
    not_yet = rota_pb2.TaskCallReply(ok=True, ready=False, addr="1/2")
    served.leader.barrier_replies = [not_yet] * 100_000
    with pytest.raises(sdk.TaskCallError, match=r"barrier 'ddl' round 3: not released within"):
        sdk.barrier("ddl", 2, timeout=0.1, round=3)
    for args in (
        ["barrier", "a", "2", "--round"],
        ["barrier", "a", "2", "--round", "x"],
        ["barrier", "a", "2", "--round", "-1"],
    ):
        assert cli(args, capsys)[0] == 2, args
    with pytest.raises(TypeError, match="round must be a whole number"):
        sdk.barrier("a", 2, round=1.0)  # type: ignore[arg-type]


def test_the_sdk_and_the_command_send_a_checkpoint_with_an_arrival_on_every_ask(
    served: Served, capsys, tmp_path
) -> None:
    not_yet = rota_pb2.TaskCallReply(ok=True, ready=False, addr="1/2")
    served.leader.barrier_replies = [not_yet, rota_pb2.TaskCallReply(ok=True, ready=True)]
    sdk.barrier("ddl", 2, round=1, checkpoint=b"positions")
    (tmp_path / "ckpt").write_bytes(b"from a file")
    assert cli(["barrier", "ddl", "2", "--checkpoint", str(tmp_path / "ckpt")], capsys) == (0, "")
    sdk.barrier("plain", 2)
    calls = [c for c in served.leader.calls if c.op == "barrier"]
    # Asked again while not released: the same checkpoint again (the leader may not have it yet).
    assert [(c.name, c.HasField("checkpoint"), c.checkpoint) for c in calls] == [
        ("ddl", True, b"positions"),
        ("ddl", True, b"positions"),
        ("ddl", True, b"from a file"),
        ("plain", False, b""),
    ]
    with pytest.raises(TypeError, match="a checkpoint is bytes"):
        sdk.barrier("a", 2, checkpoint="text")  # type: ignore[arg-type]
    with pytest.raises(sdk.TaskCallError, match="barrier: 65537 bytes is over the checkpoint limit"):
        sdk.barrier("a", 2, checkpoint=b"x" * 65537)
    assert cli(["barrier", "a", "2", "--checkpoint", str(tmp_path / "missing")], capsys)[0] == 2

"""Task logs: which task a name means, the executor's log store and its TaskLogs stream (no network)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from rota.client.api import RequestError
from rota.client.tasklogs import pick_task
from rota.executor import tasklogs
from rota.executor.kinds.base import LOG_FILE_CAP, LOG_TRUNCATED_MARK, OUTPUT_CAP, TaskResult, TaskSpec
from rota.executor.kinds.shell import ShellKind
from rota.protos import rota_pb2

# -- which task (client side, pure) ----------------------------------------------------------------


def job(*names: str) -> dict[str, Any]:
    return {
        "id": "j1",
        "tasks": [
            {"id": f"j1/{i}", "name": n, "state": "RUNNING", "attempt": 1, "executor": "e", "result": None}
            for i, n in enumerate(names)
        ],
    }


def test_a_job_of_one_task_needs_no_task_argument():
    assert pick_task(job("greet"), None)["id"] == "j1/0"


@pytest.mark.parametrize("arg, want", [("pi-shard1", "j1/1"), ("j1/2", "j1/2"), ("2", "j1/2")])
def test_a_task_is_named_by_name_id_or_index(arg, want):
    assert pick_task(job("pi-shard0", "pi-shard1", "pi-shard2"), arg)["id"] == want


def test_an_id_wins_over_a_task_whose_name_looks_like_an_index():
    assert pick_task(job("1", "other"), "1")["id"] == "j1/1"


def test_several_tasks_and_no_task_argument_lists_the_names():
    with pytest.raises(RequestError, match="has 2 tasks; name one of: a, b"):
        pick_task(job("a", "b"), None)


def test_an_unknown_task_lists_the_names_but_not_thousands():
    with pytest.raises(RequestError, match=r"no task 'c'; its tasks: t0, t1, .* and 980 more") as e:
        pick_task(job(*(f"t{i}" for i in range(1000))), "c")
    assert "t20" not in str(e.value)


# -- the executor's store (pure parts) --------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id, index, attempt, message",
    [
        ("../etc", 0, 0, "malformed job id"),
        ("", 0, 0, "malformed"),
        ("j", -1, 0, "index"),
        ("j", 0, -2, "attempt"),
    ],
)
def test_bad_requests_are_refused(job_id, index, attempt, message):
    with pytest.raises(ValueError, match=message):
        tasklogs.check_request(job_id, index, attempt)


def test_log_names_round_trip_and_strangers_are_ignored():
    assert tasklogs.parse_log_name(tasklogs.log_name(12, 3) + ".err") == (12, 3)
    assert tasklogs.parse_log_name("12.3.txt") is None
    assert tasklogs.parse_log_name("x.1.out") is None


# -- the store on a disk of its own ---------------------------------------------------------------


def test_a_kind_that_does_not_stream_gets_its_output_written_at_the_end(tmp_path):
    store = tasklogs.LogStore(tmp_path)
    key = ("j", 0, 1)
    prefix = store.begin(key, files=True)
    assert prefix == str(tmp_path / "j" / "0.1") and store.known(key)
    store.end(key, TaskResult(ok=True, stdout="out\n", stderr="err\n"))
    assert Path(prefix + ".out").read_text() == "out\n" and Path(prefix + ".err").read_text() == "err\n"
    assert store.kept[key] == 8 and key not in store.live


def test_captured_output_gets_files_only_when_there_is_some(tmp_path):
    """The call kind captures output: an attempt that printed nothing touches no disk at all."""
    store = tasklogs.LogStore(tmp_path)
    quiet, chatty = ("j", 0, 1), ("j", 1, 1)
    assert store.begin(quiet, files=None) == "" and store.begin(chatty, files=None) == ""
    store.end(quiet, TaskResult(ok=True, value=42))
    assert not (tmp_path / "j").exists() and store.known(quiet) and quiet not in store.kept
    store.end(chatty, TaskResult(ok=True, stdout="hello\n"))
    prefix = store.prefix(chatty)
    assert Path(prefix + ".out").read_text() == "hello\n" and Path(prefix + ".err").read_text() == ""
    assert store.kept[chatty] == 6


def test_streamed_files_are_not_overwritten_by_the_capped_result(tmp_path):
    store = tasklogs.LogStore(tmp_path)
    key = ("j", 0, 1)
    prefix = store.begin(key, files=True)
    Path(prefix + ".out").write_text("everything\n")
    store.end(key, TaskResult(ok=True, stdout="capped"))
    assert Path(prefix + ".out").read_text() == "everything\n"


def test_old_attempts_are_pruned_and_a_restart_finds_the_rest(tmp_path):
    store = tasklogs.LogStore(tmp_path, keep_attempts=2)
    for i in range(3):
        store.begin(("j", i, 1), files=True)
        store.end(("j", i, 1), TaskResult(ok=True, stdout=f"task {i}\n"))
    assert list(store.kept) == [("j", 1, 1), ("j", 2, 1)] and store.kept_bytes == 14
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["1.1.err", "1.1.out", "2.1.err", "2.1.out"]
    again = tasklogs.LogStore(tmp_path)
    assert list(again.kept) == [("j", 1, 1), ("j", 2, 1)] and again.kept_bytes == 14
    assert again.latest("j", 2) == 1 and again.latest("j", 0) == 0


def test_the_byte_budget_prunes_too(tmp_path):
    store = tasklogs.LogStore(tmp_path, keep_bytes=25)
    for i in range(4):
        store.begin(("j", i, 1), files=True)
        store.end(("j", i, 1), TaskResult(ok=True, stdout="x" * 10))
    assert list(store.kept) == [("j", 2, 1), ("j", 3, 1)] and store.kept_bytes == 20


def test_logs_go_when_their_jobs_retention_has_passed(tmp_path):
    """The job's retention comes with the task; files found at start are kept the default time
    from their last write."""
    now = [1_000_000.0]
    store = tasklogs.LogStore(tmp_path, wall=lambda: now[0])
    for i, keep_for in enumerate((60.0, 3600.0, 0.0, float("nan"))):
        store.begin(("j", i, 1), files=True)
        store.end(("j", i, 1), TaskResult(ok=True, stdout="x"), keep_for)
    now[0] += 59.9
    assert store.expire() == 0
    now[0] += 0.1
    assert store.expire() == 1 and ("j", 0, 1) not in store.kept
    assert not Path(store.prefix(("j", 0, 1)) + ".out").exists() and store.kept_bytes == 3
    now[0] += 3600
    assert store.expire() == 1 and set(store.kept) == {("j", 2, 1), ("j", 3, 1)}  # the default: a day
    old = [Path(store.prefix(("j", 2, 1)) + s) for s in (".out", ".err")]
    for path in old:
        os.utime(path, (0, 0))  # written long ago: a restart finds them past the default retention
    again = tasklogs.LogStore(tmp_path)
    assert set(again.kept) == {("j", 3, 1)} and not any(p.exists() for p in old)


def test_attempts_that_print_nothing_get_no_files_and_push_no_logs_out(tmp_path):
    store = tasklogs.LogStore(tmp_path, keep_attempts=1)
    store.begin(("j", 0, 1), files=True)
    store.end(("j", 0, 1), TaskResult(ok=True, stdout="kept"))
    for i in range(1, 100):
        assert store.begin(("j", i, 1), files=False) == ""
        store.end(("j", i, 1), TaskResult(ok=True))
    assert list(store.kept) == [("j", 0, 1)]
    assert store.known(("j", 99, 1)) and sorted(p.name for p in (tmp_path / "j").iterdir()) == [
        "0.1.err",
        "0.1.out",
    ]


def test_pruning_the_last_attempt_of_a_job_removes_its_directory(tmp_path):
    store = tasklogs.LogStore(tmp_path, keep_attempts=1)
    for job_id in ("a", "b"):
        store.begin((job_id, 0, 1), files=True)
        store.end((job_id, 0, 1), TaskResult(ok=True, stdout="x"))
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


# -- the TaskLogs stream, without gRPC ---------------------------------------------------------------


class Aborted(Exception):
    pass


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Holder:
    """Stands in for the agent: which attempt of each task it holds."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, int], int] = {}

    def __call__(self, job_id: str, index: int) -> int:
        return self.held.get((job_id, index), 0)


async def collect(store, holder, **request) -> list[rota_pb2.LogChunk]:
    req = rota_pb2.TaskLogsRequest(**request)
    return [c async for c in tasklogs.serve(store, holder, req, FakeContext(), poll=0.01)]


def text(chunks, stream=rota_pb2.LogChunk.STDOUT) -> str:
    return b"".join(c.data for c in chunks if not c.notice and c.stream == stream).decode()


def test_follow_streams_output_as_it_is_written_and_ends_with_the_attempt(tmp_path):
    store, holder = tasklogs.LogStore(tmp_path), Holder()
    key = ("j", 4, 2)

    async def scenario():
        holder.held[("j", 4)] = 2
        prefix = store.begin(key, files=True)
        out = open(prefix + ".out", "wb", buffering=0)
        err = open(prefix + ".err", "wb", buffering=0)
        seen: list[tuple[float, bytes]] = []
        loop = asyncio.get_running_loop()

        async def follow():
            req = rota_pb2.TaskLogsRequest(job_id="j", index=4, follow=True)  # attempt 0: the latest
            async for c in tasklogs.serve(store, holder, req, FakeContext(), poll=0.01):
                seen.append((loop.time(), c.data))
                assert c.attempt == 2

        reader = asyncio.create_task(follow())
        for i in range(5):
            out.write(f"line {i}\n".encode())
            err.write(f"oops {i}\n".encode())
            await asyncio.sleep(0.05)
        first_seen_before_end = bool(seen)
        out.close()
        err.close()
        store.end(key, None)
        del holder.held[("j", 4)]
        await asyncio.wait_for(reader, 5)
        return first_seen_before_end, seen

    before_end, seen = asyncio.run(scenario())
    assert before_end
    assert b"".join(d for _, d in seen if d.startswith(b"line")) == b"".join(
        f"line {i}\n".encode() for i in range(5)
    )
    assert asyncio.run(collect(store, holder, job_id="j", index=4, attempt=2)) != []


def test_without_follow_a_finished_attempt_is_read_once_to_the_end(tmp_path):
    store, holder = tasklogs.LogStore(tmp_path), Holder()
    store.begin(("j", 0, 1), files=True)
    store.end(("j", 0, 1), TaskResult(ok=False, stdout="a" * 200_000, stderr="bad\n"))
    chunks = asyncio.run(collect(store, holder, job_id="j", index=0, attempt=1))
    assert text(chunks) == "a" * 200_000
    assert text(chunks, rota_pb2.LogChunk.STDERR) == "bad\n"
    assert max(len(c.data) for c in chunks) <= tasklogs.READ_CHUNK


def test_a_live_attempt_without_files_says_why(tmp_path):
    store, holder = tasklogs.LogStore(tmp_path), Holder()
    holder.held[("j", 0)] = 1
    (queued,) = asyncio.run(collect(store, holder, job_id="j", index=0))
    assert "queued" in queued.notice and queued.attempt == 1
    store.begin(("j", 0, 1), files=True)
    (waiting,) = asyncio.run(collect(store, holder, job_id="j", index=0))
    assert "comes when the attempt ends" in waiting.notice
    store.live[("j", 0, 1)] = False
    (silent,) = asyncio.run(collect(store, holder, job_id="j", index=0))
    assert "prints no output" in silent.notice
    store.live[("j", 0, 1)] = None  # captured, as the call kind does
    (captured,) = asyncio.run(collect(store, holder, job_id="j", index=0))
    assert "comes when the attempt ends" in captured.notice


def test_unknown_attempts_are_not_found_and_bad_ids_invalid(tmp_path):
    store, holder = tasklogs.LogStore(tmp_path), Holder()
    with pytest.raises(Aborted) as e:
        asyncio.run(collect(store, holder, job_id="j", index=0))
    assert e.value.args[0] == grpc.StatusCode.NOT_FOUND and "never ran here" in e.value.args[1]
    with pytest.raises(Aborted) as e:
        asyncio.run(collect(store, holder, job_id="../../etc", index=0))
    assert e.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT


# -- run_subprocess tees into the files, result unchanged ----------------------------------------------


def spec(tmp_path: Path, command: str, log_prefix: str) -> TaskSpec:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return TaskSpec("j", "j/0", 1, "shell", {"command": command}, {}, 30, str(work), log_prefix)


def test_a_shell_task_writes_its_whole_output_to_the_log_files(tmp_path):
    prefix = str(tmp_path / "0.1")
    big = OUTPUT_CAP * 2
    cmd = f"{sys.executable} -c \"import sys; sys.stdout.write('x' * {big}); sys.stderr.write('e')\""
    result = asyncio.run(ShellKind().run(spec(tmp_path, cmd, prefix)))
    assert result.ok and result.truncated and len(result.stdout) < big
    assert Path(prefix + ".out").read_bytes() == b"x" * big
    assert Path(prefix + ".err").read_bytes() == b"e" == result.stderr.encode()


def test_no_log_prefix_no_files(tmp_path):
    result = asyncio.run(ShellKind().run(spec(tmp_path, "echo hi", "")))
    assert result.stdout == "hi\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_a_log_file_stops_at_its_cap_with_a_marker(tmp_path, monkeypatch):
    from rota.executor.kinds import base

    monkeypatch.setattr(base, "LOG_FILE_CAP", 10)
    prefix = str(tmp_path / "0.1")
    result = asyncio.run(ShellKind().run(spec(tmp_path, "printf 0123456789abcdef", prefix)))
    assert result.stdout == "0123456789abcdef"
    assert Path(prefix + ".out").read_bytes() == b"0123456789" + LOG_TRUNCATED_MARK
    assert LOG_FILE_CAP > OUTPUT_CAP

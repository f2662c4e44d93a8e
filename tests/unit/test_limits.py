"""Task limits: parsing and bounds (job file and executor flags), what an attempt gets, the failure
reasons, and the cgroup bookkeeping against a stand-in cgroup directory."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from rota.common import limits as lim
from rota.common.config import ConfigError
from rota.common.jobspec import JobSpec, JobSpecError, load_job
from rota.common.limits import Limits, OverMaximum, effective
from rota.executor import confine
from rota.executor.config import AgentConfig
from rota.executor.runner import Runner
from rota.protos import rota_pb2

MiB = 1 << 20


def job(limits: str, kind: str = "shell") -> JobSpec:
    body = {"shell": 'command = "true"', "noop": "", "call": 'function = "os:getpid"'}[kind]
    return load_job(f'name = "j"\n[[task]]\nname = "t"\nkind = "{kind}"\n{body}\nlimits = {limits}\n')


def test_a_job_file_limits_table_is_parsed_into_seconds_and_bytes():
    spec = job('{ cpu = "1m30s", memory = "512MiB", processes = 32, file-size = "1GiB" }')
    assert spec.tasks[0].limits == Limits(cpu=90.0, memory=512 * MiB, processes=32, file_size=1 << 30)
    assert job('{ file_size = "2MiB" }').tasks[0].limits == Limits(file_size=2 * MiB)


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ('{ memory = "1KiB" }', "task[0].limits.memory", "from 4MiB"),
        ('{ memory = "lots" }', "task[0].limits.memory", "malformed size"),
        ('{ cpu = "0s" }', "task[0].limits.cpu", "positive duration"),
        ('{ cpu = "30d" }', "task[0].limits.cpu", "malformed duration"),
        ("{ processes = 0 }", "task[0].limits.processes", "from 1 to"),
        ("{ processes = true }", "task[0].limits.processes", "boolean"),
        ('{ file-size = "2PiB" }', "task[0].limits.file-size", "malformed size"),
        ('{ mem = "1GiB" }', "task[0].limits", "did you mean 'memory'"),
        ('"1GiB"', "task[0].limits", "expected a table"),
    ],
)
def test_a_bad_limit_is_refused_naming_its_key(table: str, key: str, words: str):
    with pytest.raises(JobSpecError) as e:
        job(table)
    assert e.value.key == key, e.value
    assert words in str(e.value)


def test_limits_on_a_kind_that_runs_no_process_are_refused():
    with pytest.raises(JobSpecError, match="runs no process"):
        job('{ memory = "64MiB" }', kind="noop")


def test_limits_survive_the_json_form_and_storage():
    spec = job('{ cpu = "2s", memory = "64MiB" }', kind="call")
    data = spec.to_dict()
    assert data["task"][0]["limits"] == {"cpu": 2.0, "memory": 64 * MiB}
    assert JobSpec.from_dict(data) == spec
    stored = JobSpec.from_stored(data)
    assert stored.tasks[0].limits == spec.tasks[0].limits
    assert "limits" not in stored.tasks[0].params


def test_the_assignment_carries_the_tasks_limits():
    from rota.scheduler.translate import assignment

    limited = job('{ processes = 8, file-size = "1MiB" }').tasks[0]

    class FakeJob:
        id, priority = "j", 50

    class FakeTask:
        job, index, copy, id, timeout, priority = FakeJob(), 0, 0, "j/0", None, 50
        spec = limited

    msg = assignment(FakeTask(), 1, b"{}", 0.0)  # type: ignore[arg-type]
    assert msg.HasField("limits")
    assert (msg.limits.processes, msg.limits.file_size, msg.limits.memory) == (8, MiB, 0)
    FakeTask.spec = job("{}").tasks[0]
    assert not assignment(FakeTask(), 1, b"{}", 0.0).HasField("limits")  # type: ignore[arg-type]


def test_executor_flags_parse_and_check_defaults_against_maxima():
    assert lim.parse_flag("timeout=24h,processes=4096") == Limits(timeout=86400.0, processes=4096)
    assert lim.parse_flag({"memory": "1GiB", "file-size": 10}) == Limits(memory=1 << 30, file_size=10)
    assert lim.parse_flag("") == Limits()
    with pytest.raises(ConfigError, match="malformed limit 'memory'"):
        lim.parse_flag("memory")
    with pytest.raises(ConfigError, match="^memory: "):
        lim.parse_flag("memory=1")
    with pytest.raises(ConfigError, match="unknown limit 'disk'"):
        lim.parse_flag("disk=1GiB")
    with pytest.raises(ConfigError, match="--task-default-limits: memory 2GiB is over"):
        lim.check_executor(Limits(memory=2 << 30), Limits(memory=1 << 30))
    assert Limits(cpu=2.5, memory=64 * MiB).describe() == "cpu=2.5s,memory=64MiB"


def test_a_task_gets_its_own_limits_else_the_default_else_the_maximum_and_never_more():
    defaults = Limits(processes=4096, timeout=86400.0)
    maxima = Limits(memory=1 << 30, timeout=7200.0, processes=8192)
    got = effective(Limits(memory=64 * MiB), defaults, maxima)
    assert got == Limits(memory=64 * MiB, processes=4096, timeout=86400.0)  # the default timeout: not checked
    assert effective(Limits(), Limits(), maxima) == maxima
    with pytest.raises(OverMaximum, match=r"memory 2GiB is over this executor's maximum of 1GiB"):
        effective(Limits(memory=2 << 30), defaults, maxima)
    with pytest.raises(OverMaximum, match="timeout 10800s is over"):
        effective(Limits(timeout=10800.0), defaults, maxima)


def test_the_runner_refuses_an_attempt_over_the_maximum_and_shares_plain_limits(tmp_path: Path):
    conf = AgentConfig(
        name="e",
        join=[],
        addr="",
        slots=1,
        labels={},
        keepalive_ttl=5,
        keepalive_interval=1,
        work_dir=str(tmp_path),
        task_defaults=Limits(processes=100, timeout=60.0),
        task_maxima=Limits(cpu=10.0),
    )

    async def check() -> None:
        runner = Runner(conf, {})
        plain = rota_pb2.TaskAssignment(kind="call")
        assert runner._bounds(plain) == (runner.plain_limits, 60.0)
        assert runner.plain_limits == Limits(cpu=10.0, processes=100)
        same = rota_pb2.TaskAssignment(kind="call", timeout=5.0)
        limits, timeout = runner._bounds(same)
        assert limits is runner.plain_limits and timeout == 5.0  # batched as before
        own = rota_pb2.TaskAssignment(kind="call", limits=rota_pb2.TaskLimits(memory=64 * MiB))
        assert runner._bounds(own)[0] == Limits(cpu=10.0, memory=64 * MiB, processes=100)
        with pytest.raises(OverMaximum, match="cpu 20s is over"):
            runner._bounds(rota_pb2.TaskAssignment(kind="call", limits=rota_pb2.TaskLimits(cpu=20.0)))

    asyncio.run(check())


@pytest.mark.parametrize(
    ("limits", "code", "stderr", "reason"),
    [
        (Limits(cpu=1.0), -signal.SIGXCPU, "", "cpu limit 1s exceeded (SIGXCPU)"),
        (Limits(cpu=1.0), 128 + signal.SIGXCPU, "", "cpu limit 1s exceeded (SIGXCPU)"),
        (Limits(file_size=MiB), -signal.SIGXFSZ, "", "file-size limit 1MiB exceeded (SIGXFSZ)"),
        (Limits(file_size=MiB), 1, "OSError: [Errno 27] File too large", "file-size limit 1MiB exceeded"),
        (Limits(memory=64 * MiB), 1, "MemoryError", "memory limit 64MiB exceeded"),
        (Limits(memory=64 * MiB), 1, "no such file", ""),
        (Limits(), -signal.SIGXCPU, "", ""),
        (Limits(cpu=1.0), 0, "", ""),
    ],
)
def test_the_failure_reason_names_the_limit(limits: Limits, code: int, stderr: str, reason: str):
    got = confine.Confinement(limits, None).verdict(code, stderr)
    assert got.startswith(reason) and bool(got) == bool(reason), got


def test_rlimits_for_the_child():
    import resource

    pairs = dict(confine.rlimits(Limits(cpu=1.5, memory=64 * MiB, file_size=MiB, processes=5)))
    assert pairs == {
        resource.RLIMIT_CPU: (2, 3),
        resource.RLIMIT_FSIZE: (MiB, MiB),
        resource.RLIMIT_DATA: (64 * MiB, 64 * MiB),
    }
    assert resource.RLIMIT_DATA not in dict(confine.rlimits(Limits(memory=MiB * 64), memory=False))


def fake_cgroup(path: Path, controllers: str = "cpu memory pids", subtree: str = "", procs: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(subtree + "\n")
    (path / "cgroup.procs").write_text(procs)
    return path


def fake_proc(tmp_path: Path, cgroup_path: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    mount = tmp_path / "cg"
    (proc / "mountinfo").write_text(
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        f"40 31 0:37 / {mount} rw,relatime - cgroup2 cgroup2 rw\n"
    )
    (proc / "cgroup").write_text(f"1:name=systemd:/\n0::{cgroup_path}\n")
    return proc


def test_auto_falls_back_to_rlimits_when_its_cgroup_is_shared_or_lacks_controllers(tmp_path: Path):
    proc = str(fake_proc(tmp_path, "/session"))
    fake_cgroup(tmp_path / "cg" / "session", procs=f"{os.getpid()}\n1\n")
    m = confine.setup("auto", proc)
    assert m.cgroups is None and "holds other processes" in m.why
    fake_cgroup(tmp_path / "cg" / "session", controllers="cpu", procs=f"{os.getpid()}\n")
    m = confine.setup("auto", proc)
    assert m.cgroups is None and "no memory and pids" in m.why
    assert confine.setup("off").why == "--cgroup off"
    assert "not a cgroup v2 directory" in confine.setup(str(tmp_path)).why


def test_a_given_cgroup_holds_one_cgroup_per_attempt_with_its_limits(tmp_path: Path):
    parent = fake_cgroup(tmp_path / "delegated")
    real_mkdir = os.mkdir

    def mkdir_with_files(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        """Like the kernel, which fills a new cgroup directory with its interface files."""
        real_mkdir(path, mode)
        fake_cgroup(Path(path))
        for name in ("memory.max", "memory.swap.max", "pids.max"):
            (Path(path) / name).write_text("max\n")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "mkdir", mkdir_with_files)
        m = confine.setup(str(parent))
        assert m.cgroups is not None, m.why
        assert m.cgroups.path == str(parent / f"rota-{os.getpid()}")
        assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids"
        c = confine.Confinement(Limits(memory=64 * MiB, processes=32), m.cgroups)
    cg = Path(c.cgroup)
    assert cg.parent == Path(m.cgroups.path)
    assert (cg / "memory.max").read_text() == str(64 * MiB)
    assert (cg / "memory.swap.max").read_text() == "0"
    assert (cg / "pids.max").read_text() == "32"
    assert c.preexec() is not None  # joins the cgroup even without rlimits
    (cg / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert c.verdict(-signal.SIGKILL, "") == "memory limit 64MiB exceeded (oom-kill)"
    (cg / "memory.events").write_text("oom_kill 0\n")
    (cg / "pids.events").write_text("max 7\n")
    assert c.verdict(1, "") == "process limit 32 reached (a fork failed)"
    c.kill()
    assert (cg / "cgroup.kill").read_text() == "1"

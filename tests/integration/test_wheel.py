"""The built wheel on its own: one import name, its data files, and a cluster run from a fresh venv.

Builds the wheel from a copy of the checkout (so no stale ``build/`` and no concurrent build touch the
repository), checks what it holds, installs it with its dependencies into a new virtualenv and, from
a directory outside the repository, imports ``rota``, runs the three programs' ``--help`` and runs a
one-master cluster (embedded etcd) and one executor that compute ``operator:mul(6, 7)``.
Needs ``make`` to have run (.venv and the generated protos), ``etcd`` on PATH and PyPI (or pip's cache).
"""

from __future__ import annotations

import configparser
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from rota.client.api import Client, NoMasterReachable
from rota.common.procs import die_with_parent, free_ports
from rota.devtools.localcluster import Process

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
DEV_VENV = ROOT / ".venv"
DEV_PYTHON = DEV_VENV / "bin" / "python"
# The repository's folders installed as rota.<name>: none may be importable under its own name.
PARTS = ["scheduler", "executor", "metastore", "protos", "common", "client"]
PROGRAMS = ["master", "executor", "master-client", "rota-task"]
# What the wheel is built from: the checkout minus everything built, cached or installed.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "bin", "*.egg-info", "__pycache__", ".*_cache", "demo-logs"
)
PIP_TIMEOUT = 600

CHECK_IMPORTS = """
import importlib.util, json, sys
import rota
from rota import AsyncClient, Client
from rota.scheduler import http_api
print(json.dumps({
    "rota": rota.__file__,
    "client": [Client.__module__, AsyncClient.__module__],
    "http_api_files": sorted(p.name for p in http_api.HERE.rglob("*") if not p.name.endswith((".py", ".pyc"))),
    "top_level": {name: importlib.util.find_spec(name) is not None for name in sys.argv[1:]},
}))
"""

RUN_JOB = """
import json, sys
from rota import Client
job = {
    "name": "wheel-smoke",
    "task": [{"name": "mul", "kind": "call", "function": "operator:mul", "args": [6, 7]}],
}
with Client(sys.argv[1], timeout=30) as c:
    submitted = c.submit_job(job)
    print(json.dumps(c.wait_job(submitted["id"], timeout=60)))
"""


def run(argv: list[str | Path], what: str, timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run one command to completion; fail the test, with its output, unless it exits 0."""
    cmd = [str(a) for a in argv]
    try:
        p = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=die_with_parent(),
            **kwargs,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} took over {timeout:g}s\n$ {' '.join(cmd)}\n--- output\n{e.stdout}\n{e.stderr}")
    assert p.returncode == 0, (
        f"{what} exited {p.returncode}\n$ {' '.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
    )
    return p


def base_python() -> Path:
    """The interpreter .venv was made from (pyvenv.cfg), so the fresh venv runs the same Python."""
    cfg = DEV_VENV / "pyvenv.cfg"
    assert cfg.exists(), f"{cfg} is missing: run `make` first"
    conf = {}
    for line in cfg.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            conf[key.strip()] = value.strip()
    candidates = []
    if conf.get("executable"):
        candidates.append(Path(conf["executable"]))
    if conf.get("home"):
        major_minor = ".".join(conf.get("version", "").split(".")[:2])
        candidates += [Path(conf["home"]) / f"python{major_minor}", Path(conf["home"]) / "python3"]
    candidates.append(Path(getattr(sys, "_base_executable", sys.executable)))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(f"no base interpreter for a fresh venv: tried {', '.join(map(str, candidates))}")


def fresh_env(venv: Path) -> dict[str, str]:
    """The environment of a user of the installed wheel: nothing of the repository or of .venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV")
    }
    path = [
        p for p in env.get("PATH", "").split(os.pathsep) if p and not Path(p).resolve().is_relative_to(ROOT)
    ]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    return env


def build_wheel(tmp: Path) -> Path:
    for generated in ("rota_pb2.py", "rota_pb2_grpc.py"):
        assert (ROOT / "protos" / generated).exists(), f"protos/{generated} is missing: run `make` first"
    assert DEV_PYTHON.exists(), f"{DEV_PYTHON} is missing: run `make` first"
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE, symlinks=True)
    dist = tmp / "dist"
    run(
        [
            DEV_PYTHON,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            dist,
            src,
        ],
        "building the wheel",
        timeout=300,
        cwd=tmp,
    )
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel, got {[w.name for w in wheels]}"
    return wheels[0]


def check_wheel(wheel: Path, src: Path) -> None:
    """One import name, every module and data file, entry points into rota."""
    project = tomllib.loads((src / "pyproject.toml").read_text())
    version = project["project"]["version"]
    assert wheel.name == f"rota-{version}-py3-none-any.whl", wheel.name
    dist_info = f"rota-{version}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        record = zf.read(f"{dist_info}/RECORD").decode()
        top_level = (
            zf.read(f"{dist_info}/top_level.txt").decode() if f"{dist_info}/top_level.txt" in names else None
        )
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()

    recorded = {row[0] for row in csv.reader(io.StringIO(record)) if row}
    assert recorded == names, f"RECORD and the archive differ: {sorted(recorded ^ names)}"
    stray = sorted(n for n in names if not n.startswith(("rota/", f"{dist_info}/")))
    assert not stray, f"files outside rota/ and {dist_info}/: {stray}"
    if top_level is not None:
        assert top_level.split() == ["rota"], f"top_level.txt says {top_level!r}"

    # Every module of every folder installed as rota.<part> (the generated protos too), the dashboard
    # and the OpenAPI document the master serves.
    expected = {"rota/protos/rota_pb2.py", "rota/protos/rota_pb2_grpc.py", "rota/scheduler/openapi.yaml"}
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        for f in (src / folder).rglob("*.py"):
            expected.add("/".join([*package.split("."), *f.relative_to(src / folder).parts]))
    dashboard = [f.name for f in (src / "scheduler" / "dashboard").iterdir() if f.is_file()]
    assert "index.html" in dashboard, dashboard
    expected |= {f"rota/scheduler/dashboard/{name}" for name in dashboard}
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"

    eps = configparser.ConfigParser(delimiters=("=",))
    eps.optionxform = str  # type: ignore[assignment,method-assign]
    eps.read_string(entry_points)
    assert sorted(eps["console_scripts"]) == sorted(PROGRAMS), dict(eps["console_scripts"])
    assert len(eps["rota.kinds"]) > 0 and "fanout" in eps["rota.jobs"], entry_points
    for group in ("console_scripts", "rota.kinds", "rota.jobs"):
        for name, target in eps[group].items():
            module = target.split(":")[0].strip()
            assert module.startswith("rota."), f"{group} {name} = {target} points outside rota"
            path = module.replace(".", "/")
            assert {f"{path}.py", f"{path}/__init__.py"} & names, f"{group} {name} = {target}: no such module"


def wait_until_ready(master: Process, executor: Process | None, addr: str, timeout: float = 60.0) -> None:
    """Until the master names a leader (and, with ``executor``, lists it ready)."""
    deadline = time.monotonic() + timeout
    with Client(addr, timeout=2.0) as c:
        while True:
            for p in (master, executor):
                if p is not None and not p.alive():
                    raise RuntimeError(f"{p.name} exited with {p.proc.returncode if p.proc else None}")
            try:
                if executor is None:
                    if c.cluster_status()["leader"] is not None:
                        return
                elif any(d["state"] == "ready" for d in c.list_executors()):
                    return
            except NoMasterReachable:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{executor.name if executor else master.name} not ready after {timeout:g}s"
                )
            time.sleep(0.1)


@pytest.mark.timeout(900)
def test_wheel_installs_alone_and_runs_a_cluster(tmp_path):
    started = time.monotonic()
    wheel = build_wheel(tmp_path)
    check_wheel(wheel, tmp_path / "src")
    print(f"wheel built and checked in {time.monotonic() - started:.1f}s: {wheel.name}")

    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    env = fresh_env(venv)
    run([base_python(), "-m", "venv", venv], "creating the fresh venv", timeout=120, cwd=tmp_path)
    run(
        [py, "-m", "pip", "install", "--timeout", "120", wheel],
        "installing the wheel with its dependencies",
        timeout=PIP_TIMEOUT,
        cwd=tmp_path,
        env=env,
    )
    print(f"installed in {time.monotonic() - started:.1f}s")

    # Everything from here runs outside the repository, in a directory holding only these scripts.
    work = tmp_path / "work"
    work.mkdir()
    (work / "check_imports.py").write_text(CHECK_IMPORTS)
    (work / "run_job.py").write_text(RUN_JOB)
    p = run([py, "check_imports.py", *PARTS], "importing rota", timeout=60, cwd=work, env=env)
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert Path(info["rota"]).resolve().is_relative_to(venv.resolve()), info
    assert info["client"] == ["rota.client.api", "rota.client.api"], info
    assert {"openapi.yaml", "index.html"} <= set(info["http_api_files"]), info
    leaked = sorted(name for name, found in info["top_level"].items() if found)
    assert not leaked, f"importable as top-level names: {leaked}"
    for program in PROGRAMS:
        p = run([venv / "bin" / program, "--help"], f"{program} --help", timeout=60, cwd=work, env=env)
        assert "Usage:" in p.stdout, p.stdout

    assert os.environ.get("ROTA_ETCD_BIN") or shutil.which("etcd", path=env["PATH"]), (
        "the etcd binary is not on PATH (nor $ROTA_ETCD_BIN): `make` installs Debian's etcd-server"
    )
    master_port, peer_port, etcd_port, worker_port = free_ports(4)
    addr = f"127.0.0.1:{master_port}"
    master = Process(
        "m0",
        [
            str(venv / "bin" / "master"),
            "--name",
            "m0",
            "--data-dir",
            str(tmp_path / "m0"),
            "--master-addr",
            addr,
            "--http-addr",
            "off",
            "--peer-urls",
            f"http://127.0.0.1:{peer_port}",
            "--etcd-client-urls",
            f"http://127.0.0.1:{etcd_port}",
        ],  # fmt: skip
        tmp_path / "m0.log",
    )
    executor = Process(
        "e0",
        [
            str(venv / "bin" / "executor"),
            "--join",
            addr,
            "--name",
            "e0",
            "--slots",
            "1",
            "--http-addr",
            "off",
            "--worker-addr",
            f"127.0.0.1:{worker_port}",
            "--work-dir",
            str(tmp_path / "e0"),
        ],  # fmt: skip
        tmp_path / "e0.log",
    )
    procs = [executor, master]  # stopped in this order
    try:
        # Popen with cwd/env: Process.start takes neither, so start both by hand, the same way.
        for proc, wait_for in ((master, None), (executor, executor)):
            with open(proc.log_path, "ab") as log:
                proc.proc = subprocess.Popen(
                    proc.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=work,
                    env=env,
                    preexec_fn=die_with_parent(),
                )
            wait_until_ready(master, wait_for, addr)
        p = run([py, "run_job.py", addr], "running a job", timeout=120, cwd=work, env=env)
        doc = json.loads(p.stdout.strip().splitlines()[-1])
        assert doc["state"] == "SUCCEEDED", json.dumps(doc, indent=1)
        assert [t["result"]["value"] for t in doc["tasks"]] == [42], json.dumps(doc, indent=1)
    except BaseException:
        for proc in procs:
            print(f"--- {proc.name}: {' '.join(proc.argv)}")
            print(proc.log_tail(lines=200))
        raise
    finally:
        for proc in procs:
            if proc.proc is not None:
                proc.stop()
    print(f"done in {time.monotonic() - started:.1f}s")

"""The README's multi-host commands, run as written on four hosts made of network namespaces
(issue 17): the certificates and the admin token, then the same master command on each host with
its own name and address, an executor, tokens, cluster-status, curl, a job; then "Add or replace
a master": member list, the removal of m2, member add m3 and m3's own command. The blocks are read
from README.md, so a change there is tested here. Only what a human does by hand between the
lines is done by the test: copying files to the hosts (the ``scp`` lines) and waiting for the
masters to answer."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rota.common.procs import die_with_parent
from rota.devtools.hosts import Network
from rota.executor import run_as

pytestmark = pytest.mark.etcd

REPO = Path(__file__).resolve().parents[2]


def blocks_after(text: str, marker: str) -> list[str]:
    """The commands of the first code block after ``marker``: continuation lines joined, comment
    lines and trailing comments dropped."""
    start = text.index(marker)
    body = text[text.index("```\n", start) + 4 :]
    body = body[: body.index("```")]
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


class Hosts:
    """A working dir per host (``bin`` linked to the repo's), commands run in its namespace."""

    def __init__(self, net: Network, base: Path, count: int) -> None:
        self.net, self.base = net, base
        self.env = {**os.environ}
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(count):
            host = net.add_host(f"m{i}")
            self.env[f"ip{i}"] = host.ip
            self.dir(i).mkdir(parents=True)
            (self.dir(i) / "bin").symlink_to(REPO / "bin")
            (self.dir(i) / "sample").symlink_to(REPO / "sample")

    def dir(self, i: int) -> Path:
        return self.base / f"host-{i}"

    def run(self, i: int, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.net.host(f"m{i}").command(["bash", "-c", f"set -e\n{script}"])
        out = subprocess.run(argv, cwd=self.dir(i), env=self.env, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise AssertionError(f"on host {i}: {script}\nexit {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out

    def start(self, i: int, prelude: str, command: str) -> subprocess.Popen[bytes]:
        argv = self.net.host(f"m{i}").command(["bash", "-c", f"{prelude}\nexec {command}"])
        log = open(self.dir(i) / f"{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            cwd=self.dir(i),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def until_answers(self, i: int, prelude: str, command: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(i, f"{prelude}\n{command}", check=False)
            if out.returncode == 0:
                return out.stdout
            if time.monotonic() > deadline:
                raise AssertionError(f"{command} never answered:\n{out.stdout}\n{out.stderr}")
            time.sleep(0.5)


def own(command: str, i: int) -> str:
    """The master command of host 0 made host ``i``'s: its own name and address."""
    command = command.replace("--name m0 ", f"--name m{i} ")
    for flag in ("--advertise-addr ", "--advertise-peer-urls https://", "--advertise-client-urls https://"):
        command = command.replace(flag + "${ip0}", flag + "${ip" + str(i) + "}")
    return command


@pytest.fixture
def hosts(tmp_path):
    for tool in ("ip", "nft", "curl"):
        assert shutil.which(tool), f"this test needs {tool} (make test-tools installs it)"
    with Network() as net:
        h = Hosts(net, tmp_path, 4)
        try:
            yield h
        finally:
            h.stop()


def test_the_readme_multi_host_commands_run_as_written(hosts):
    readme = (REPO / "README.md").read_text()
    certs = blocks_after(readme, "Three masters on three hosts (`ip0`, `ip1`, `ip2`)")
    run_block = blocks_after(readme, "Then on each host the same command with its own name and address")
    membership = blocks_after(readme, "**Add or replace a master**")

    # On one machine (host 0's dir): the CA, a certificate per host and the admin token.
    made = [c for c in certs if not c.startswith("scp ")]
    assert any(c.startswith("scp ") for c in certs) and len(made) == 4, certs
    hosts.run(0, "\n".join(made))
    hosts.run(
        0,
        'bin/master-client certs create --ca-dir tls/h0 --out tls/h3 --hosts "127.0.0.1,localhost,host-3,${ip3}"',
    )
    for i in range(4):  # what scp does
        (hosts.dir(i) / "rota-tls").mkdir()
        for name in ("ca.pem", "node.pem", "node-key.pem"):
            shutil.copy(hosts.dir(0) / f"tls/h{i}" / name, hosts.dir(i) / "rota-tls" / name)
        if i:
            shutil.copy(hosts.dir(0) / "admin.token", hosts.dir(i) / "admin.token")

    # On each host the master command with its own name and address; then the rest on host 0.
    tls = next(c for c in run_block if c.startswith("TLS="))
    master = next(c for c in run_block if c.startswith("bin/master "))
    for i in range(3):
        hosts.start(i, tls, own(master, i))
    exports = [c for c in run_block if c.startswith("export ")]
    prelude = "\n".join([tls, *exports])
    hosts.until_answers(0, prelude, "bin/master-client cluster-status")
    rest = [c for c in run_block if c not in (tls, master) and not c.startswith("export ")]
    for command in rest:
        if command.startswith("bin/executor "):
            hosts.start(0, prelude, command)
            hosts.until_answers(0, prelude, "bin/master-client list-executors | grep -q ready")
        else:
            out = hosts.run(0, f"{prelude}\n{command}")
            if command.startswith("curl "):
                assert '"leader"' in out.stdout, out.stdout
    status = hosts.run(0, f"{prelude}\nbin/master-client --json cluster-status").stdout
    assert all(f'"m{i}"' in status for i in range(3)), status
    hello(hosts, prelude)

    # Add or replace a master: m2 leaves, m3 joins on a host of its own.
    assert membership[:3] == [
        "bin/master-client member list",
        "bin/master-client member remove m2",
        "bin/master-client member add m3 https://${ip3}:8291",
    ], membership
    for command in membership[:3]:
        hosts.run(0, f"{prelude}\n{command}")
    m3 = next(c for c in membership if c.startswith("bin/master "))
    hosts.start(3, tls, m3)
    deadline = time.monotonic() + 60
    while True:
        listed = hosts.run(0, f"{prelude}\nbin/master-client --json member list", check=False).stdout
        if '"m3"' in listed and '"m2"' not in listed and listed.count('"healthy": true') == 3:
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.5)
    hello(hosts, prelude)


def hello(hosts: Hosts, prelude: str) -> None:
    """sample/jobs/hello.toml on the README's executor (``--run-as nobody``). Its shell task must
    succeed; its Python task only where nobody may run this Python (contract: "--run-as"): not
    with an interpreter under /root, which the executor warned of when it started."""
    command = "bin/master-client --json submit-job --config sample/jobs/hello.toml --wait"
    doc = json.loads(hosts.run(0, f"{prelude}\n{command}", check=False).stdout)
    states = {t["name"]: t["state"] for t in doc["tasks"]}
    assert states["greet"] == "SUCCEEDED", doc
    run_as.set_current(run_as.resolve("nobody"))
    try:
        problem = run_as.cannot_run(sys.executable)
    finally:
        run_as.set_current(None)
    if problem is None:
        assert doc["state"] == "SUCCEEDED", doc
    else:
        assert "cannot start" in doc["tasks"][1]["result"]["error"], doc
        logs = "".join(p.read_text() for p in hosts.dir(0).glob("*.log"))
        assert f"--run-as: {problem}" in logs, logs

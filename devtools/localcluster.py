"""A local Rota cluster of real processes on 127.0.0.1: for ``make demo``, benchmarks and tests.

Given a ``Network`` (devtools/hosts.py), each program runs in a host of its own instead, bound to
that host's address with the standard ports, as the README's multi-host commands do.

Every master is a real ``scheduler.master`` process with its embedded etcd member (or
an external etcd cluster), on free ports and fresh data dirs. Processes are started
so that they die with the process that started them, and are stopped by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from rota.client.api import Client, NoMasterReachable
from rota.common import certs
from rota.common import tokens as token_text
from rota.common.procs import die_with_parent, free_ports
from rota.common.tls import TlsFiles
from rota.devtools.hosts import Host, Network

#: The names a LocalCluster's certificate is good for.
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1"]


def make_tls(directory: Path, hosts: Sequence[str] = ()) -> TlsFiles:
    """A fresh CA and one certificate for every local process (and ``hosts``), in ``directory``."""
    certs.create(str(directory), LOCAL_HOSTS + list(hosts), days=2)
    return TlsFiles(
        str(directory / certs.CA_FILES[0]),
        str(directory / certs.NODE_FILES[0]),
        str(directory / certs.NODE_FILES[1]),
    )


def tls_args(tls: TlsFiles | None) -> list[str]:
    return ["--tls-ca", tls.ca, "--tls-cert", tls.cert, "--tls-key", tls.key] if tls else []


class Process:
    """One program of the cluster, started by pid and stopped by pid."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, http_url: str = "", host: Host | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        #: The network namespace it runs in, if any.
        self.host = host
        self.log_path = log_path
        #: Base URL of its HTTP port: /metrics, and on masters the dashboard and the API.
        self.http_url = http_url
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} never started"
        return self.proc.pid

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.host.command(self.argv) if self.host else self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(),
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (SIGCONT first, in case it is stopped), then SIGKILL."""
        if not self.alive():
            if self.proc is not None:
                self.proc.poll()
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if self.wait(timeout) is None:
            self.signal(signal.SIGKILL)
            self.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class MasterProcess(Process):
    def __init__(
        self,
        name: str,
        addr: str,
        argv: list[str],
        log_path: Path,
        http_url: str = "",
        host: Host | None = None,
    ) -> None:
        super().__init__(name, argv, log_path, http_url, host)
        self.addr = addr
        #: Its embedded etcd member's advertised peer and client URLs ("" with external etcd).
        self.peer_url = ""
        self.etcd_url = ""


class LocalCluster:
    """``masters`` masters with embedded etcd (or ``etcd_endpoints``), under ``base_dir``.

    ``tls=True`` makes a CA and a certificate under ``base_dir/tls`` (or give TlsFiles) and runs
    every link over mutual TLS: masters, embedded etcd, executors and ``client()``.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        masters: int = 3,
        etcd_endpoints: Sequence[str] | None = None,
        leader_lease_ttl: str = "3s",
        master_args: Sequence[str] = (),
        etcd_tuning: tuple[str, str] = ("25ms", "250ms"),
        executors: int = 0,
        executor_slots: int = 1,
        executor_args: Sequence[str] = (),
        tokens: bool = False,
        tls: bool | TlsFiles = False,
        network: Network | None = None,
    ) -> None:
        """``tokens``: masters check tokens (a fresh admin token in ``base_dir/admin.token``, which
        ``client()`` sends), and executors join with an executor token made at start.
        ``network``: each master and executor in a host of its own on it (``--insecure`` unless
        ``tls`` and ``tokens``)."""
        self.network = network
        hosts = [network.add_host(f"m{i}") for i in range(masters)] if network else []
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.admin_token: str | None = None
        self.executor_token_file: Path | None = None
        if tokens:
            self.admin_token = str(token_text.generate())
            _secret_file(self.base_dir / "admin.token", self.admin_token)
        self.tls: TlsFiles | None = (
            tls
            if isinstance(tls, TlsFiles)
            else make_tls(
                self.base_dir / "tls", [h.ip for h in hosts] + (network.planned(32) if network else [])
            )
            if tls
            else None
        )
        self._insecure = ["--insecure"] if network and not (self.tls and tokens) else []
        scheme = "https" if self.tls else "http"
        self.masters: list[MasterProcess] = []
        #: Masters taken out with ``drop_master``.
        self.dropped: list[MasterProcess] = []
        self._planned: dict[str, tuple[Host | None, list[int]]] = {}
        self.executors: list[Process] = []
        self._initial_executors = (executors, executor_slots, tuple(executor_args))
        names = [f"m{i}" for i in range(masters)]
        if network:
            ports = [10240, 8291, 2379, 10280] * masters
            ips = [h.ip for h in hosts]
        else:
            ports = free_ports(4 * masters)
            ips = ["127.0.0.1"] * masters
        peers = [f"{scheme}://{ips[i]}:{ports[4 * i + 1]}" for i in range(masters)]
        initial = ",".join(f"{n}={p}" for n, p in zip(names, peers, strict=True))
        self._etcd_endpoints = list(etcd_endpoints or [])
        self._master_options = (leader_lease_ttl, tuple(master_args), etcd_tuning)
        for i, name in enumerate(names):
            self.masters.append(
                self._master(name, ips[i], ports[4 * i : 4 * i + 4], initial, hosts[i] if hosts else None)
            )

    def _master(
        self, name: str, ip: str, ports: Sequence[int], initial: str, host: Host | None, state: str = "new"
    ) -> MasterProcess:
        """A master process (not started) at ``ip`` with gRPC, peer, etcd client and HTTP ``ports``."""
        leader_lease_ttl, master_args, etcd_tuning = self._master_options
        scheme = "https" if self.tls else "http"
        addr = f"{ip}:{ports[0]}"
        http_addr = f"{ip}:{ports[3]}"
        peer = f"{scheme}://{ip}:{ports[1]}"
        # On a host, listen on every address of it, as the README's multi-host commands do.
        listen = (lambda a: "0.0.0.0:" + a.rsplit(":", 1)[1]) if host else (lambda a: a)
        client_url = f"{scheme}://{ip}:{ports[2]}"
        argv = [
            sys.executable, "-m", "rota.scheduler.master", "--name", name, "--master-addr", listen(addr),
            "--advertise-addr", addr, "--leader-lease-ttl", leader_lease_ttl,
            "--data-dir", str(self.base_dir / name), "--http-addr", listen(http_addr), *self._insecure,
        ]  # fmt: skip
        if self._etcd_endpoints:
            argv += ["--etcd-endpoints", ",".join(self._etcd_endpoints)]
        else:
            argv += [
                "--peer-urls", f"{scheme}://{listen(peer.split('//')[1])}", "--advertise-peer-urls",
                peer, "--etcd-client-urls", f"{scheme}://{listen(client_url.split('//')[1])}",
                "--advertise-client-urls", client_url, "--initial-cluster", initial,
                "--etcd-heartbeat-interval", etcd_tuning[0], "--etcd-election-timeout", etcd_tuning[1],
            ]  # fmt: skip
            if state != "new":
                argv += ["--initial-cluster-state", state]
        if self.admin_token:
            argv += ["--admin-token-file", str(self.base_dir / "admin.token")]
        argv += tls_args(self.tls) + list(master_args)
        proc = MasterProcess(name, addr, argv, self.base_dir / f"{name}.log", f"{scheme}://{http_addr}", host)
        proc.peer_url = peer
        proc.etcd_url = client_url if not self._etcd_endpoints else ""
        return proc

    def plan_master(self, name: str) -> tuple[Host | None, str]:
        """Where a master to be added will run: a new host on the network (or this machine), and the
        peer URL to give ``member add``. Start it with ``add_master``."""
        if self.network is not None:
            host = self.network.add_host(name)
            ports = [10240, 8291, 2379, 10280]
        else:
            host, ports = None, free_ports(4)
        self._planned[name] = (host, ports)
        ip = host.ip if host else "127.0.0.1"
        return host, f"{'https' if self.tls else 'http'}://{ip}:{ports[1]}"

    def add_master(self, name: str, initial_cluster: str, start: bool = True) -> MasterProcess:
        """Start master ``name`` (planned with ``plan_master``, its member added with ``member add``)
        joining the running cluster: ``--initial-cluster`` as ``member add`` gave it,
        ``--initial-cluster-state existing`` and a fresh data dir."""
        host, ports = self._planned.pop(name)
        proc = self._master(name, host.ip if host else "127.0.0.1", ports, initial_cluster, host, "existing")
        self.masters.append(proc)
        if start:
            proc.start()
        return proc

    def drop_master(self, name: str) -> MasterProcess:
        """Stop master ``name`` (if it runs) and forget it: ``addresses`` and clients leave it out."""
        proc = self.master(name)
        proc.stop()
        self.masters.remove(proc)
        self.dropped.append(proc)
        return proc

    @property
    def etcd_endpoints(self) -> list[str]:
        """Client URLs of the etcd the masters use (embedded members or --etcd-endpoints)."""
        argv = self.masters[0].argv
        if "--etcd-endpoints" in argv:
            return argv[argv.index("--etcd-endpoints") + 1].split(",")
        return [m.argv[m.argv.index("--advertise-client-urls") + 1] for m in self.masters]

    @property
    def addresses(self) -> str:
        return ",".join(m.addr for m in self.masters)

    def client(self, timeout: float = 10.0, token: str | None = None) -> Client:
        """A client of every master; with tokens on it sends ``token``, by default the admin token."""
        return Client(self.addresses, timeout=timeout, token=token or self.admin_token or "", tls=self.tls)

    def master(self, name: str) -> MasterProcess:
        return next(m for m in self.masters if m.name == name)

    def start(self, timeout: float = 60.0) -> None:
        """Start every master (and executor) and wait until all are up; on failure stop everything."""
        try:
            for m in self.masters:
                m.start()
            self.wait_for_leader(timeout=timeout, all_reachable=True)
            if self.admin_token:
                with self.client() as c:
                    text, _ = c.create_token("executor", "local-executors")
                self.executor_token_file = self.base_dir / "executor.token"
                _secret_file(self.executor_token_file, text)
            count, slots, args = self._initial_executors
            for _ in range(count):
                self.add_executor(slots=slots, args=args)
            if count:
                self.wait_for_executors(count, timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def add_executor(
        self, slots: int = 1, args: Sequence[str] = (), name: str | None = None, cluster_tls: bool = True
    ) -> Process:
        """Start one more executor process joining every master (without the cluster's certificate
        when ``cluster_tls`` is false: ``args`` may give other --tls-* files)."""
        name = name or f"e{len(self.executors)}"
        work = self.base_dir / f"{name}-work"
        work.mkdir(exist_ok=True)
        host = self.network.add_host(name) if self.network else None
        ip, bind = (host.ip, "0.0.0.0") if host else ("127.0.0.1", "127.0.0.1")
        worker_port, http_port = (10241, 10281) if host else free_ports(2)
        argv = [
            sys.executable, "-m", "rota.executor.main", "--join", self.addresses, "--name", name,
            "--worker-addr", f"{bind}:{worker_port}", "--advertise-addr", f"{ip}:{worker_port}",
            "--http-addr", f"{bind}:{http_port}", "--slots", str(slots), "--work-dir", str(work),
            *tls_args(self.tls if cluster_tls else None), *self._insecure, *args,
        ]  # fmt: skip
        if self.executor_token_file and "--token-file" not in args:
            argv += ["--token-file", str(self.executor_token_file)]
        scheme = "https" if self.tls and cluster_tls else "http"
        proc = Process(name, argv, self.base_dir / f"{name}.log", f"{scheme}://{ip}:{http_port}", host)
        self.executors.append(proc)
        proc.start()
        return proc

    def wait_for_executors(self, count: int, timeout: float = 30.0) -> list[dict[str, object]]:
        """Block until the leader lists ``count`` ready executors."""
        deadline = time.monotonic() + timeout
        with self.client(timeout=5.0) as c:
            while True:
                try:
                    docs = [d for d in c.list_executors() if d["state"] == "ready"]
                    if len(docs) >= count:
                        return docs
                except NoMasterReachable:
                    pass
                if time.monotonic() > deadline:
                    logs = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in self.executors)
                    raise TimeoutError(f"fewer than {count} executors after {timeout:g}s\n{logs}")
                time.sleep(0.05)

    def wait_for_leader(
        self, timeout: float = 30.0, exclude: str | None = None, all_reachable: bool = False
    ) -> str:
        """Block until the cluster names a leader (other than ``exclude``); return its name."""
        deadline = time.monotonic() + timeout
        live = ",".join(m.addr for m in self.masters if m.alive())
        with Client(live or self.addresses, timeout=2.0, token=self.admin_token or "", tls=self.tls) as c:
            while True:
                for m in self.masters:
                    if m.proc is not None and not m.alive() and all_reachable:
                        raise RuntimeError(f"master {m.name} exited:\n{m.log_tail()}")
                try:
                    s = c.cluster_status()
                    leader = s["leader"]
                    ok = leader is not None and leader["name"] != exclude
                    if ok and all_reachable:
                        ok = len(s["masters"]) == len(self.masters) and all(
                            x["role"] != "unreachable" for x in s["masters"]
                        )
                    if ok:
                        return str(leader["name"])
                except NoMasterReachable:
                    pass
                if time.monotonic() > deadline:
                    logs = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in self.masters)
                    raise TimeoutError(f"no leader after {timeout:g}s\n{logs}")
                time.sleep(0.05)

    def leader(self) -> MasterProcess:
        return self.master(self.wait_for_leader())

    def stop(self) -> None:
        for e in self.executors:
            # Two signals: the second makes an executor hand its tasks back and leave at once,
            # instead of letting them run out its drain timeout.
            e.signal(signal.SIGCONT)
            e.signal(signal.SIGTERM)
            e.signal(signal.SIGINT)
        for e in self.executors:
            e.stop()
        for m in self.masters:
            m.signal(signal.SIGCONT)
        for m in self.masters:
            m.signal(signal.SIGTERM)
        for m in self.masters:
            m.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _secret_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")

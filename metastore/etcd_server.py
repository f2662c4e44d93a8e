"""Start and supervise real etcd members as child processes.

The master runs its embedded member through `EtcdMember`; tests and developers run a whole local cluster
through `EtcdCluster` (or `python -m metastore.etcd_server`). Both use the same launcher, so tests exercise
exactly what production runs.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

log = logging.getLogger("rota.etcd")

MIN_VERSION = (3, 4, 22)
DATA_LOSS_VERSIONS = ((3, 5, 0), (3, 5, 2))
INSTALL_HINT = "install it with 'apt-get install etcd-server' or set ROTA_ETCD_BIN / --etcd-bin to its path"

_PR_SET_PDEATHSIG = 1
_VERSION_RE = re.compile(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)")
# Proxies from the environment must never see traffic meant for a local member.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EtcdBinaryError(Exception):
    """The etcd binary is missing, not executable, or a version Rota refuses to run."""


class EtcdStartError(Exception):
    """An etcd member exited or did not become healthy in time."""


def find_etcd_binary(explicit: str | None = None) -> str:
    """Resolve the etcd binary: `explicit` (--etcd-bin), then $ROTA_ETCD_BIN, then PATH."""
    for candidate, origin in ((explicit, "--etcd-bin"), (os.environ.get("ROTA_ETCD_BIN"), "ROTA_ETCD_BIN")):
        if candidate:
            resolved = shutil.which(candidate) if os.sep not in candidate else candidate
            if resolved and os.path.isfile(resolved) and os.access(resolved, os.X_OK):
                return os.path.abspath(resolved)
            raise EtcdBinaryError(
                f"etcd binary {candidate!r} (from {origin}) is not an executable file: {INSTALL_HINT}"
            )
    found = shutil.which("etcd")
    if found is None:
        raise EtcdBinaryError(f"etcd binary not found on PATH: {INSTALL_HINT}")
    return os.path.abspath(found)


def parse_etcd_version(output: str) -> tuple[int, int, int] | None:
    """Extract the version from `etcd --version` output, or None if it is not there."""
    match = _VERSION_RE.search(output)
    if match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def etcd_version(binary: str) -> tuple[int, int, int]:
    """Ask `binary --version` which etcd it is."""
    try:
        proc = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EtcdBinaryError(f"cannot run '{binary} --version': {exc}") from exc
    version = parse_etcd_version(proc.stdout + proc.stderr)
    if proc.returncode != 0 or version is None:
        first = (proc.stdout + proc.stderr).strip().splitlines()[:1]
        raise EtcdBinaryError(
            f"'{binary} --version' (exit {proc.returncode}) did not print an etcd version"
            f"{': ' + repr(first[0]) if first else ''}; is it etcd? {INSTALL_HINT}"
        )
    return version


def version_problem(version: tuple[int, int, int], binary: str | None = None) -> str | None:
    """Why Rota refuses this etcd version, or None if it is acceptable."""
    shown = ".".join(map(str, version)) + (f" at {binary}" if binary else "")
    if version < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        return f"etcd {shown} is too old: Rota needs etcd >= {need}; {INSTALL_HINT}"
    low, high = DATA_LOSS_VERSIONS
    if low <= version <= high:
        return (
            f"etcd {shown} has a known data-loss bug (fixed in 3.5.3): use etcd 3.4.22+ or 3.5.3+; "
            f"{INSTALL_HINT}"
        )
    return None


def check_etcd_version(binary: str) -> tuple[int, int, int]:
    """Refuse binaries that are too old or have a known data-loss bug; return the version otherwise."""
    version = etcd_version(binary)
    problem = version_problem(version, binary)
    if problem:
        raise EtcdBinaryError(problem)
    return version


def free_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 right now (all held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """A port free on 127.0.0.1 right now (another process may still take it before etcd binds it)."""
    return free_ports(1)[0]


@dataclass
class MemberConfig:
    """Everything that defines one etcd member; `argv` turns it into a command line."""

    name: str
    data_dir: str
    peer_urls: list[str]
    advertise_peer_urls: list[str]
    client_urls: list[str]
    advertise_client_urls: list[str]
    initial_cluster: str
    initial_cluster_state: str = "new"
    cluster_token: str = "rota"
    heartbeat_ms: int = 100
    election_ms: int = 1000
    max_txn_ops: int = 1024
    max_request_bytes: int = 4 * 1024 * 1024
    quota_backend_bytes: int = 8 * 1024**3
    extra_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.initial_cluster_state not in ("new", "existing"):
            raise ValueError(
                f"initial_cluster_state must be 'new' or 'existing', not {self.initial_cluster_state!r}"
            )
        if self.election_ms < 5 * self.heartbeat_ms:
            raise ValueError(
                f"election_ms ({self.election_ms}) must be at least 5 x heartbeat_ms ({self.heartbeat_ms})"
            )

    def argv(self, binary: str, log_path: str | None = None) -> list[str]:
        """The etcd command line; logs go to `log_path` or, without one, to stderr."""
        flags = [
            ("--name", self.name),
            ("--data-dir", self.data_dir),
            ("--listen-peer-urls", ",".join(self.peer_urls)),
            ("--initial-advertise-peer-urls", ",".join(self.advertise_peer_urls)),
            ("--listen-client-urls", ",".join(self.client_urls)),
            ("--advertise-client-urls", ",".join(self.advertise_client_urls)),
            ("--initial-cluster", self.initial_cluster),
            ("--initial-cluster-state", self.initial_cluster_state),
            ("--initial-cluster-token", self.cluster_token),
            ("--heartbeat-interval", str(self.heartbeat_ms)),
            ("--election-timeout", str(self.election_ms)),
            ("--max-txn-ops", str(self.max_txn_ops)),
            ("--max-request-bytes", str(self.max_request_bytes)),
            ("--quota-backend-bytes", str(self.quota_backend_bytes)),
            ("--auto-compaction-mode", "periodic"),
            ("--auto-compaction-retention", "1h"),
            ("--logger", "zap"),
            ("--log-outputs", log_path or "stderr"),
        ]
        return [binary, *(part for flag in flags for part in flag), *self.extra_args]


@functools.cache
def _load_libc() -> ctypes.CDLL | None:
    """libc for prctl, loaded in the parent: dlopen after fork in a threaded process can deadlock."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _die_with_parent(libc: ctypes.CDLL | None, parent_pid: int) -> Callable[[], None]:
    """Build a preexec_fn asking the kernel to SIGKILL the child when its parent thread dies."""

    def preexec() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn for any child (masters and executors in tests too) that must die with us."""
    return _die_with_parent(_load_libc(), os.getpid())


def _tail(path: str | None, lines: int = 5) -> str:
    if path is None:
        return "(no log: the member was started without log_path)"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read log {path}: {exc})"
    last = text.strip().splitlines()[-lines:]
    return "\n".join(last) if last else f"(log {path} is empty)"


class EtcdMember:
    """One etcd member running as a child process that dies with its parent.

    Call `start()` from the main thread: PR_SET_PDEATHSIG fires when the *thread* that forked the child
    exits, so a member started from a worker thread is killed as soon as that thread ends.
    """

    def __init__(self, config: MemberConfig, binary: str | None = None, log_path: str | None = None) -> None:
        self.config = config
        self.binary = find_etcd_binary(binary)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def client_endpoints(self) -> list[str]:
        return list(self.config.advertise_client_urls)

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Launch the member without waiting for it; see `wait_ready`."""
        if self.alive():
            raise RuntimeError(f"etcd member {self.config.name} is already running (pid {self.pid})")
        check_etcd_version(self.binary)
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "etcd member %s started from thread %s: it will be killed when that thread exits",
                self.config.name,
                threading.current_thread().name,
            )
        argv = self.config.argv(self.binary, self.log_path)
        out = open(self.log_path, "ab") if self.log_path else None
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out or subprocess.DEVNULL,
                stderr=out or subprocess.DEVNULL,
                start_new_session=False,
                preexec_fn=_die_with_parent(_load_libc(), os.getpid()),
            )
        except OSError as exc:
            raise EtcdStartError(f"cannot start etcd member {self.config.name}: {exc}") from exc
        finally:
            if out is not None:
                out.close()
        log.info(
            "etcd member %s started: pid %d, clients %s, log %s",
            self.config.name,
            self._proc.pid,
            ",".join(self.client_endpoints),
            self.log_path or "discarded",
        )

    def healthy(self, timeout: float = 0.2) -> bool:
        """One /health probe; a member of a multi-member cluster is healthy only while quorum exists."""
        try:
            with _http.open(self.client_endpoints[0].rstrip("/") + "/health", timeout=timeout) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def is_leader(self, timeout: float = 0.2) -> bool | None:
        """Whether this member leads the raft group right now; None if it does not answer."""
        req = urllib.request.Request(
            self.client_endpoints[0].rstrip("/") + "/v3/maintenance/status",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        try:
            with _http.open(req, timeout=timeout) as resp:
                status = json.loads(resp.read())
            return bool(status.get("leader")) and status.get("leader") == status["header"]["member_id"]
        except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError):
            return None

    def wait_ready(self, timeout: float) -> None:
        """Block until /health says true; call it after starting every member, since health needs quorum."""
        if self._proc is None:
            raise RuntimeError(f"etcd member {self.config.name} was never started")
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EtcdStartError(
                    f"etcd member {self.config.name} exited with code {code} before becoming healthy; "
                    f"last log lines:\n{_tail(self.log_path)}"
                )
            if self.healthy():
                log.info("etcd member %s is healthy", self.config.name)
                return
            if time.monotonic() >= deadline:
                raise EtcdStartError(
                    f"etcd member {self.config.name} (pid {self._proc.pid}) not healthy after {timeout:g}s; "
                    f"last log lines:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM, then SIGKILL after `timeout`; safe to call again or on a member that already died."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("etcd member %s ignored SIGTERM for %gs: killing it", self.config.name, timeout)
                proc.kill()
                proc.wait()
        log.info("etcd member %s stopped (exit %s)", self.config.name, proc.returncode)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` and return at once: fault injection for tests."""
        if self._proc is not None:
            self._proc.send_signal(sig)

    def __enter__(self) -> EtcdMember:
        if not self.alive():
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EtcdCluster:
    """N local members on 127.0.0.1 with free ports and fresh data dirs under `base_dir`, for tests and dev."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        size: int = 3,
        heartbeat_ms: int = 10,
        election_ms: int = 100,
        binary: str | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self.base_dir = Path(base_dir)
        self.size = size
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.binary = find_etcd_binary(binary)
        self.members: list[EtcdMember] = []

    @property
    def endpoints(self) -> list[str]:
        return [m.client_endpoints[0] for m in self.members]

    def _configs(self) -> list[MemberConfig]:
        ports = free_ports(2 * self.size)
        names = [f"etcd{i}" for i in range(self.size)]
        peers = [f"http://127.0.0.1:{ports[2 * i]}" for i in range(self.size)]
        clients = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(self.size)]
        initial = ",".join(f"{n}={p}" for n, p in zip(names, peers, strict=True))
        return [
            MemberConfig(
                name=names[i],
                data_dir=str(self.base_dir / f"{names[i]}.etcd"),
                peer_urls=[peers[i]],
                advertise_peer_urls=[peers[i]],
                client_urls=[clients[i]],
                advertise_client_urls=[clients[i]],
                initial_cluster=initial,
                initial_cluster_state="new",
                heartbeat_ms=self.heartbeat_ms,
                election_ms=self.election_ms,
            )
            for i in range(self.size)
        ]

    def start(self, timeout: float = 20) -> None:
        """Start every member, then wait for all to be healthy; on failure nothing is left running."""
        if self.members:
            raise RuntimeError("an EtcdCluster starts once; use restart_member to bring a member back")
        check_etcd_version(self.binary)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        configs = self._configs()
        for cfg in configs:
            if os.path.exists(cfg.data_dir):
                raise EtcdStartError(f"{cfg.data_dir} already exists: EtcdCluster needs fresh data dirs")
        try:
            for cfg in configs:
                member = EtcdMember(cfg, self.binary, str(self.base_dir / f"{cfg.name}.log"))
                self.members.append(member)
                member.start()
            deadline = time.monotonic() + timeout
            for member in self.members:
                member.wait_ready(max(0.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def restart_member(self, i: int, timeout: float = 20, wait: bool = True) -> EtcdMember:
        """Stop member `i` if it runs and start it again on its data dir (etcd then ignores --initial-*)."""
        member = self.members[i]
        member.stop()
        member.start()
        if wait:
            member.wait_ready(timeout)
        return member

    def stop(self) -> None:
        """Stop every member, followers first, keeping the members (and logs) for inspection.

        A leader stopped while it has peers hands leadership over first, and waits out a 5 s timeout if
        the peer it picks has just died (etcd notices dead peers only on its next failed write). Stopping
        followers first, then waiting for the lone leader to step down (it does within an election timeout
        of losing quorum), makes every stop immediate.
        """
        remaining = [m for m in self.members if m.alive()]
        while remaining:
            if len(remaining) == 1:
                victim = remaining[0]
                deadline = time.monotonic() + 3 * self.election_ms / 1000
                while victim.is_leader() and time.monotonic() < deadline:
                    time.sleep(self.election_ms / 10000)
            else:
                victim = next((m for m in remaining if m.is_leader() is False), remaining[0])
            victim.stop()
            remaining.remove(victim)
        for member in self.members:
            member.stop()

    def __enter__(self) -> EtcdCluster:
        if not self.members:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a local cluster in the foreground until Ctrl-C or SIGTERM, for developers."""
    parser = argparse.ArgumentParser(
        prog="python -m metastore.etcd_server", description="Run a local etcd cluster for Rota development."
    )
    parser.add_argument("--size", type=int, default=3, help="number of members (default 3)")
    parser.add_argument(
        "--base-dir", help="where data dirs and logs go (default: a temp dir removed on exit)"
    )
    parser.add_argument("--etcd-bin", help="etcd binary (default: $ROTA_ETCD_BIN, then PATH)")
    parser.add_argument("--timeout", type=float, default=20, help="seconds to wait for health (default 20)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    temp = None if args.base_dir else tempfile.mkdtemp(prefix="rota-etcd-")
    base_dir = args.base_dir or temp
    assert base_dir is not None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster = EtcdCluster(
            base_dir, size=args.size, heartbeat_ms=100, election_ms=1000, binary=args.etcd_bin
        )
        cluster.start(timeout=args.timeout)
    except (EtcdBinaryError, EtcdStartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
        return 1
    code = 0
    try:
        print(f"etcd endpoints: {','.join(cluster.endpoints)}", flush=True)
        print(f"data and logs in {base_dir}; Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            dead = [m.config.name for m in cluster.members if not m.alive()]
            if dead:
                log.error("etcd member(s) %s exited; stopping the cluster", ",".join(dead))
                code = 1
                break
    finally:
        cluster.stop()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

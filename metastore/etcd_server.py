"""Start and supervise real etcd members as child processes.

The master runs its embedded member through `EtcdMember`; tests and developers run a whole local cluster
of the same members (`rota.devtools.etcdcluster`), so tests exercise exactly what production runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from types import TracebackType

from rota.common.procs import die_with_parent
from rota.common.tls import TlsFiles, client_context

log = logging.getLogger("rota.etcd")

MIN_VERSION = (3, 4, 22)
DATA_LOSS_VERSIONS = ((3, 5, 0), (3, 5, 2))
INSTALL_HINT = "install it with 'apt-get install etcd-server' or set ROTA_ETCD_BIN / --etcd-bin to its path"

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
    #: Mutual TLS for clients and peers alike (https URLs); None serves plain http.
    tls: TlsFiles | None = None

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
        switches: list[str] = []
        if self.tls is not None:
            t = self.tls
            flags += [
                ("--cert-file", t.cert), ("--key-file", t.key), ("--trusted-ca-file", t.ca),
                ("--peer-cert-file", t.cert), ("--peer-key-file", t.key), ("--peer-trusted-ca-file", t.ca),
            ]  # fmt: skip
            # Go's flag package takes a boolean only as --flag=value.
            switches = ["--client-cert-auth=true", "--peer-client-cert-auth=true"]
        return [binary, *(part for flag in flags for part in flag), *switches, *self.extra_args]


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
        self._http = _http
        if config.tls is not None:
            self._http = urllib.request.build_opener(
                urllib.request.ProxyHandler({}),
                urllib.request.HTTPSHandler(context=client_context(config.tls)),
            )

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
                preexec_fn=die_with_parent(),
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
            with self._http.open(self.client_endpoints[0].rstrip("/") + "/health", timeout=timeout) as resp:
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
            with self._http.open(req, timeout=timeout) as resp:
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

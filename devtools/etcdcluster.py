"""A local etcd cluster of real members (the master's own launcher) for tests, benchmarks and developers:
``python -m rota.devtools.etcdcluster`` runs one in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from rota.common.procs import free_ports
from rota.metastore.etcd_server import (
    EtcdBinaryError,
    EtcdMember,
    EtcdStartError,
    MemberConfig,
    check_etcd_version,
    find_etcd_binary,
)

log = logging.getLogger("rota.etcd")


class EtcdCluster:
    """N local members on 127.0.0.1 with free ports and fresh data dirs under `base_dir`, for tests and dev."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        size: int = 3,
        heartbeat_ms: int = 10,
        election_ms: int = 100,
        binary: str | None = None,
        quota_backend_bytes: int | None = None,
        max_request_bytes: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self.base_dir = Path(base_dir)
        self.size = size
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.binary = find_etcd_binary(binary)
        self.quota_backend_bytes = quota_backend_bytes
        self.max_request_bytes = max_request_bytes
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
                **({"quota_backend_bytes": self.quota_backend_bytes} if self.quota_backend_bytes else {}),
                **({"max_request_bytes": self.max_request_bytes} if self.max_request_bytes else {}),
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
        prog="python -m rota.devtools.etcdcluster",
        description="Run a local etcd cluster for Rota development.",
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

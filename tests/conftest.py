"""Fixtures that start real processes (etcd members, masters) and always stop them."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rota.devtools.etcdcluster import EtcdCluster
from rota.devtools.hosts import Network
from rota.devtools.localcluster import LocalCluster


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        # The entry vanishes between open and read when the process is reaped in that gap.
        return False


@pytest.fixture
def pid_alive() -> Callable[[int], bool]:
    return _pid_alive


def _wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true, and return that; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


@pytest.fixture
def taskfuncs_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Executors started by the test import tests/integration/taskfuncs.py for their call tasks."""
    here = Path(__file__).parent / "integration"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    return _wait_until


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Start LocalClusters on demand; every one is stopped at teardown, pass or fail."""
    started: list[LocalCluster] = []

    def start(**kwargs: Any) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(started)}", **kwargs)
        started.append(cluster)
        cluster.start()
        return cluster

    try:
        yield start
    finally:
        for c in started:
            c.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd", size=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LocalCluster]:
    """One cluster shared by a test module: three masters and two executors of two slots each."""
    c = LocalCluster(
        tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]), executors=2, executor_slots=2
    )
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def network() -> Iterator[Network]:
    """Hosts made of network namespaces on a private bridge (devtools/hosts.py), removed at the
    end. Ask for it before ``local_cluster``, so the clusters on it stop before it goes."""
    for tool in ("ip", "nft"):
        assert shutil.which(tool), f"the hosts tests need {tool} (make test-tools installs it)"
    with Network() as net:
        yield net

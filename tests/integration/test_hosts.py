"""The hosts harness itself (devtools/hosts.py): namespaces on a bridge reach each other and us,
and each kind of link fault does what it says, seen by real TCP connections between hosts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from rota.devtools.hosts import Network

pytestmark = pytest.mark.etcd  # root and real processes, like the cluster tests

LISTEN = "import socket\ns=socket.socket();s.bind(('0.0.0.0',9000));s.listen(64);c=[]\nwhile 1: c.append(s.accept())"


def connects(net: Network, src: str | None, dst: str, tries: int = 1) -> int:
    """How many of ``tries`` TCP connections from ``src`` (None: from us) to ``dst`` succeed."""
    ip = net.host(dst).ip
    code = (
        "import socket\nok=0\n"
        f"for _ in range({tries}):\n s=socket.socket();s.settimeout(0.3)\n"
        f" try:\n  s.connect(('{ip}',9000));ok+=1\n except OSError: pass\n s.close()\nprint(ok)"
    )
    argv = [sys.executable, "-c", code]
    out = subprocess.run(
        net.host(src).command(argv) if src else argv, capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.fixture
def net():
    for tool in ("ip", "nft"):
        assert shutil.which(tool), f"the hosts tests need {tool} (make test-tools installs it)"
    with Network() as network:
        servers = []
        try:
            for name in ("a", "b", "c"):
                host = network.add_host(name)
                servers.append(subprocess.Popen(host.command([sys.executable, "-c", LISTEN])))
            time.sleep(0.5)
            yield network
        finally:
            for p in servers:
                p.kill()
                p.wait()


def test_hosts_reach_each_other_and_us_until_cut(net):
    assert connects(net, "a", "b") == connects(net, None, "a") == 1
    net.cut("a", "b")
    assert connects(net, "a", "b") == connects(net, "b", "a") == 0
    assert connects(net, "a", "c") == 1
    net.cut("a", "c", one_way=True)  # a's packets to c are lost: no handshake either way
    assert connects(net, "a", "c") == 0
    net.heal()
    assert connects(net, "a", "b") == connects(net, "b", "a") == connects(net, "a", "c") == 1


def test_an_isolated_host_reaches_nobody_and_loss_drops_a_share(net):
    net.isolate("a")
    assert connects(net, None, "a") == connects(net, "b", "a") == connects(net, "a", "c") == 0
    assert connects(net, "b", "c") == 1
    net.heal()
    net.lose("a", 50)
    got = connects(net, "a", "b", tries=40)
    assert 4 <= got <= 36, got  # half lost per packet: a handshake needs two of a's packets
    net.heal()
    assert connects(net, "a", "b", tries=5) == 5


def test_namespaces_and_bridge_are_gone_after_close():
    with Network() as network:
        network.add_host("x")
        names = (network.host("x").netns, network.bridge)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert names[0] not in listed and f" {names[1]}:" not in links

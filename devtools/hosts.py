"""Hosts on one machine: one network namespace per program, each with its own address on a
private bridge, and faults on the links between them (cut, one-way cut, latency, loss).

A program started in a host sees only that host's loopback and its one address, as on a separate
machine; the bridge's own address (in the namespace we run in) is where tests and clients reach
them from. Links are cut with nftables rules inside the hosts (packets dropped silently, as a
real partition does, not refused) and made lossy with nftables' random numbers, or slowed with ``tc netem`` where the kernel has it (else by devtools/delayer.py). Needs root, iproute2 and nft.

Every namespace, veth pair and bridge is named after the pid that made it, and ``close`` (or the
next Network made after that pid died) removes them: nothing outlives a failed test for long.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

from rota.common.procs import die_with_parent

NS_PREFIX = "rota-"
_NS_NAME = re.compile(r"^rota-(\d+)-(\d+)-")


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> None:
    """Remove namespaces and bridges left by a harness whose process died without closing them."""
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NS_NAME.match(name)
        if m and not _alive(int(m.group(1))):
            _run(["ip", "netns", "del", name], check=False)
    for line in _run(["ip", "-o", "link", "show", "type", "bridge"], check=False).stdout.splitlines():
        m = re.match(r"^\d+: (rotab([0-9a-f]+)-[0-9a-f]+)[:@]", line)
        if m and not _alive(int(m.group(2), 16)):
            _run(["ip", "link", "del", m.group(1)], check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no route or address of this machine touches."""
    used = []
    for line in (
        _run(["ip", "-4", "-o", "addr"]).stdout.splitlines() + _run(["ip", "-4", "route"]).stdout.splitlines()
    ):
        for token in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", line):
            used.append(ipaddress.ip_network(token, strict=False))
    start = (os.getpid() * 7) % 2048
    for i in range(2048):
        k = (start + i) % 2048
        net = ipaddress.IPv4Network(f"10.{200 + k // 256}.{k % 256}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /24 in 10.200.0.0/13 for a test network")


@dataclass
class Host:
    """One network namespace: its name, its address, and the command prefix to run in it."""

    name: str
    netns: str
    ip: str
    blocked: set[str] = field(default_factory=set)
    delayed: bool = False
    delayer: subprocess.Popen[bytes] | None = None

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


class Network:
    """A bridge and the hosts on it. Use as a context manager, or call ``close``."""

    _made = 0

    def __init__(self) -> None:
        sweep_stale()
        Network._made += 1
        self._n = Network._made
        self.tag = f"{os.getpid()}-{self._n}"
        self.bridge = f"rotab{os.getpid():x}-{self._n:x}"
        self.subnet = _free_subnet()
        addrs = list(self.subnet.hosts())
        self.gateway = str(addrs[0])
        self._free = [str(a) for a in addrs[9:]]
        self.hosts: dict[str, Host] = {}
        self._batch(
            f"link add {self.bridge} type bridge\n"
            f"addr add {self.gateway}/{self.subnet.prefixlen} dev {self.bridge}\n"
            f"link set {self.bridge} up\n"
        )

    def planned(self, count: int) -> list[str]:
        """The addresses the next ``count`` hosts will get, in order (for a certificate made first)."""
        return self._free[:count]

    def _batch(self, commands: str, netns: str = "") -> None:
        _run(["ip", *(["-n", netns] if netns else []), "-batch", "-"], stdin=commands)

    def add_host(self, name: str) -> Host:
        """A new namespace with one address on the bridge (and its loopback up)."""
        if name in self.hosts:
            raise ValueError(f"host {name} exists")
        index = len(self.hosts)
        host = Host(name, f"{NS_PREFIX}{self.tag}-{name}", self._free.pop(0))
        outer, inner = (
            f"rv{os.getpid():x}-{self._n:x}-{index}",
            f"rp{os.getpid():x}-{self._n:x}-{index}",
        )
        _run(["ip", "netns", "add", host.netns])
        self.hosts[name] = host
        self._batch(
            f"link add {outer} type veth peer name {inner}\n"
            f"link set {inner} netns {host.netns}\n"
            f"link set {outer} master {self.bridge} up\n"
        )
        self._batch(
            f"link set {inner} name eth0\n"
            f"addr add {host.ip}/{self.subnet.prefixlen} dev eth0\n"
            "link set eth0 up\nlink set lo up\n",
            host.netns,
        )
        _run(
            host.command(["nft", "-f", "-"]),
            stdin="table inet rota {\n"
            "  chain out { type filter hook output priority 0; policy accept; }\n"
            "}\n",
        )
        return host

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def _drop(self, src: Host, dst_ip: str) -> None:
        if dst_ip not in src.blocked:
            _run(src.command(["nft", "add", "rule", "inet", "rota", "out", "ip", "daddr", dst_ip, "drop"]))
            src.blocked.add(dst_ip)

    def cut(self, a: str, b: str, one_way: bool = False) -> None:
        """Drop what ``a`` sends to ``b`` (and, unless ``one_way``, what ``b`` sends to ``a``)."""
        self._drop(self.hosts[a], self.hosts[b].ip)
        if not one_way:
            self._drop(self.hosts[b], self.hosts[a].ip)

    def isolate(self, name: str) -> None:
        """Cut ``name`` off from every other host and from us."""
        for other in self.hosts:
            if other != name:
                self.cut(name, other)
        self._drop(self.hosts[name], self.gateway)

    def lose(self, name: str, loss_pct: float) -> None:
        """Drop ``loss_pct`` percent of what ``name`` sends, at random (nftables, so it needs no netem)."""
        host = self.hosts[name]
        rule = ["numgen", "random", "mod", "100", "<", str(round(loss_pct)), "drop"]
        _run(host.command(["nft", "add", "rule", "inet", "rota", "out", *rule]))
        host.blocked.add(f"loss {loss_pct}")

    def delay(self, name: str, delay_ms: float) -> None:
        """Delay everything ``name`` sends by ``delay_ms``: with ``tc netem`` where the kernel has
        it, else through an NFQUEUE and devtools/delayer.py running in the host."""
        host = self.hosts[name]
        netem = ["tc", "-n", host.netns, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay"]
        if _run([*netem, f"{delay_ms:g}ms"], check=False).returncode == 0:
            host.delayed = True
            return
        argv = [sys.executable, "-m", "rota.devtools.delayer", "--delay-ms", f"{delay_ms:g}"]
        host.delayer = subprocess.Popen(host.command(argv), preexec_fn=die_with_parent())
        time.sleep(0.5)  # bound to its queue before packets go there (the rule bypasses until then)
        if host.delayer.poll() is not None:
            raise RuntimeError(f"the delayer in {name} exited {host.delayer.returncode}")
        rule = ["OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]
        _run(host.command(["iptables", "-A", *rule]))

    def heal(self) -> None:
        """Every cut and every netem removed."""
        for host in self.hosts.values():
            if host.blocked:
                _run(host.command(["nft", "flush", "chain", "inet", "rota", "out"]))
                host.blocked.clear()
            if host.delayed:
                _run(["tc", "-n", host.netns, "qdisc", "del", "dev", "eth0", "root"], check=False)
                host.delayed = False
            if host.delayer is not None:
                _run(host.command(["iptables", "-F", "OUTPUT"]), check=False)
                host.delayer.terminate()
                host.delayer.wait(5)
                host.delayer = None

    def close(self) -> None:
        """Remove every namespace and the bridge (stop the programs in them first), whatever fails."""
        try:
            self.heal()
        except (RuntimeError, subprocess.TimeoutExpired):
            for host in self.hosts.values():
                if host.delayer is not None:
                    host.delayer.kill()
                    host.delayer.wait(5)
        for host in self.hosts.values():
            _run(["ip", "netns", "del", host.netns], check=False)
        self.hosts.clear()
        _run(["ip", "link", "del", self.bridge], check=False)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

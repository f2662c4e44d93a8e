"""``bin/master``: one master of a Rota cluster, with its embedded etcd member by default."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

import click
import grpc
from aiohttp import web

from rota.common import config as cfg
from rota.common import exposure, httpserver, membership, rpc, tls, tokens
from rota.common.health import Health
from rota.common.jobspec import MAX_RETENTION
from rota.common.logs import setup_logging
from rota.common.tls import TlsFiles
from rota.metastore import keys
from rota.metastore.client import EtcdClient, EtcdError, NoSpace
from rota.metastore.election import Election
from rota.metastore.etcd_server import (
    EtcdBinaryError,
    EtcdMember,
    MemberConfig,
    check_etcd_version,
    find_etcd_binary,
)
from rota.protos import rota_pb2, rota_pb2_grpc
from rota.scheduler import access, http_api, http_guard, upkeep
from rota.scheduler.core import DEFAULT_RETENTION
from rota.scheduler.leader import LeaderRuntime
from rota.scheduler.leadership import Leadership
from rota.scheduler.metrics import MasterMetrics
from rota.scheduler.service import MasterService, Peers
from rota.scheduler.token_store import TokenStore

log = logging.getLogger("rota.master")

_NAME_RE = membership.NAME_RE
#: The smallest etcd backend quota a master accepts (an empty database is about 20 KiB).
MIN_QUOTA = 1024**2
#: How often a master whose registration etcd refused for space tries again.
REGISTER_RETRY = 5.0
#: How often a master looks whether its embedded etcd member still runs.
MEMBER_CHECK = 0.5


@dataclass
class MasterConfig:
    name: str
    master_addr: cfg.Address
    advertise_addr: cfg.Address
    data_dir: str
    etcd_endpoints: list[str]
    member: MemberConfig | None
    etcd_bin: str | None = None
    leader_lease_ttl: float = 3.0
    job_retention: float = DEFAULT_RETENTION
    etcd_start_timeout: float = 60.0
    http_addr: cfg.Address | None = None
    #: DNS names (besides this machine's, localhost and IP addresses) the HTTP port answers to.
    http_allowed_hosts: tuple[str, ...] = ()
    etcd_quota: int = upkeep.DEFAULT_EXTERNAL_QUOTA
    #: The bootstrap admin token (--admin-token-file): given, every call needs a token.
    admin_token: tokens.Token | None = None
    #: Mutual TLS on every port and link (gRPC, HTTP as https, embedded etcd); None for none.
    tls: TlsFiles | None = None


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _advertised_host(listen_host: str) -> str:
    """The host others reach us at when we listen on a wildcard: this machine's address."""
    if not _wildcard(listen_host):
        return listen_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _replace_wildcard(urls: list[str], host: str) -> list[str]:
    out = []
    for url in urls:
        addr = cfg.parse_address(url)
        scheme = url.split("://", 1)[0]
        out.append(f"{scheme}://{host if _wildcard(addr.host) else addr.host}:{addr.port}")
    return out


DEFAULT_PEER_PORT = 8291
DEFAULT_ETCD_CLIENT_PORT = 2379


def _check_schemes(flag: str, urls: list[str], scheme: str) -> None:
    """The embedded member serves one scheme: https with --tls-*, http without."""
    wrong = [u for u in urls if not u.startswith(f"{scheme}://")]
    if wrong:
        why = "with --tls-* the embedded etcd serves https" if scheme == "https" else "https needs --tls-*"
        raise cfg.ConfigError(f"{flag} {','.join(wrong)}: use {scheme}:// URLs ({why})")


def build_config(o: dict[str, Any]) -> MasterConfig:
    """Turn parsed flags into a MasterConfig, checking what depends on several flags."""
    files = tls.from_options(o)
    scheme = "https" if files else "http"
    name = str(o["name"])
    if not _NAME_RE.match(name):
        raise cfg.ConfigError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    master_addr: cfg.Address = o["master_addr"]
    advertise: cfg.Address = o["advertise_addr"] or cfg.Address(
        _advertised_host(master_addr.host), master_addr.port
    )
    if _wildcard(advertise.host):
        raise cfg.ConfigError(f"--advertise-addr {advertise}: must name a host others can reach")
    data_dir = str(o["data_dir"] or os.path.join("rota-data", name))
    endpoints: list[str] = list(o["etcd_endpoints"] or [])
    member = None
    quota = o.get("etcd_quota_backend_bytes")
    if quota is None:
        quota = upkeep.DEFAULT_EXTERNAL_QUOTA if endpoints else MemberConfig.quota_backend_bytes
    if quota < MIN_QUOTA:
        raise cfg.ConfigError(f"--etcd-quota-backend-bytes must be at least {MIN_QUOTA // 1024**2}MiB")
    if endpoints and files is None and any(e.startswith("https://") for e in endpoints):
        raise cfg.ConfigError("--etcd-endpoints with https:// needs --tls-ca, --tls-cert and --tls-key")
    if not endpoints:
        peer_urls: list[str] = o["peer_urls"] or [f"{scheme}://127.0.0.1:{DEFAULT_PEER_PORT}"]
        client_urls: list[str] = o["etcd_client_urls"] or [f"{scheme}://127.0.0.1:{DEFAULT_ETCD_CLIENT_PORT}"]
        adv_peer = o["advertise_peer_urls"] or _replace_wildcard(peer_urls, advertise.host)
        adv_client = o["advertise_client_urls"] or _replace_wildcard(client_urls, advertise.host)
        initial: dict[str, str] = o["initial_cluster"] or {name: adv_peer[0]}
        for flag, urls in (
            ("--peer-urls", peer_urls),
            ("--etcd-client-urls", client_urls),
            ("--advertise-peer-urls", adv_peer),
            ("--advertise-client-urls", adv_client),
            ("--initial-cluster", list(initial.values())),
        ):
            _check_schemes(flag, urls, scheme)
        if name not in initial:
            raise cfg.ConfigError(
                f"--initial-cluster does not list this master's --name {name!r} (it lists {', '.join(initial)})"
            )
        if initial[name] not in adv_peer:
            raise cfg.ConfigError(
                f"--initial-cluster gives {name}={initial[name]} but this master advertises peer URL "
                f"{','.join(adv_peer)} (set --advertise-peer-urls)"
            )
        heartbeat_ms = round(float(o["etcd_heartbeat_interval"]) * 1000)
        election_ms = round(float(o["etcd_election_timeout"]) * 1000)
        if election_ms < 5 * heartbeat_ms:
            raise cfg.ConfigError(
                "--etcd-election-timeout must be at least 5 times --etcd-heartbeat-interval"
            )
        member = MemberConfig(
            name=name,
            data_dir=os.path.join(data_dir, "etcd"),
            peer_urls=peer_urls,
            advertise_peer_urls=list(adv_peer),
            client_urls=client_urls,
            advertise_client_urls=list(adv_client),
            initial_cluster=",".join(f"{n}={u}" for n, u in initial.items()),
            initial_cluster_state=str(o["initial_cluster_state"]),
            heartbeat_ms=heartbeat_ms,
            election_ms=election_ms,
            quota_backend_bytes=quota,
            tls=files,
        )
        endpoints = list(member.advertise_client_urls)
    ttl = float(o["leader_lease_ttl"])
    if ttl < 1:
        raise cfg.ConfigError("--leader-lease-ttl must be at least 1s (etcd leases count whole seconds)")
    retention = float(o["job_retention"])
    if not 1 <= retention <= MAX_RETENTION:
        raise cfg.ConfigError(f"--job-retention must be from 1s to {MAX_RETENTION / 86400:g} days")
    admin_token = _admin_token(o.get("admin_token_file"))
    listens = [("--master-addr", str(master_addr.listen()))]
    if o["http_addr"] is not None:
        listens.append(("--http-addr", str(o["http_addr"].listen())))
    if member is not None:
        listens += [("--peer-urls", u) for u in member.peer_urls]
        listens += [("--etcd-client-urls", u) for u in member.client_urls]
    exposure.check(
        listens, files is not None, admin_token is not None, bool(o.get("insecure")), "--admin-token-file"
    )
    return MasterConfig(
        name=name,
        master_addr=master_addr,
        advertise_addr=advertise,
        data_dir=data_dir,
        etcd_endpoints=endpoints,
        member=member,
        etcd_bin=o["etcd_bin"],
        leader_lease_ttl=ttl,
        job_retention=retention,
        etcd_start_timeout=float(o["etcd_start_timeout"]),
        http_addr=o["http_addr"],
        http_allowed_hosts=tuple(cfg.split_list(o["http_allowed_hosts"] or "")),
        etcd_quota=quota,
        admin_token=admin_token,
        tls=files,
    )


def _admin_token(path: str | None) -> tokens.Token | None:
    if not path:
        return None
    try:
        return tokens.read_file(path)
    except tokens.BadToken as e:
        raise cfg.ConfigError(
            f"--admin-token-file: {e} (make one with 'master-client token generate')"
        ) from None


class Master:
    """Wires the embedded etcd member, the etcd client, leadership and the gRPC server."""

    def __init__(self, conf: MasterConfig) -> None:
        self.conf = conf
        self.addr = str(conf.advertise_addr)
        self.member: EtcdMember | None = None
        self.client: EtcdClient | None = None
        self.server: grpc.aio.Server | None = None
        self.health: Health | None = None
        self.leadership: Leadership | None = None
        self.runtime: LeaderRuntime | None = None
        self.peers = Peers(conf.tls)
        self.space = upkeep.EtcdSpace(conf.etcd_quota)
        self.metrics = MasterMetrics(
            lambda: self.leadership, lambda: self.runtime.summary() if self.runtime else None, self.space
        )
        self.http: web.AppRunner | None = None
        self.tokens: TokenStore | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start()
            log.info(
                "master %s serving on %s (advertised %s)", self.conf.name, self.conf.master_addr, self.addr
            )
            await self._stop.wait()
            log.info("shutting down")
            return 0
        finally:
            await self._shutdown()

    async def _start(self) -> None:
        conf = self.conf
        if conf.http_addr is not None:
            app = httpserver.new_app(self.metrics.registry)
            names = http_guard.own_names(
                [conf.advertise_addr.host, conf.http_addr.host, *conf.http_allowed_hosts]
            )
            http_api.install(app, conf.master_addr.dial(), conf.name, names, conf.tls)
            try:
                self.http = await httpserver.start(app, conf.http_addr, conf.tls)
            except httpserver.HttpServerError as e:
                raise StartError(str(e)) from None
            scheme = "https" if conf.tls else "http"
            log.info("HTTP API, dashboard and metrics on %s://%s/", scheme, conf.http_addr.dial())
        if conf.member is not None:
            os.makedirs(conf.data_dir, exist_ok=True)
            self.member = EtcdMember(
                conf.member, binary=conf.etcd_bin, log_path=os.path.join(conf.data_dir, "etcd.log")
            )
            self.member.start()
        self.client = EtcdClient(conf.etcd_endpoints, tls=conf.tls)
        self.client.on_txn = self.metrics.on_txn
        await self._wait_for_etcd()
        with contextlib.suppress(EtcdError):
            members = await self.client.member_client_urls()
            self.client.set_endpoints(conf.etcd_endpoints + members)
        self.tokens = TokenStore(self.client, conf.admin_token)
        await self._check_auth_mode()
        await self.tokens.start()
        self.leadership = Leadership(
            self.client,
            conf.name,
            self.addr,
            conf.leader_lease_ttl,
            on_elected=self._lead,
            on_deposed=self._stop_leading,
            tls=conf.tls,
        )
        self.server = rpc.server(interceptors=[access.gate(self.tokens)] if self.tokens.enabled else [])
        service = MasterService(
            conf.name, self.addr, self.client, self.leadership, self.peers, lambda: self.runtime, self.space,
            self.tokens,
        )  # fmt: skip
        rota_pb2_grpc.add_MasterServicer_to_server(service, self.server)
        # Followers serve too: any master answers clients (it forwards to the leader).
        self.health = Health(self.server, [rota_pb2.DESCRIPTOR.services_by_name["Master"].full_name])
        await self.health.set(True)
        if not rpc.add_port(self.server, conf.master_addr.listen(), conf.tls):
            raise StartError(f"cannot listen on {conf.master_addr.listen()} (address in use?)")
        await self.server.start()
        registration = json.dumps({"name": conf.name, "addr": self.addr}).encode()
        try:
            await self.client.put(keys.master(conf.name), registration)
        except NoSpace:
            log.warning("etcd is out of space: this master registers once it has room again")
            self._tasks.append(asyncio.create_task(self._register(registration), name="register"))
        self.leadership.start()
        self._tasks.append(
            asyncio.create_task(
                upkeep.space_loop(self.client, self.space, self._upkeep_role), name="etcd-space"
            )
        )
        self._tasks.append(asyncio.create_task(service.run_looks(), name="status-looks"))
        if self.member is not None:
            self._tasks.append(asyncio.create_task(self._watch_member(), name="etcd-member"))

    async def _watch_member(self) -> None:
        """Stop this master once its embedded member was removed from the cluster (``master-client
        member remove``): etcd then ends the member, and a master without one must not go on
        campaigning through the others'. A member that exited otherwise is only logged."""
        assert self.member is not None and self.client is not None
        member, mine = self.member, set(self.member.config.advertise_peer_urls)
        while member.alive():
            await asyncio.sleep(MEMBER_CHECK)
        while True:
            try:
                members = await self.client.members(timeout=1.0)
                break
            except EtcdError as e:
                log.warning("embedded etcd member exited (code %s); cannot tell whether it was removed: %s",
                            member.returncode, e)  # fmt: skip
                await asyncio.sleep(REGISTER_RETRY)
        # By name too: a peer URL spelled otherwise than etcd stored it must not read as removed.
        if any(m.name == member.config.name or mine & set(m.peer_urls) for m in members):
            log.error("embedded etcd member exited (code %s); see %s", member.returncode, member.log_path)
            return
        log.warning("this master's etcd member was removed from the cluster (member remove): stopping")
        self._stop.set()

    async def _check_auth_mode(self) -> None:
        """Masters of one cluster all check tokens or none does: one that did not would let anyone in."""
        assert self.client is not None
        marked = await self.client.get(keys.AUTH) is not None
        if marked and not self.conf.admin_token:
            raise StartError(
                "this cluster checks tokens (/rota/auth in etcd): start every master with --admin-token-file"
            )
        if self.conf.admin_token and not marked:
            await self.client.put(keys.AUTH, json.dumps({"tokens": True}).encode())

    async def _register(self, registration: bytes) -> None:
        assert self.client is not None
        while True:
            await asyncio.sleep(REGISTER_RETRY)
            with contextlib.suppress(EtcdError):
                await self.client.put(keys.master(self.conf.name), registration)
                return

    def _upkeep_role(self) -> str | None:
        """What this master does to etcd's space: all of it when it leads; only the recovery from
        NOSPACE while nobody leads (no campaign can succeed then)."""
        if self.runtime is not None and self.runtime.ready:
            return "leader"
        if self.leadership is not None and self.leadership.leader is None and self.space.nospace:
            return "rescue"
        return None

    async def _lead(self, election: Election) -> None:
        assert self.client is not None and self.leadership is not None
        runtime = LeaderRuntime(
            self.client,
            election,
            self.leadership.step_down,
            observe_wait=self.metrics.task_wait.observe,
            observe_run=self.metrics.task_run.observe,
            retention=self.conf.job_retention,
            alarm=lambda: self.space.nospace,
            tls=self.conf.tls,
        )
        await runtime.start()
        self.runtime = runtime

    async def _stop_leading(self) -> None:
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            await runtime.stop()

    async def _wait_for_etcd(self) -> None:
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.conf.etcd_start_timeout
        next_note = loop.time() + 5
        while not await self.client.healthy(timeout=1.0):
            if self.member is not None and not self.member.alive():
                raise StartError(
                    f"embedded etcd member exited (code {self.member.returncode}); see {self.member.log_path}"
                )
            if loop.time() > deadline:
                raise StartError(
                    f"etcd at {', '.join(self.conf.etcd_endpoints)} has no quorum after "
                    f"{self.conf.etcd_start_timeout:g}s (are the other members started?)"
                )
            if loop.time() > next_note:
                log.info("waiting for etcd quorum at %s", ", ".join(self.conf.etcd_endpoints))
                next_note = loop.time() + 5
            await asyncio.sleep(0.1)

    async def _shutdown(self) -> None:
        if self.health:
            await self.health.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_leading()
        if self.tokens:
            await self.tokens.stop()
        if self.leadership:
            await self.leadership.stop()  # resign first: the next leader must not wait on HTTP
        if self.http:
            await self.http.cleanup()
        if self.server:
            await self.server.stop(grace=0.5)
        await self.peers.close()
        if self.client:
            await self.client.close()
        if self.member:
            await asyncio.to_thread(self.member.stop)


class StartError(Exception):
    """The master could not start (etcd never became healthy, port taken, ...)."""


SAMPLE_HEADER = """\
Rota master configuration. Every key is a flag of bin/master of the same name;
flags given on the command line override this file.
Three masters on one machine: give each its own name, ports and data dir, e.g.
  name = "m1", master-addr = "127.0.0.1:10250", peer-urls = "http://127.0.0.1:8292",
  etcd-client-urls = "http://127.0.0.1:2389", data-dir = "rota-data/m1"
and the same initial-cluster on all three.
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@cfg.config_option
@click.option(
    "--name",
    default=lambda: socket.gethostname().split(".")[0],
    show_default="the host name",
    help="This master's name, unique in the cluster (also its etcd member name).",
)
@click.option(
    "--master-addr",
    type=cfg.ADDRESS,
    default="127.0.0.1:10240",
    show_default=True,
    help="gRPC listen address for clients, executors and other masters.",
)
@click.option(
    "--advertise-addr",
    type=cfg.ADDRESS,
    default=None,
    help="Address others reach this master at [default: --master-addr, wildcard host replaced].",
)
@click.option(
    "--data-dir",
    default=None,
    help="Where the embedded etcd member keeps its data [default: rota-data/NAME].",
)
@click.option(
    "--peer-urls",
    type=cfg.URL_LIST,
    default=None,
    show_default=f"http://127.0.0.1:{DEFAULT_PEER_PORT}, https:// with --tls-*",
    help="Embedded etcd: URLs to listen on for peer traffic.",
)
@click.option(
    "--advertise-peer-urls",
    type=cfg.URL_LIST,
    default=None,
    help="Embedded etcd: peer URLs announced to other members [default: --peer-urls].",
)
@click.option(
    "--initial-cluster",
    type=cfg.INITIAL_CLUSTER,
    default=None,
    help="Embedded etcd: every member as name=peer-url,... [default: only this master].",
)
@click.option(
    "--initial-cluster-state",
    type=click.Choice(["new", "existing"]),
    default="new",
    show_default=True,
    help="Embedded etcd: 'new' to bootstrap a cluster, 'existing' to join one.",
)
@click.option(
    "--etcd-client-urls",
    type=cfg.URL_LIST,
    default=None,
    show_default=f"http://127.0.0.1:{DEFAULT_ETCD_CLIENT_PORT}, https:// with --tls-*",
    help="Embedded etcd: URLs to listen on for clients.",
)
@click.option(
    "--advertise-client-urls",
    type=cfg.URL_LIST,
    default=None,
    help="Embedded etcd: client URLs announced to others [default: --etcd-client-urls].",
)
@click.option(
    "--etcd-endpoints",
    type=cfg.URL_LIST,
    default=None,
    help="Use this external etcd cluster (url,...) instead of an embedded member.",
)
@click.option("--etcd-bin", default=None, help="The etcd binary [default: $ROTA_ETCD_BIN, then PATH].")
@click.option(
    "--etcd-heartbeat-interval",
    type=cfg.DURATION,
    default="50ms",
    show_default=True,
    help="Embedded etcd: raft heartbeat interval.",
)
@click.option(
    "--etcd-election-timeout",
    type=cfg.DURATION,
    default="500ms",
    show_default=True,
    help="Embedded etcd: raft election timeout (at least 5x the heartbeat).",
)
@click.option(
    "--etcd-quota-backend-bytes",
    type=cfg.SIZE,
    default=None,
    help="etcd's backend quota (e.g. 8GiB): the embedded member gets it; with --etcd-endpoints, say "
    "what the external cluster was started with. The NOSPACE alarm is disarmed once every member's "
    "database is below 80% of it [default: 8GiB embedded, 2GiB (etcd's default) external].",
)
@click.option(
    "--etcd-start-timeout",
    type=cfg.DURATION,
    default="60s",
    show_default=True,
    help="How long to wait for etcd quorum at start-up.",
)
@click.option(
    "--leader-lease-ttl",
    type=cfg.DURATION,
    default="3s",
    show_default=True,
    help="TTL of the leader's etcd lease: the longest a silent leader keeps its role.",
)
@click.option(
    "--job-retention",
    type=cfg.DURATION,
    default="24h",
    show_default=True,
    help="How long an ended job is kept (a job file's `retention` overrides it); then it is deleted "
    "from etcd and from the leader's memory, and get-job says it expired.",
)
@click.option(
    "--http-addr",
    type=cfg.OPTIONAL_ADDRESS,
    default="127.0.0.1:10280",
    show_default=True,
    help="HTTP listen address for the dashboard (/), the JSON API (/api/v1) and /metrics; 'off' for none.",
)
@click.option(
    "--insecure",
    is_flag=True,
    default=False,
    help="Listen beyond loopback without TLS and tokens anyway: anyone who can reach a port can then run "
    "code on every executor. Without it, a master whose gRPC, HTTP or etcd ports are not on loopback "
    "refuses to start unless it has --tls-* and --admin-token-file.",
)
@click.option(
    "--admin-token-file",
    default=None,
    metavar="FILE",
    help="Check a token on every call: FILE holds the bootstrap admin token (make one with "
    "'master-client token generate > FILE'; give every master the same). Other tokens are made with "
    "'master-client token create'. Once one master of a cluster checks tokens, masters without this "
    "flag refuse to start.",
)
@click.option(
    "--http-allowed-hosts",
    default="",
    metavar="NAMES",
    help="DNS names the dashboard and API may be reached by, besides IP addresses, localhost and this "
    "machine's own names (a,b,c). Requests naming any other Host are refused: a DNS-rebinding page "
    "cannot reach the API.",
)
@tls.tls_options()
@cfg.log_options
@cfg.sample_config_option(lambda: cfg.render_sample_config(_this_command(), SAMPLE_HEADER))
def master_command(**options: Any) -> int:
    """Run one Rota master.

    Three masters share one etcd cluster (by default each runs an embedded etcd
    member), elect one leader through an etcd lease and answer on any address.

    Every master serves the web dashboard, the HTTP JSON API (/api/v1) and
    Prometheus /metrics on --http-addr.

    \b
    A single local master:        master --name m0
    Three masters on one machine: see `master --print-sample-config` and cmd/master/.
    """
    conf = build_config(options)
    setup_logging(str(options["log_level"]), str(options["log_format"]), f"master[{conf.name}]")
    if conf.member is not None:
        try:
            check_etcd_version(find_etcd_binary(conf.etcd_bin))
        except EtcdBinaryError as e:
            raise cfg.ConfigError(str(e)) from None
    try:
        return asyncio.run(Master(conf).run())
    except StartError as e:
        log.error("%s", e)
        return 1


def _this_command() -> click.Command:
    return master_command


def main() -> None:
    cfg.run_command(master_command, "master")


if __name__ == "__main__":
    main()

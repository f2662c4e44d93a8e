"""``bin/executor``: join a Rota cluster through any master and run tasks."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import click
from aiohttp import web

from rota.common import admission, exposure, httpserver, rpc, tls, tokens
from rota.common import config as cfg
from rota.common import limits as lim
from rota.common import requirements as reqs
from rota.common.health import Health
from rota.common.logs import setup_logging
from rota.executor import access, confine, run_as, tasklogs
from rota.executor.access import TokenCheck
from rota.executor.agent import Agent
from rota.executor.config import AgentConfig
from rota.executor.kinds import base
from rota.executor.kinds.base import Kind
from rota.executor.metrics import ExecutorMetrics
from rota.executor.registry import load_kinds
from rota.protos import rota_pb2, rota_pb2_grpc

log = logging.getLogger("rota.executor")
#: prctl(2): whether a process's /proc files and memory are open to other processes of its user.
PR_SET_DUMPABLE = 4


class ExecutorService(rota_pb2_grpc.ExecutorServicer):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def GetStatus(self, request: rota_pb2.ExecutorStatusRequest, context: Any) -> rota_pb2.JsonReply:
        return rota_pb2.JsonReply(json=json.dumps(self.agent.status()).encode())

    async def TaskLogs(
        self, request: rota_pb2.TaskLogsRequest, context: Any
    ) -> AsyncIterator[rota_pb2.LogChunk]:
        """Served from this executor's work dir: output lives where the task ran, not in etcd."""
        async for chunk in tasklogs.serve(
            self.agent.runner.logs, self.agent.runner.running_attempt, request, context
        ):
            yield chunk


async def serve(
    conf: AgentConfig, listen: str, kinds: dict[str, Kind], http_addr: cfg.Address | None = None
) -> int:
    agent = Agent(conf, kinds)
    metrics = ExecutorMetrics()
    metrics.watch(agent)
    agent.runner.on_task_ended = metrics.task_ended
    http: web.AppRunner | None = None
    if http_addr is not None:
        try:
            http = await httpserver.start(httpserver.new_app(metrics.registry), http_addr, conf.tls)
        except httpserver.HttpServerError as e:
            log.error("%s", e)
            return 1
    checks = rpc.ChannelPool(conf.tls)
    server = rpc.server([access.gate(TokenCheck(conf.join, checks))] if conf.token else [])
    rota_pb2_grpc.add_ExecutorServicer_to_server(ExecutorService(agent), server)
    health = Health(server, [rota_pb2.DESCRIPTOR.services_by_name["Executor"].full_name])
    await health.set(False)
    if not rpc.add_port(server, listen, conf.tls):
        log.error("cannot listen on %s (address in use?)", listen)
        return 1
    await asyncio.gather(*(k.start() for k in kinds.values()))
    await server.start()
    log.info(
        "executor %s on %s: %d slots, kinds %s, joining %s",
        conf.name, listen, conf.slots, ",".join(sorted(kinds)), ",".join(conf.join),
    )  # fmt: skip
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            if not hurry.is_set():
                log.info("second signal: handing back every task and leaving now")
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    runner = asyncio.create_task(agent.run())
    health.follow(lambda: agent.serving)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
    if runner.done() and not runner.cancelled() and runner.exception() is not None:
        log.error("executor loop failed", exc_info=runner.exception())
    else:
        if not hurry.is_set():
            log.info(
                "shutting down: taking no more work, %d tasks here may take %gs to finish "
                "(a second signal hands them back at once)",
                len(agent.runner.running),
                conf.drain_timeout,
            )
        await agent.shutdown(conf.drain_timeout, hurry)
    await health.stop()
    await agent.stop()
    for t in (runner, waiter):
        t.cancel()
    await asyncio.gather(runner, waiter, return_exceptions=True)
    await server.stop(grace=0.5)
    await checks.close()
    if http is not None:
        await http.cleanup()
    for k in kinds.values():
        with contextlib.suppress(Exception):
            await k.close()
    return 0


class _Prefetch(click.ParamType):
    """'auto' (None: adaptive) or a count of tasks >= 0."""

    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value  # type: ignore[no-any-return]
        text = str(value).strip().lower()
        if text == "auto":
            return None
        if text.isdigit():
            return int(text)
        self.fail(f"{value!r} is neither 'auto' nor a whole number >= 0", param, ctx)


PREFETCH = _Prefetch()
LIMITS = cfg._ParseType("limits", lim.parse_flag)
#: A day of wall clock and 4096 processes: a task that runs away stops, whatever its job file forgot.
DEFAULT_LIMITS = "timeout=24h,processes=4096"

SAMPLE_HEADER = """\
Rota executor configuration. Every key is a flag of bin/executor of the same name;
flags given on the command line override this file.
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@cfg.config_option
@click.option(
    "--join",
    type=cfg.ADDRESS_LIST,
    default=None,
    help="Master addresses host:port[,host:port...]; any master works (required).",
)
@click.option(
    "--name",
    default=lambda: socket.gethostname().split(".")[0],
    show_default="the host name",
    help="This executor's name (its id adds a unique suffix).",
)
@click.option(
    "--worker-addr",
    type=cfg.ADDRESS,
    default="127.0.0.1:10241",
    show_default=True,
    help="This executor's own gRPC listen address.",
)
@click.option(
    "--advertise-addr",
    type=cfg.ADDRESS,
    default=None,
    help="Address masters and clients reach this executor at [default: --worker-addr].",
)
@click.option(
    "--slots",
    type=click.IntRange(1, admission.MAX_SLOTS),
    default=lambda: min(os.cpu_count() or 1, admission.MAX_SLOTS),
    show_default="the CPU count",
    help="How many tasks run at once.",
)
@click.option(
    "--prefetch",
    type=PREFETCH,
    default="auto",
    show_default=True,
    help="Tasks it takes beyond --slots, queued here by priority so a freed slot never waits for "
    "the leader. 'auto' sizes the queue to how fast tasks end (deep for short tasks, none for "
    "tasks over 0.1s); a number N fixes it.",
)
@click.option(
    "--labels",
    type=cfg.KEY_VALUES,
    default=None,
    help='Labels k=v,... shown in list-executors; tasks with constraints = { k = "v" } run only where they match.',
)
@click.option(
    "--resources",
    default=None,
    metavar="NAME=AMOUNT,...",
    help="What tasks that ask for resources may use here, e.g. cpu=8,memory=16GiB,gpu=2,licence=4 "
    "[default: this machine's cores as cpu and its memory].",
)
@click.option(
    "--keepalive-ttl",
    type=cfg.DURATION,
    default="5s",
    show_default=True,
    help="TTL of this executor's lease: silent this long, its tasks run elsewhere and it stops them.",
)
@click.option(
    "--keepalive-interval",
    type=cfg.DURATION,
    default="1s",
    show_default=True,
    help="How often it heartbeats to the leader.",
)
@click.option(
    "--pass-env",
    type=cfg.STRING_LIST,
    default=None,
    metavar="NAMES",
    help="Variables of this executor's environment that tasks inherit, besides PATH, HOME, LANG, LC_*, "
    "TZ, TMPDIR, USER and a few more (NAME,...). Tasks never see the rest: the executor's secrets "
    "stay its own.",
)
@click.option(
    "--allow-kinds",
    type=cfg.STRING_LIST,
    default=None,
    help="Task kinds it runs, kind,... [default: every installed kind this host can run].",
)
@click.option("--work-dir", default=None, help="Scratch space for tasks [default: a temporary directory].")
@click.option(
    "--drain-timeout",
    type=cfg.DURATION,
    default="30s",
    show_default=True,
    help="On SIGTERM or SIGINT: take no more work, hand back queued tasks, let running ones finish "
    "this long, hand back the rest, then leave and exit 0; a second signal hands everything back at "
    "once. Also how long a drain-executor without --timeout lets tasks run. At most 7 days.",
)
@click.option(
    "--run-as",
    default=None,
    metavar="USER",
    help="Run every task as USER (a name or uid; the executor must run as root): a task then cannot "
    "read the executor's files (token, TLS key, other tasks' logs) or signal it. Scratch dirs go to "
    "<work-dir>/tasks, owned by USER. [default: the executor's own user]",
)
@click.option(
    "--insecure",
    is_flag=True,
    default=False,
    help="Listen beyond loopback without TLS and a token anyway. Without it, an executor whose gRPC or "
    "HTTP port is not on loopback refuses to start unless it has --tls-* and --token-file.",
)
@click.option(
    "--token-file",
    envvar="ROTA_TOKEN_FILE",
    default=None,
    metavar="FILE",
    help="For a cluster that checks tokens: FILE holds this executor's join token (role executor, "
    "from 'master-client token create --role executor'). Its own port then serves task output "
    "only to callers with a read token [env: ROTA_TOKEN_FILE].",
)
@click.option(
    "--task-default-limits",
    type=LIMITS,
    default=DEFAULT_LIMITS,
    show_default=True,
    metavar="K=V,...",
    help="What bounds a task whose job file asks for less: cpu (CPU seconds per process, e.g. 10m), "
    "memory (e.g. 2GiB), processes, file-size (the largest file it may write) and timeout (wall "
    "clock). In TOML also a table. A task's own `limits` and `timeout` replace these.",
)
@click.option(
    "--task-max-limits",
    type=LIMITS,
    default="",
    metavar="K=V,...",
    help="The most a task may ask for, same keys: a task asking for more fails at once (it is not "
    "cut down); one asking nothing gets at most this. [default: none]",
)
@click.option(
    "--cgroup",
    default="auto",
    show_default=True,
    metavar="auto|off|PATH",
    help="Bound each task in a cgroup v2 of its own (memory, processes; killing it reaches every "
    "child): 'auto' uses this executor's own cgroup when it may have children with the memory and "
    "pids controllers (alone in its cgroup: a systemd unit with Delegate=yes), PATH a cgroup v2 "
    "directory it may use. Without one, or with 'off', rlimits bound tasks instead (see "
    "docs/security.md).",
)
@click.option(
    "--http-addr",
    type=cfg.OPTIONAL_ADDRESS,
    default="127.0.0.1:10281",
    show_default=True,
    help="HTTP listen address for /metrics (Prometheus); 'off' for none.",
)
@tls.tls_options()
@cfg.log_options
@cfg.sample_config_option(lambda: cfg.render_sample_config(_this_command(), SAMPLE_HEADER))
def executor_command(**o: Any) -> int:
    """Run a Rota executor: join the masters, hold a lease, run tasks.

    \b
    Example:  executor --join 127.0.0.1:10240,127.0.0.1:10250 --slots 4
    """
    if not o["join"]:
        raise cfg.ConfigError("--join is required: give one or more master addresses host:port,...")
    files = tls.from_options(o)
    ttl, interval = float(o["keepalive_ttl"]), float(o["keepalive_interval"])
    if not admission.MIN_TTL <= ttl <= admission.MAX_TTL:
        raise cfg.ConfigError(
            f"--keepalive-ttl must be from {admission.MIN_TTL:g}s (etcd leases count whole seconds) "
            f"to {admission.MAX_TTL:g}s"
        )
    try:
        admission.check_name(o["name"])
    except admission.BadHello as e:
        raise cfg.ConfigError(f"--name: {e}") from None
    if not 0 < interval < ttl:
        raise cfg.ConfigError("--keepalive-interval must be above zero and below --keepalive-ttl")
    drain_timeout = float(o["drain_timeout"])
    if drain_timeout > cfg.MAX_DRAIN_TIMEOUT:
        raise cfg.ConfigError(f"--drain-timeout must be at most {cfg.MAX_DRAIN_TIMEOUT / 86400:g} days")
    worker: cfg.Address = o["worker_addr"]
    token = _token(o["token_file"])
    run_as.set_current(run_as.resolve(o["run_as"]) if o["run_as"] else None)
    listens = [("--worker-addr", worker.listen())]
    if o["http_addr"] is not None:
        listens.append(("--http-addr", o["http_addr"].listen()))
    exposure.check(listens, files is not None, token is not None, bool(o["insecure"]), "--token-file")
    advertise: cfg.Address = o["advertise_addr"] or cfg.Address(
        worker.dial().rsplit(":", 1)[0].strip("[]"), worker.port
    )
    base.pass_env(o["pass_env"] or ())
    try:
        kinds = load_kinds(int(o["slots"]), o["allow_kinds"])
    except ValueError as e:
        raise cfg.ConfigError(f"--allow-kinds: {e}") from None
    if not kinds:
        raise cfg.ConfigError("no task kind is available on this host (check --allow-kinds)")
    work_dir = o["work_dir"] or tempfile.mkdtemp(prefix=f"rota-executor-{o['name']}-")
    os.makedirs(work_dir, exist_ok=True)
    run_as.check_reach(work_dir)
    defaults, maxima = o["task_default_limits"], o["task_max_limits"]
    lim.check_executor(defaults, maxima)
    setup_logging(str(o["log_level"]), str(o["log_format"]), f"executor[{o['name']}]")
    if problem := run_as.cannot_run(sys.executable):
        log.warning(
            "--run-as: %s, so python and call tasks will fail; install Python where that user reaches it",
            problem,
        )
    undumpable()
    mode = confine.setup(str(o["cgroup"]))
    confine.set_mode(mode)
    base.task_defaults(lim.effective(lim.Limits(), defaults, maxima))
    log.info("tasks are bounded by %s; default limits %s", mode.describe(), defaults.describe() or "none")
    try:
        resources = reqs.detected() if not o["resources"] else reqs.parse_flag(str(o["resources"]))
    except reqs.RequirementError as e:
        raise cfg.ConfigError(f"--resources{e}" if str(e).startswith(".") else f"--resources: {e}") from None
    conf = AgentConfig(
        name=str(o["name"]),
        join=[a.dial() for a in o["join"]],
        addr=str(advertise),
        slots=int(o["slots"]),
        labels=dict(o["labels"] or {}),
        resources=resources,
        keepalive_ttl=ttl,
        keepalive_interval=interval,
        work_dir=work_dir,
        prefetch=o["prefetch"],
        drain_timeout=drain_timeout,
        token=token,
        task_defaults=defaults,
        task_maxima=maxima,
        tls=files,
    )
    try:
        return asyncio.run(serve(conf, worker.listen(), kinds, o["http_addr"]))
    finally:
        if mode.cgroups is not None:
            mode.cgroups.close()


def _token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return str(tokens.read_file(path))
    except tokens.BadToken as e:
        raise cfg.ConfigError(f"--token-file: {e}") from None


def _this_command() -> click.Command:
    return executor_command


def undumpable() -> None:
    """Tasks run as the executor's user, which may read /proc/<pid>/environ and memory of its own
    processes: not the executor's, once it is not "dumpable" (Linux; elsewhere nothing changes).
    It also means no core dump of the executor. A task running as another user (root aside) could
    not read them anyway."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main() -> None:
    cfg.run_command(executor_command, "executor")


if __name__ == "__main__":
    main()

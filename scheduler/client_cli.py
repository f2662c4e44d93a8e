"""``bin/master-client``: drive a Rota cluster from the shell, on top of scheduler.client."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from scheduler import config as cfg
from scheduler.client import Client, NoMasterReachable, resolve_addresses

EXIT_NO_LEADER = 3


class Ctx:
    def __init__(self, master_addr: str | None, as_json: bool, timeout: float) -> None:
        self.master_addr = master_addr
        self.json = as_json
        self.timeout = timeout

    def client(self) -> Client:
        return Client(self.master_addr, timeout=self.timeout)


def emit(ctx: Ctx, doc: Any, human: str) -> None:
    click.echo(json.dumps(doc, indent=2) if ctx.json else human)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [headers, *rows])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--master-addr",
    envvar="ROTA_MASTER_ADDR",
    default="127.0.0.1:10240",
    show_default=True,
    help="Master addresses A[,B,C]; any master works, the next is tried when one fails "
    "[env: ROTA_MASTER_ADDR].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "--timeout",
    type=cfg.DURATION,
    default="10s",
    show_default=True,
    help="Give up (exit 3) when no master answers within this time.",
)
@click.pass_context
def cli(ctx: click.Context, master_addr: str, as_json: bool, timeout: float) -> None:
    """Talk to a Rota cluster.

    \b
    Exit codes: 0 success; 1 the waited-for job ended FAILED or CANCELLED;
    2 bad usage or bad input (nothing was submitted); 3 no leader reachable.
    """
    try:
        resolve_addresses(master_addr)
    except cfg.ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--master-addr") from None
    ctx.obj = Ctx(master_addr, as_json, timeout)


@cli.command("cluster-status")
@click.pass_obj
def cluster_status(ctx: Ctx) -> None:
    """Show the leader, every master's role, etcd health and the executor count."""
    with ctx.client() as c:
        s = c.cluster_status()
    leader = s["leader"]
    lines = [
        f"leader:    {leader['name']} ({leader['addr']})" if leader else "leader:    none",
        f"etcd:      {'healthy' if s['etcd']['healthy'] else 'UNHEALTHY'} ({', '.join(s['etcd']['endpoints'])})",
        f"executors: {s['executors']}",
        "",
        table(["MASTER", "ADDRESS", "ROLE"], [[m["name"], m["addr"], m["role"]] for m in s["masters"]]),
    ]
    emit(ctx, s, "\n".join(lines))


def main() -> None:
    try:
        cfg.run_command(cli, "master-client")
    except NoMasterReachable as e:
        click.echo(f"master-client: error: {e}", err=True)
        sys.exit(EXIT_NO_LEADER)


if __name__ == "__main__":
    main()

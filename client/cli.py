"""``bin/master-client``: drive a Rota cluster from the shell, on top of scheduler.client."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

import click

from rota.client.api import Client, NoMasterReachable, OutOfSpace, RequestError, resolve_addresses
from rota.client.errors import AccessDenied
from rota.common import certs, membership, roles, tls, tokens
from rota.common import config as cfg
from rota.common.jobspec import JobSpecError
from rota.common.paging import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_TASK_PAGE
from rota.common.states import CANCELLED, FAILED, JOB_STATES, TERMINAL

EXIT_JOB_FAILED = 1
EXIT_BAD_INPUT = 2
#: get-job shows this many tasks in a table; --json always has them all.
MAX_TASK_ROWS = 20

EXIT_NO_LEADER = 3
EXIT_OUT_OF_SPACE = 4
EXIT_ACCESS_DENIED = 5


class Ctx:
    def __init__(
        self,
        master_addr: str | None,
        as_json: bool,
        timeout: float,
        tls_options: dict[str, Any],
        token: str | None = None,
    ) -> None:
        self.master_addr = master_addr
        self.json = as_json
        self.timeout = timeout
        self.tls_options = tls_options
        self.token = token

    def client(self) -> Client:
        # Checked here, not in the group: `certs create` needs no certificate to make the first ones.
        return Client(
            self.master_addr, timeout=self.timeout, token=self.token, tls=tls.from_options(self.tls_options)
        )


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
@click.option(
    "--token-file",
    envvar="ROTA_TOKEN_FILE",
    default=None,
    metavar="FILE",
    help="Send the token in FILE with every call, for a cluster that checks tokens; $ROTA_TOKEN may hold "
    "the token itself instead [env: ROTA_TOKEN_FILE].",
)
@tls.tls_options(env=True)
@click.pass_context
def cli(
    ctx: click.Context,
    master_addr: str,
    as_json: bool,
    timeout: float,
    token_file: str | None,
    **tls_options: str | None,
) -> None:
    """Talk to a Rota cluster.

    \b
    Exit codes: 0 success; 1 the waited-for job ended FAILED or CANCELLED;
    2 bad usage or bad input (nothing was submitted); 3 no leader reachable;
    4 etcd is out of space (nothing was changed, or the change is held until it has room);
    5 refused: no token, an unknown or revoked one, or a role that does not allow the call.
    """
    try:
        resolve_addresses(master_addr)
    except cfg.ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--master-addr") from None
    token = None
    if token_file:
        try:
            token = str(tokens.read_file(token_file))
        except tokens.BadToken as e:
            raise click.BadParameter(str(e), param_hint="--token-file") from None
    ctx.obj = Ctx(master_addr, as_json, timeout, tls_options, token)


@cli.command("cluster-status")
@click.pass_obj
def cluster_status(ctx: Ctx) -> None:
    """Show the leader, every master's role, etcd's health, alarms and database sizes, and the executor count."""
    with ctx.client() as c:
        s = c.cluster_status()
    leader = s["leader"]
    etcd = s["etcd"]
    alarms: dict[str, list[str]] = {}
    for a in etcd["alarms"]:
        alarms.setdefault(a["alarm"], []).append(a["member"])
    lines = [
        f"leader:    {leader['name']} ({leader['addr']})" if leader else "leader:    none",
        f"etcd:      {'healthy' if etcd['healthy'] else 'UNHEALTHY'} ({', '.join(etcd['endpoints'])})",
        "alarms:    " + ("; ".join(f"{k} ({', '.join(v)})" for k, v in sorted(alarms.items())) or "none"),
        f"executors: {s['executors']}",
        "",
        table(["MASTER", "ADDRESS", "ROLE"], [[m["name"], m["addr"], m["role"]] for m in s["masters"]]),
    ]
    if etcd["members"]:
        rows = [
            [m["name"], m["endpoint"], _mib(m["db_size"]), _mib(m["db_size_in_use"]), m["error"] or ""]
            for m in etcd["members"]
        ]
        lines += [
            "",
            table(
                [f"ETCD MEMBER (quota {_mib(etcd['quota'])})", "ENDPOINT", "DB SIZE", "IN USE", "ERROR"], rows
            ),
        ]
    emit(ctx, s, "\n".join(lines))


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024**2:.1f} MiB"


def _summary(result: dict[str, Any] | None) -> str:
    if not result:
        return ""
    if result.get("error"):
        text = str(result["error"])
    elif result.get("value") is not None:
        text = json.dumps(result["value"])
    else:
        out = (result.get("stdout") or "").strip().splitlines()
        text = out[-1] if out else f"exit {result.get('exit_code')}"
    return text if len(text) <= 60 else text[:57] + "..."


def _result_cell(task: dict[str, Any]) -> str:
    """The result's summary; for a task still waiting for the tasks it runs after, their names."""
    if task.get("waiting_for"):
        return _summary({"error": "waiting for: " + ", ".join(task["waiting_for"])})
    return _summary(task["result"])


def _counts(doc: dict[str, Any]) -> str:
    return " ".join(f"{state.lower()}={n}" for state, n in doc["counts"].items())


def _attempt(task: dict[str, Any]) -> str:
    """The attempt number, and how many attempts were lost with an executor (not failures)."""
    lost = task.get("lost") or 0
    return f"{task['attempt']} ({lost} lost)" if lost else str(task["attempt"])


def job_text(doc: dict[str, Any], tasks_from: int = 0) -> str:
    lines = [
        f"job:      {doc['id']} ({doc['name']})",
        f"state:    {doc['state']}",
        f"priority: {doc['priority']}",
        f"tasks:    {_counts(doc)}",
    ]
    if doc.get("type"):
        lines.insert(1, f"type:     {doc['type']}")
    tasks = doc.get("tasks")
    if tasks:
        rows = [
            [t["id"], t["name"], t["state"], _attempt(t), t["executor"] or "-", _result_cell(t)]
            for t in tasks[:MAX_TASK_ROWS]
        ]
        lines += ["", table(["TASK", "NAME", "STATE", "ATTEMPT", "EXECUTOR", "RESULT"], rows)]
        shown_to = tasks_from + min(len(tasks), MAX_TASK_ROWS)
        more = sum(doc["counts"].values()) - shown_to
        if more > 0:
            lines.append(
                f"... and {more} more tasks (--tasks-from {shown_to} shows the next; --json shows all)"
            )
    if isinstance(doc.get("report"), dict):
        lines += ["", "report:", *report_lines(doc["report"])]
    return "\n".join(lines)


def report_lines(report: dict[str, Any]) -> list[str]:
    """A job's report as ``key: value`` lines; a nested object on one line as ``key=value`` pairs."""
    width = max((len(str(k)) for k in report), default=0) + 1
    out = []
    for key, value in report.items():
        if isinstance(value, dict):
            text = "  ".join(f"{k}={_report_value(v)}" for k, v in value.items())
        else:
            text = _report_value(value)
        out.append(f"  {str(key) + ':':<{width}} {text}")
    return out


def _report_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, separators=(",", ":"))


def _exit_for(doc: dict[str, Any]) -> None:
    if doc["state"] in (FAILED, CANCELLED):
        sys.exit(EXIT_JOB_FAILED)


class Progress:
    """A one-line progress bar on stderr, for --wait on a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def __call__(self, doc: dict[str, Any]) -> None:
        if not self.enabled:
            return
        total = sum(doc["counts"].values()) or 1
        done = sum(n for s, n in doc["counts"].items() if s in TERMINAL)
        width = 30
        filled = int(width * done / total)
        bar = "#" * filled + "." * (width - filled)
        click.echo(f"\r{doc['id']} [{bar}] {done}/{total} {doc['state'].lower()}  ", nl=False, err=True)

    def end(self) -> None:
        if self.enabled:
            click.echo("", err=True)


def wait_and_print(ctx: Ctx, wait: Callable[[Progress | None], dict[str, Any]]) -> None:
    progress = Progress()
    try:
        doc = wait(progress if not ctx.json else None)
    finally:
        progress.end()
    emit(ctx, doc, job_text(doc))
    _exit_for(doc)


@cli.command("submit-job")
@click.option(
    "--config",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The job file: TOML, or JSON or YAML by its extension (.json, .yaml, .yml).",
)
@click.option(
    "--wait", is_flag=True, help="Wait for the job to end and print it (exit 1 if it did not succeed)."
)
@click.option("--id", "job_id", default=None, help="Job id; submitting an existing id returns that job.")
@click.pass_obj
def submit_job(ctx: Ctx, path: str, wait: bool, job_id: str | None) -> None:
    """Submit a job file; it is acknowledged once committed to etcd.

    \b
    A file with `type = "NAME"` is expanded by the job type NAME (a rota.jobs plug-in):
      master-client submit-job --config sample/jobs/fanout.toml --wait
    A file with `schedule = "CRON"` makes a schedule, whose jobs the leader submits at
    each fire time (list-schedules shows them):
      master-client submit-job --config sample/jobs/cron.toml
    """
    with ctx.client() as c:
        if wait:
            # One call submits and waits: a short job costs one round trip.
            wait_and_print(ctx, lambda progress: c.run_job(path, job_id, progress=progress))
            return
        reply = c.submit_job(path, job_id)
    if "schedule" in reply:
        doc = reply["schedule"]
        verb = "created schedule" if reply["created"] else "schedule already exists:"
        emit(
            ctx,
            reply,
            f"{verb} {reply['id']} ({doc['schedule']} {doc['time_zone']}); next fire {doc['next_fire']}",
        )
        return
    verb = "submitted job" if reply["created"] else "job already exists:"
    emit(ctx, reply, f"{verb} {reply['id']}")


@cli.command("get-job")
@click.argument("job_id")
@click.option(
    "--tasks-from",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Show tasks from this index on (the task ids' N in JOB/N).",
)
@click.option(
    "--task-limit",
    type=click.IntRange(1, MAX_TASK_PAGE),
    default=None,
    help=f"Show at most this many tasks, read in one call (at most {MAX_TASK_PAGE}); "
    "without it --json has every task from --tasks-from on, read a page at a time.",
)
@click.pass_obj
def get_job(ctx: Ctx, job_id: str, tasks_from: int, task_limit: int | None) -> None:
    """Show a job, its task counts and its tasks with results.

    \b
    A job of any size is read a page at a time:
      master-client --json get-job JOB --tasks-from 20000 --task-limit 10000
    """
    if not ctx.json and task_limit is None:
        task_limit = MAX_TASK_ROWS + 1  # the table shows MAX_TASK_ROWS: one more says more exist
    with ctx.client() as c:
        doc = c.get_job(job_id, tasks_from, task_limit)
    emit(ctx, doc, job_text(doc, tasks_from))


@cli.command("list-jobs")
@click.option(
    "--state",
    type=click.Choice([str(s) for s in JOB_STATES], case_sensitive=False),
    default=None,
    help="Only jobs in this state.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIST_LIMIT),
    default=DEFAULT_LIST_LIMIT,
    show_default=True,
    help="Show the newest this many jobs.",
)
@click.option(
    "--before", metavar="JOB", default=None, help="Only jobs submitted before job JOB: the next page."
)
@click.pass_obj
def list_jobs(ctx: Ctx, state: str | None, limit: int, before: str | None) -> None:
    """List jobs, oldest first: the newest --limit of them.

    \b
    When older jobs remain, the table says so on stderr; the next page is
      master-client list-jobs --before FIRST-JOB-ID-SHOWN
    """
    with ctx.client() as c:
        docs, more = c.list_jobs_page(state.upper() if state else None, limit, before)
    rows = [[d["id"], d["name"], d["state"], str(d["priority"]), _counts(d)] for d in docs]
    emit(ctx, docs, table(["JOB", "NAME", "STATE", "PRIORITY", "TASKS"], rows) if docs else "no jobs")
    if more and not ctx.json:
        click.echo(f"older jobs remain: master-client list-jobs --before {docs[0]['id']}", err=True)


@cli.command("wait-job")
@click.argument("job_id")
@click.pass_obj
def wait_job(ctx: Ctx, job_id: str) -> None:
    """Wait until a job ends and print it; exit 1 if it FAILED or was CANCELLED."""
    with ctx.client() as c:
        wait_and_print(ctx, lambda progress: c.wait_job(job_id, progress=progress))


@cli.command("cancel-job")
@click.argument("job_id")
@click.pass_obj
def cancel_job(ctx: Ctx, job_id: str) -> None:
    """Cancel a job: running tasks are killed, pending ones never start."""
    with ctx.client() as c:
        doc = c.cancel_job(job_id)
    emit(ctx, doc, job_text({**doc, "tasks": []}))


def change_line(revision: int, c: dict[str, Any]) -> str:
    if c["event"] == "task":
        where = f" on {c['executor']}" if c.get("executor") else ""
        return f"{revision}  {c['job']}/{c['task']}  {c['state']}  attempt {c['attempt']}{where}"
    return f"{revision}  {c['job']}  {c['event']}" + (f" {c['state']}" if c.get("state") else "")


@cli.command("watch")
@click.argument("job_id", required=False, default="")
@click.option(
    "--from",
    "from_revision",
    type=click.IntRange(min=0),
    default=0,
    help="Start after this etcd revision (the first column; a revision printed before + 1 resumes "
    "without a gap or a repeat) [default: from now].",
)
@click.pass_obj
def watch(ctx: Ctx, job_id: str, from_revision: int) -> None:
    """Print job and task state changes as they are committed, one line each (--json: one JSON
    document per revision, {"revision", "changes"}). With JOB, only that job's, ending when it
    ends. Any master serves it; if that master goes, the stream goes on from another one."""
    with ctx.client() as c:
        for revision, changes in c.watch_events(job_id, from_revision):
            if ctx.json:
                click.echo(json.dumps({"revision": revision, "changes": changes}))
            else:
                for ch in changes:
                    click.echo(change_line(revision, ch))
            if job_id and any(ch["event"] in ("ended", "expired") for ch in changes):
                return


def schedules_table(docs: list[dict[str, Any]]) -> str:
    rows = [
        [
            d["id"], d["schedule"], d["time_zone"], d["overlap"], "paused" if d["paused"] else (d["next_fire"] or "-"),
            d["last_job"] or "-", str(d["fired"]), str(d["skipped"]), str(d["missed"]),
        ]
        for d in docs
    ]  # fmt: skip
    headers = ["SCHEDULE", "CRON", "ZONE", "OVERLAP", "NEXT FIRE", "LAST JOB", "FIRED", "SKIPPED", "MISSED"]
    return table(headers, rows) if docs else "no schedules"


@cli.command("list-schedules")
@click.pass_obj
def list_schedules(ctx: Ctx) -> None:
    """List the schedules (job files with `schedule`): next fire, last job, fires so far."""
    with ctx.client() as c:
        docs = c.list_schedules()
    emit(ctx, docs, schedules_table(docs))


def _update_schedule(ctx: Ctx, schedule_id: str, action: str) -> None:
    with ctx.client() as c:
        doc = c.update_schedule(schedule_id, action)
    emit(ctx, doc, schedules_table([doc]))


@cli.command("pause-schedule")
@click.argument("schedule_id")
@click.pass_obj
def pause_schedule(ctx: Ctx, schedule_id: str) -> None:
    """Stop a schedule's fires until resume-schedule; its running jobs go on."""
    _update_schedule(ctx, schedule_id, "pause")


@cli.command("resume-schedule")
@click.argument("schedule_id")
@click.pass_obj
def resume_schedule(ctx: Ctx, schedule_id: str) -> None:
    """Fire a paused schedule again, from its next fire time (fires while paused are not made up)."""
    _update_schedule(ctx, schedule_id, "resume")


@cli.command("delete-schedule")
@click.argument("schedule_id")
@click.pass_obj
def delete_schedule(ctx: Ctx, schedule_id: str) -> None:
    """Delete a schedule: no more fires; the jobs it made stay, until their retention ends."""
    _update_schedule(ctx, schedule_id, "delete")


def executors_table(docs: list[dict[str, Any]]) -> str:
    rows = [
        [
            d["id"],
            d["addr"],
            f"{d['running']}/{d['slots']}",
            d["state"],
            ",".join(f"{k}={v}" for k, v in d["labels"].items()),
        ]
        for d in docs
    ]
    return table(["EXECUTOR", "ADDRESS", "RUNNING", "STATE", "LABELS"], rows) if docs else "no executors"


@cli.command("list-executors")
@click.pass_obj
def list_executors(ctx: Ctx) -> None:
    """List the executors the leader knows, with their slots and running tasks."""
    with ctx.client() as c:
        docs = c.list_executors()
    emit(ctx, docs, executors_table(docs))


@cli.command("drain-executor")
@click.argument("name")
@click.option(
    "--timeout",
    "drain_timeout",
    type=cfg.DURATION,
    default=None,
    help="How long running tasks may take to finish before they are handed back "
    "[default: the executor's --drain-timeout; at most 7 days].",
)
@click.pass_obj
def drain_executor(ctx: Ctx, name: str, drain_timeout: float | None) -> None:
    """Place no more work on an executor (NAME is its id, or a name: every executor of that name).

    It hands back its queued tasks at once, lets running ones finish, then hands back the rest;
    handed-back tasks run elsewhere without using up max-attempts. It stays attached, taking no
    work, until undrain-executor. A new leader keeps the drain."""
    if drain_timeout is not None and float(drain_timeout) > cfg.MAX_DRAIN_TIMEOUT:
        raise click.BadParameter(
            f"at most {cfg.MAX_DRAIN_TIMEOUT / 86400:g} days, got {drain_timeout:g}s", param_hint="--timeout"
        )
    with ctx.client() as c:
        docs = c.drain_executor(name, None if drain_timeout is None else float(drain_timeout))
    emit(ctx, docs, executors_table(docs))


@cli.command("undrain-executor")
@click.argument("name")
@click.pass_obj
def undrain_executor(ctx: Ctx, name: str) -> None:
    """Let a drained executor take work again (NAME as for drain-executor)."""
    with ctx.client() as c:
        docs = c.undrain_executor(name)
    emit(ctx, docs, executors_table(docs))


@cli.command("logs")
@click.argument("job_id", metavar="JOB")
@click.argument("task", required=False)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Wait for a pending task to start, then stream its output until the attempt ends.",
)
@click.pass_obj
def logs(ctx: Ctx, job_id: str, task: str | None, follow: bool) -> None:
    """Print a task's stdout and stderr, fetched from the executor that ran it.

    \b
    TASK is a name as get-job shows it (greet, square-3, pi-shard0), an id (JOB/N) or an index N;
    it may be left out when the job has one task. The latest attempt is shown, its stdout on stdout
    and its stderr on stderr, each as the task wrote it. Output stays on the executor (the last
    1000 attempts, up to 16 MiB per stream): once an executor has left, its tasks' logs are gone.
    Exit 2 when there is nothing to read: unknown job or task, a task that never started, an
    executor that has left or does not answer.
    """
    doc: dict[str, Any] = {"job": job_id, "task": None, "name": None, "attempt": None, "executor": None}
    captured: dict[str, list[bytes]] = {"stdout": [], "stderr": [], "notice": []}

    def found(t: dict[str, Any]) -> None:
        doc.update(task=t["id"], name=t["name"], attempt=t["attempt"], executor=t["executor"])

    out, err = sys.stdout.buffer, sys.stderr.buffer
    with ctx.client() as c:
        try:
            for stream, data in c.task_logs(job_id, task, follow=follow, on_task=found):
                if ctx.json:
                    captured[stream].append(data)
                elif stream == "notice":
                    click.echo(f"master-client: {data.decode(errors='replace')}", err=True)
                else:
                    sink = out if stream == "stdout" else err
                    sink.write(data)
                    sink.flush()
        except BrokenPipeError:
            # The reader went away (``logs JOB | head``): stop quietly, as cat does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
    if ctx.json:
        text = {k: b"".join(v).decode(errors="replace") for k, v in captured.items() if k != "notice"}
        notices = [n.decode(errors="replace") for n in captured["notice"]]
        emit(ctx, {**doc, **text, "notices": notices}, "")


@cli.group("token")
def token_group() -> None:
    """Make, list and revoke API tokens (a cluster checks them once its masters have --admin-token-file).

    \b
    Roles: admin (everything), submit (submit, read, cancel its own jobs),
    read (read only), executor (join the cluster as an executor).
    """


@token_group.command("generate")
def token_generate() -> None:
    """Print a new random token without asking any master: the bootstrap admin token for
    --admin-token-file (every other token comes from 'token create')."""
    click.echo(str(tokens.generate()))


@token_group.command("create")
@click.option("--role", required=True, type=click.Choice(list(roles.ROLES)), help="What the token may do.")
@click.option("--name", required=True, help="Who or what it is for (1-64 of A-Z a-z 0-9 _ . @ -).")
@click.pass_obj
def token_create(ctx: Ctx, role: str, name: str) -> None:
    """Make a token (needs an admin token). It is printed once: the cluster keeps only its hash."""
    with ctx.client() as c:
        text, rec = c.create_token(role, name)
    emit(ctx, {**rec, "token": text}, text)
    if not ctx.json:
        click.echo(
            f"token {rec['id']} ({rec['name']}, role {rec['role']}): keep it now, it is not shown again",
            err=True,
        )


@token_group.command("list")
@click.pass_obj
def token_list(ctx: Ctx) -> None:
    """Every token's id, role, name and creation time (never the tokens themselves)."""
    with ctx.client() as c:
        recs = c.list_tokens()
    rows = [[r["id"], r["role"], r["name"], _when(r["created"]), r.get("by") or "-"] for r in recs]
    emit(ctx, recs, table(["ID", "ROLE", "NAME", "CREATED", "BY"], rows))


@token_group.command("revoke")
@click.argument("token_id")
@click.pass_obj
def token_revoke(ctx: Ctx, token_id: str) -> None:
    """Revoke a token by its id: every master refuses it from then on."""
    with ctx.client() as c:
        rec = c.revoke_token(token_id)
    emit(ctx, rec, f"revoked token {rec['id']} ({rec['name']}, role {rec['role']})")


@token_group.command("whoami")
@click.pass_obj
def token_whoami(ctx: Ctx) -> None:
    """Show the role and name of the token this client sends."""
    with ctx.client() as c:
        who = c.whoami()
    if "role" in who:
        emit(ctx, who, f"token {who['id']} ({who['name']}), role {who['role']}")
    else:
        emit(ctx, who, "this cluster does not check tokens")


def _when(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t or 0, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@cli.group("member")
def member_group() -> None:
    """List, add and remove masters' etcd members while the cluster runs (admin).

    \b
    Add a master:      member add m3 https://10.0.0.8:8291, then start it as printed
    Replace a dead one: member remove m2; member add m4 URL; start m4 on its host
    """


def members_table(docs: list[dict[str, Any]]) -> str:
    def state(d: dict[str, Any]) -> str:
        if not d["started"]:
            return "not started"
        return "healthy" if d["healthy"] else f"UNHEALTHY: {d['error']}"

    rows = [
        [
            d["name"] or "-", d["id"], ",".join(d["peer_urls"]), ",".join(d["client_urls"]) or "-", state(d),
            ("leader" if d["leader"] else "") + (" raft-leader" if d["raft_leader"] else ""),
        ]
        for d in docs
    ]  # fmt: skip
    return table(["NAME", "ID", "PEER URLS", "CLIENT URLS", "STATE", "ROLE"], rows)


@member_group.command("list")
@click.pass_obj
def member_list(ctx: Ctx) -> None:
    """Every etcd member: name, id, peer and client URLs, whether it started and answers, and
    which one leads (Rota's leader, and etcd's raft leader)."""
    with ctx.client() as c:
        docs = c.list_members()
    emit(ctx, docs, members_table(docs))


@member_group.command("add")
@click.argument("name")
@click.argument("peer_url", metavar="PEER-URL")
@click.pass_obj
def member_add(ctx: Ctx, name: str, peer_url: str) -> None:
    """Add the etcd member of a new master NAME, reached by the others at PEER-URL
    (http(s)://its-address:8291), then print how to start that master: it must be started
    with these flags, a fresh --data-dir and its own addresses, and then joins as a follower.
    Refused while the members that answer could not keep a quorum as the new one joins."""
    try:
        membership.check_name(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    try:
        peer_url = membership.check_peer_url(peer_url)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="PEER-URL") from None
    with ctx.client() as c:
        reply = c.add_member(name, peer_url)
    added = reply["added"]
    lines = [
        f"added member {name} (id {added['id']}) at {peer_url}; now start its master on that host with an "
        "empty --data-dir:",
        "",
        "  bin/master " + shlex.join(reply["flags"]) + " \\",
        "    --master-addr ... --advertise-addr ... --etcd-client-urls ... "
        "(its own; and the --tls-* and --admin-token-file the other masters have)",
        "",
        "Then give clients and executors its address too (--master-addr, --join).",
    ]
    emit(ctx, reply, "\n".join(lines))


@member_group.command("remove")
@click.argument("name")
@click.pass_obj
def member_remove(ctx: Ctx, name: str) -> None:
    """Remove a master's etcd member, by NAME or by its id (member list shows both), and its
    master's registration. A master still running stops once its member is removed. Refused for
    the last member, or when the members left that answer could not make a quorum."""
    if not name.strip():
        raise click.BadParameter("name a member (its name or id)", param_hint="NAME")
    with ctx.client() as c:
        reply = c.remove_member(name)
    gone = reply["removed"]
    emit(
        ctx,
        reply,
        f"removed member {gone['name'] or gone['id']} (id {gone['id']}); {len(reply['members'])} left:\n\n"
        + members_table(reply["members"]),
    )


@cli.group("certs")
def certs_group() -> None:
    """Make certificates for mutual TLS between masters, executors and clients."""


@certs_group.command("create")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option(
    "--hosts",
    required=True,
    help="IP addresses and DNS names the node is reached at, a,b,c (e.g. 127.0.0.1,localhost,host-a,10.0.0.5).",
)
@click.option(
    "--days", type=click.IntRange(1, certs.MAX_DAYS), default=certs.DEFAULT_DAYS, show_default=True,
    help="How long the certificates are valid.",
)  # fmt: skip
@click.option(
    "--ca-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Sign with the CA in this directory (ca.pem, ca-key.pem) instead of making a new one.",
)
@click.pass_obj
def certs_create(ctx: Ctx, out: str, hosts: str, days: int, ca_dir: str | None) -> None:
    """Write a CA (ca.pem, ca-key.pem) and one node certificate (node.pem, node-key.pem), good for
    servers and clients alike, naming --hosts. Keys are written 0600; existing files are never
    overwritten.

    \b
    Three hosts: make the CA and host-a's certificate once, then one per other host:
      master-client certs create --out a --hosts 127.0.0.1,localhost,host-a,10.0.0.5
      master-client certs create --ca-dir a --out b --hosts 127.0.0.1,localhost,host-b,10.0.0.6
    and copy ca.pem, node.pem, node-key.pem to each host (ca-key.pem stays where it was made).
    """
    written = certs.create(out, certs.parse_hosts(hosts), days, ca_dir)
    emit(ctx, {"written": written}, "\n".join(f"wrote {p}" for p in written))


def main() -> None:
    try:
        cfg.run_command(cli, "master-client")
    except NoMasterReachable as e:
        click.echo(f"master-client: error: {e}", err=True)
        sys.exit(EXIT_NO_LEADER)
    except (JobSpecError, RequestError) as e:
        click.echo(f"master-client: error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except OutOfSpace as e:
        click.echo(f"master-client: error: {e}", err=True)
        sys.exit(EXIT_OUT_OF_SPACE)
    except AccessDenied as e:
        click.echo(f"master-client: refused: {e}", err=True)
        sys.exit(EXIT_ACCESS_DENIED)


if __name__ == "__main__":
    main()

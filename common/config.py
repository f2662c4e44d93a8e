"""Flags, TOML config files and the value types all Rota programs share.

Every flag has a TOML key of the same kebab-case name in the program's
``--config`` file; flags override the file, and an unknown key is an error
that names it. The executor imports this module too: it is the one shared
place for addresses, durations and the command-line error convention.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from rota.common import formats

EXIT_USAGE = 2
#: A config file is a few flags: anything larger is not one.
MAX_CONFIG_BYTES = 1024 * 1024
#: The longest drain an executor may be given (--drain-timeout, drain-executor --timeout): a week,
#: as long as a task's own timeout may be.
MAX_DRAIN_TIMEOUT = 7 * 86400.0


class ConfigError(Exception):
    """Bad user input: a flag, a config file or a value inside one."""


@dataclass(frozen=True)
class Address:
    """A gRPC address. An empty host means every interface (``:port``)."""

    host: str
    port: int

    def listen(self) -> str:
        return f"{_bracket(self.host or '0.0.0.0')}:{self.port}"

    def dial(self) -> str:
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"{_bracket(host)}:{self.port}"

    def __str__(self) -> str:
        return f"{_bracket(self.host)}:{self.port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_ADDR_RE = re.compile(
    r"^(?:(?P<scheme>https?)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]*):(?P<port>\d+)/?$"
)
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|s|m|h)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_address(text: str) -> Address:
    """Parse ``host:port``, ``http://host:port`` or ``:port``."""
    m = _ADDR_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ConfigError(f"malformed address {text!r}: expected host:port, http://host:port or :port")
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise ConfigError(f"malformed address {text!r}: port {port} is out of range 1-65535")
    return Address(m.group("host").strip("[]"), port)


def parse_url(text: str) -> str:
    """Normalise an etcd URL to ``http://host:port``."""
    addr = parse_address(text)
    scheme = "https" if text.strip().startswith("https://") else "http"
    host = addr.host or "0.0.0.0"
    return f"{scheme}://{_bracket(host)}:{addr.port}"


def split_list(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(i).strip() for i in items if str(i).strip()]


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``500ms``, ``3s``, ``1m``, ``1m30s``; a bare number is seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"malformed duration {value!r}: expected e.g. 500ms, 3s, 1m")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ConfigError(
                f"malformed duration: {len(str(abs(value)))} digits of seconds is too long"
            ) from None
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_RE.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ConfigError(f"malformed duration {value!r}: expected e.g. 500ms, 3s, 1m") from None
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds < 0:
        raise ConfigError(f"malformed duration {value!r}: must not be negative")
    return seconds


_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: str | int) -> int:
    """Bytes from ``8GiB``, ``512MiB``, ``4M``, or a bare number of bytes (units count in 1024s)."""
    if isinstance(value, bool):
        raise ConfigError(f"malformed size {value!r}: expected e.g. 64MiB, 8GiB or a number of bytes")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.fullmatch(value.strip())
    if match is None:
        raise ConfigError(f"malformed size {value!r}: expected e.g. 64MiB, 8GiB or a number of bytes")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "")[:1].upper()])


def parse_key_values(value: str | Sequence[str] | dict[str, Any], what: str = "label") -> dict[str, str]:
    """``k=v,k2=v2`` (or a TOML table) into a dict."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in split_list(value):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"malformed {what} {item!r}: expected key=value")
        out[key.strip()] = val.strip()
    return out


def parse_initial_cluster(value: str | Sequence[str]) -> dict[str, str]:
    """``name=url,...`` into an ordered name-to-peer-URL dict."""
    members = parse_key_values(value, what="initial-cluster member")
    return {name: parse_url(url) for name, url in members.items()}


class _ParseType(click.ParamType):
    """A click type built from one of the parse functions above."""

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        self.name = name
        self._fn = fn

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, (str, int, float, list, dict)) or isinstance(value, bool):
            return value if not isinstance(value, bool) else self.fail(f"unexpected boolean {value!r}")
        try:
            return self._fn(value)
        except ConfigError as e:
            self.fail(str(e), param, ctx)


def _list_of(fn: Callable[[str], Any]) -> Callable[[Any], list[Any]]:
    def parse(value: Any) -> list[Any]:
        if isinstance(value, list) and value and not isinstance(value[0], str):
            return value
        return [fn(v) for v in split_list(value)]

    return parse


def _keep_parsed(fn: Callable[[Any], Any], kind: type) -> Callable[[Any], Any]:
    return lambda v: v if isinstance(v, kind) else fn(v)


ADDRESS = _ParseType("address", _keep_parsed(parse_address, Address))
OPTIONAL_ADDRESS = _ParseType(
    "address|off",
    lambda v: (
        None
        if isinstance(v, str) and v.strip().lower() in ("off", "")
        else _keep_parsed(parse_address, Address)(v)
    ),
)
ADDRESS_LIST = _ParseType("addresses", _list_of(parse_address))
URL = _ParseType("url", parse_url)
URL_LIST = _ParseType("urls", _list_of(parse_url))
DURATION = _ParseType("duration", parse_duration)
SIZE = _ParseType("size", parse_size)
KEY_VALUES = _ParseType("k=v,...", lambda v: parse_key_values(v))
INITIAL_CLUSTER = _ParseType("name=url,...", lambda v: v if isinstance(v, dict) else parse_initial_cluster(v))
STRING_LIST = _ParseType("a,b,...", lambda v: split_list(v))


def load_config_file(path: str, allowed: set[str]) -> dict[str, Any]:
    """Read a config file (TOML, or JSON or YAML by its extension), refusing keys that are not
    flags of the program."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES} bytes: not a config file")
    try:
        data = formats.parse(raw.decode("utf-8"), formats.format_of(path))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except formats.FormatError as e:
        raise ConfigError(f"{path}: {e}") from None
    for key in data:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f"{path}: unknown key {key!r} (known keys: {known})")
    return {key.replace("-", "_"): value for key, value in data.items()}


def _option_keys(command: click.Command) -> set[str]:
    return {p.name.replace("_", "-") for p in command.params if p.name and p.name not in _NOT_IN_FILE}


_NOT_IN_FILE = {"config", "print_sample_config", "help"}


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE``: its keys become the defaults that flags override."""

    def load(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ctx.default_map = load_config_file(value, _option_keys(ctx.command))
        except ConfigError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
        return value

    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=load,
        help="TOML file whose keys are this program's flags (kebab-case); flags override it.",
    )(fn)


def log_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-level`` and ``--log-format``, the same for every program."""
    fn = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log line format on stderr.",
    )(fn)
    return click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default="info",
        show_default=True,
        help="Log verbosity.",
    )(fn)


def sample_config_option(sample: Callable[[], str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--print-sample-config``: print a commented sample config and exit."""

    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(sample(), nl=False)
            ctx.exit(0)

    return click.option(
        "--print-sample-config",
        is_flag=True,
        is_eager=True,
        expose_value=False,
        callback=show,
        help="Print a commented sample config file and exit.",
    )


def render_sample_config(command: click.Command, header: str) -> str:
    """A TOML sample with every flag of ``command``, defaults shown and commented."""
    lines = [f"# {line}".rstrip() for line in header.strip().splitlines()] + [""]
    for p in command.params:
        if not isinstance(p, click.Option) or not p.name or p.name in _NOT_IN_FILE:
            continue
        key = p.name.replace("_", "-")
        if p.help:
            lines.append(f"# {p.help}")
        default = p.default() if callable(p.default) else p.default
        if default is None or default == () or default is False and not p.is_flag:
            lines.append(f"# {key} = ...")
        else:
            lines.append(f"# {key} = {_toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def fail(prog: str, message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"{prog}: error: {message}", err=True)
    sys.exit(code)


def run_command(command: click.Command, prog: str, args: list[str] | None = None) -> None:
    """Run a click command with Rota's error convention: one line on stderr, exit 2."""
    try:
        rv = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.format_message() if hasattr(e, "format_message") else str(e), err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as e:
        fail(prog, _one_line(e.format_message()), e.exit_code)
    except ConfigError as e:
        fail(prog, str(e))
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        fail(prog, "aborted", 130)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())

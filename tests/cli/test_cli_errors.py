"""Bad input to the programs: one clear line on stderr, exit code 2, no traceback (no etcd needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A program run as a user would, without the TLS files or token of the shell that runs the tests."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ROTA_TLS_", "ROTA_TOKEN"))}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
        timeout=60,
    )


def assert_usage_error(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 with one line on stderr naming each of ``needles``; that line."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_master_unknown_flag():
    assert_usage_error(run("rota.scheduler.master", "--bogus"), "No such option", "--bogus")


def test_master_unknown_toml_key(tmp_path):
    f = tmp_path / "m.toml"
    f.write_text('name = "m0"\nmaster-adr = "127.0.0.1:1"\n')
    assert_usage_error(run("rota.scheduler.master", "--config", str(f)), "unknown key 'master-adr'", str(f))


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--master-addr", "localhost"),
        ("--peer-urls", "http://x"),
        ("--etcd-endpoints", "a:b"),
        ("--http-addr", "web"),
    ],
)
def test_master_malformed_address(flag, value):
    assert_usage_error(run("rota.scheduler.master", flag, value), "malformed address", value, flag)


def test_executor_malformed_http_addr():
    p = run("rota.executor.main", "--join", "127.0.0.1:1", "--http-addr", "127.0.0.1:99999")
    assert_usage_error(p, "--http-addr", "out of range")


def test_master_http_port_taken_is_a_clear_start_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = run(
            "rota.scheduler.master",
            "--etcd-endpoints", "http://127.0.0.1:1", "--master-addr", "127.0.0.1:1",
            "--http-addr", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in p.stderr and "Traceback" not in p.stderr


def test_master_initial_cluster_without_itself():
    p = run("rota.scheduler.master", "--name", "m9", "--initial-cluster", "m0=http://127.0.0.1:1")
    assert_usage_error(p, "m9", "--initial-cluster")


@pytest.mark.parametrize("value", ["0s", "0.5s", "9000h"])
def test_master_job_retention_out_of_range(value):
    assert_usage_error(
        run("rota.scheduler.master", "--job-retention", value), "--job-retention must be from 1s to 365 days"
    )


@pytest.mark.parametrize(
    ("value", "needle"),
    [("lots", "malformed size 'lots'"), ("64KiB", "--etcd-quota-backend-bytes must be at least 1MiB")],
)
def test_master_etcd_quota_malformed_or_too_small(value, needle):
    assert_usage_error(run("rota.scheduler.master", "--etcd-quota-backend-bytes", value), needle)


def test_master_etcd_binary_missing(tmp_path):
    p = run("rota.scheduler.master", "--etcd-bin", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "d"))
    assert_usage_error(p, "etcd", "nope")


@pytest.mark.parametrize("version, needle", [("3.4.10", "too old"), ("3.5.1", "data-loss")])
def test_master_etcd_binary_refused(tmp_path, version, needle):
    fake = tmp_path / "etcd"
    fake.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\n")
    fake.chmod(0o755)
    p = run("rota.scheduler.master", "--data-dir", str(tmp_path / "d"), env={"ROTA_ETCD_BIN": str(fake)})
    assert_usage_error(p, version, needle)
    assert not (tmp_path / "d").exists(), "nothing may be written before the binary is accepted"


def test_master_print_sample_config_round_trips(tmp_path):
    p = run("rota.scheduler.master", "--print-sample-config")
    assert p.returncode == 0
    assert "# master-addr = " in p.stdout and "# initial-cluster" in p.stdout
    # Uncommenting a line gives a valid config key.
    f = tmp_path / "m.toml"
    f.write_text('master-addr = "127.0.0.1:1"\nleader-lease-ttl = "x"\n')
    assert_usage_error(run("rota.scheduler.master", "--config", str(f)), "malformed duration 'x'")


def test_client_malformed_master_addr():
    assert_usage_error(
        run("rota.client.cli", "--master-addr", "nohost", "cluster-status"), "malformed address"
    )


def test_client_unknown_command():
    assert_usage_error(run("rota.client.cli", "frobnicate"), "frobnicate")


def test_client_no_master_reachable_exits_3():
    from rota.common.procs import free_port

    p = run(
        "rota.client.cli",
        "--master-addr",
        f"127.0.0.1:{free_port()}",
        "--timeout",
        "1s",
        "cluster-status",
    )
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "no master reachable" in p.stderr and "Traceback" not in p.stderr


def test_help_teaches():
    p = run("rota.scheduler.master", "--help")
    assert p.returncode == 0 and "--initial-cluster" in p.stdout and "--etcd-endpoints" in p.stdout
    p = run("rota.client.cli", "--help")
    assert p.returncode == 0 and "cluster-status" in p.stdout and "Exit codes" in p.stdout


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "autoo"])
def test_executor_prefetch_is_auto_or_a_whole_number(value):
    p = run("rota.executor.main", "--join", "127.0.0.1:1", "--prefetch", value)
    assert_usage_error(p, "--prefetch", "neither 'auto' nor a whole number >= 0")


def test_executor_prefetch_from_a_config_file_is_checked_the_same_way(tmp_path):
    assert 'prefetch = "auto"' in run("rota.executor.main", "--print-sample-config").stdout
    f = tmp_path / "e.toml"
    f.write_text('join = "127.0.0.1:1"\nprefetch = -3\n')
    assert_usage_error(run("rota.executor.main", "--config", str(f)), "prefetch", "-3")


@pytest.mark.parametrize(
    "value, needle", [("169h", "at most 7 days"), ("-1s", "duration"), ("soon", "duration")]
)
def test_drain_timeouts_out_of_range(value, needle):
    p = run("rota.client.cli", "drain-executor", "e0", "--timeout", value)
    assert_usage_error(p, "--timeout", needle)
    p = run("rota.executor.main", "--join", "127.0.0.1:1", "--drain-timeout", value)
    assert_usage_error(p, "--drain-timeout", needle)


def test_executor_help_says_how_it_stops():
    p = run("rota.executor.main", "--help")
    assert p.returncode == 0 and "--drain-timeout" in p.stdout and "second signal" in p.stdout


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--slots", "5000", "--slots"),
        ("--keepalive-ttl", "1h", "--keepalive-ttl"),
        ("--name", "a/b", "--name"),
        ("--name", "-x", "--name"),
    ],
)
def test_executor_flags_out_of_the_leaders_bounds_are_usage_errors(flag: str, value: str, needle: str):
    """The same bounds the leader holds a hello to: refused here, at start, not later at attach."""
    p = run("rota.executor.main", "--join", "127.0.0.1:1", flag, value)
    assert_usage_error(p, needle, needle)


@pytest.mark.parametrize(
    ("module", "args", "needles"),
    [
        ("rota.scheduler.master", ["--master-addr", "0.0.0.0:10240"],
         ["--master-addr 0.0.0.0:10240", "without TLS", "--admin-token-file", "--insecure"]),
        ("rota.scheduler.master", ["--http-addr", "10.0.0.1:10280"], ["--http-addr 10.0.0.1:10280"]),
        ("rota.scheduler.master", ["--etcd-client-urls", "http://0.0.0.0:2379"], ["--etcd-client-urls"]),
        ("rota.executor.main", ["--join", "127.0.0.1:1", "--worker-addr", ":10241"],
         ["--worker-addr 0.0.0.0:10241", "--token-file", "--insecure"]),
    ],
)  # fmt: skip
def test_listening_beyond_loopback_without_tls_and_tokens_needs_insecure(module, args, needles):
    assert_usage_error(run(module, *args), *needles)


def test_a_config_file_with_a_4301_digit_number_is_a_config_error(tmp_path):
    conf = tmp_path / "m.toml"
    conf.write_text("job-retention = " + "9" * 4301 + "\n")
    assert_usage_error(run("rota.scheduler.master", "--config", str(conf)), "invalid TOML")


def test_submit_job_of_a_job_type_with_a_bad_key(tmp_path):
    """The fanout job type, found through its real entry point, names the key it does not know."""
    f = tmp_path / "fanout.toml"
    f.write_text('type = "fanout"\nname = "f"\ncommand = "true"\nitems = ["a"]\nparalel = 2\n')
    line = assert_usage_error(
        run("rota.client.cli", "--master-addr", "127.0.0.1:1", "submit-job", "--config", str(f), "--wait"),
        f"{f}: paralel: unknown key 'paralel'",
        "did you mean 'parallel'?",
    )
    assert "known: command, items, parallel, env" in line
    f.write_text('type = "fanuot"\nname = "f"\n')
    assert_usage_error(
        run("rota.client.cli", "--master-addr", "127.0.0.1:1", "submit-job", "--config", str(f)),
        "type: unknown job type 'fanuot' (installed: ",
        "fanout",
    )


ORIGINAL_BENCH = """flow-id = "feed1"
table-num = 10
servers = ["127.0.0.1:50046","127.0.0.1:50047"]
rcd-cnt = 1000000000
ddl-freq = 100000000
"""


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("table-num = 10", "table-num = -1"), "table-num"),
        (('servers = ["127.0.0.1:50046","127.0.0.1:50047"]', "servers = []"), "servers"),
        (("ddl-freq = 100000000", "ddl-freq = 0"), "ddl-freq"),
        (('flow-id = "feed1"', 'flow-id = "feed1"\nflow-idd = "x"'), "flow-idd"),
    ],
    ids=["negative-table-num", "empty-servers", "zero-ddl-freq", "unknown-key"],
)
def test_a_bad_dataflow_file_is_refused_naming_the_key(tmp_path, change, named):
    """The original's five-key bench file is the dataflow job type (claimed by its keys); a bad
    value or an unknown key is refused before anything is sent, exit 2, with the key named."""
    good = tmp_path / "bench.toml"
    good.write_text(ORIGINAL_BENCH)
    from rota.common.jobspec import load_job

    assert load_job(str(good)).type == "dataflow"
    bad = tmp_path / "bad.toml"
    bad.write_text(ORIGINAL_BENCH.replace(*change))
    assert_usage_error(
        run("rota.client.cli", "--master-addr", "127.0.0.1:1", "submit-job", "--config", str(bad)),
        f"{bad}: {named}: ",
    )


@pytest.mark.parametrize(
    "args, needles",
    [
        (["member", "add", "bad name", "https://10.0.0.8:8291"], ["NAME", "bad member name"]),
        (["member", "add", "m3", "10.0.0.8:8291"], ["PEER-URL", "https://host:port"]),
        (["member", "add", "m3", "https://0.0.0.0:8291"], ["PEER-URL", "wildcard"]),
        (["member", "add", "m3", "https://10.0.0.8:8291/x"], ["PEER-URL"]),
        (["member", "remove", " "], ["NAME"]),
        (["member", "remove"], ["Missing argument"]),
    ],
)
def test_member_bad_input_is_refused_before_any_master_is_asked(args, needles):
    # No master listens at this address: a check that asked one would exit 3, not 2.
    assert_usage_error(
        run("rota.client.cli", "--master-addr", "127.0.0.1:1", "--timeout", "1s", *args), *needles
    )

"""Parsing of addresses, durations, lists and config files: pure logic, no I/O but tmp files."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from rota.common import config as cfg


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("127.0.0.1:10240", "127.0.0.1", 10240),
        ("http://10.0.0.1:2379", "10.0.0.1", 2379),
        ("https://example.org:443/", "example.org", 443),
        (":8080", "", 8080),
        ("[::1]:9000", "::1", 9000),
        ("localhost:1", "localhost", 1),
    ],
)
def test_parse_address_accepts_every_documented_form(text, host, port):
    assert cfg.parse_address(text) == cfg.Address(host, port)


@pytest.mark.parametrize("text", ["", "10240", "host:", "host:port", "ftp://h:1", "h:70000", "h:0", "a b:1"])
def test_parse_address_rejects_with_a_message_naming_the_input(text):
    with pytest.raises(cfg.ConfigError, match="malformed address"):
        cfg.parse_address(text)


def test_address_listen_and_dial_forms():
    any_host = cfg.parse_address(":10240")
    assert any_host.listen() == "0.0.0.0:10240"
    assert any_host.dial() == "127.0.0.1:10240"
    assert cfg.parse_address("[::1]:5").dial() == "[::1]:5"


def test_parse_url_normalises_to_http():
    assert cfg.parse_url("127.0.0.1:2379") == "http://127.0.0.1:2379"
    assert cfg.parse_url(":2379") == "http://0.0.0.0:2379"
    assert cfg.parse_url("https://h:1") == "https://h:1"


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("500ms", 0.5),
        ("3s", 3.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("2h", 7200.0),
        (5, 5.0),
        (0.25, 0.25),
        ("7", 7.0),
        ("250us", 0.00025),
    ],
)
def test_parse_duration(value, seconds):
    assert cfg.parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "3 s", "3x", "ms", "-1s", True, "1s2"])
def test_parse_duration_rejects(value):
    with pytest.raises(cfg.ConfigError, match="duration"):
        cfg.parse_duration(value)


def test_key_values_and_initial_cluster():
    assert cfg.parse_key_values("zone=a, gpu=1") == {"zone": "a", "gpu": "1"}
    assert cfg.parse_key_values({"zone": "a"}) == {"zone": "a"}
    with pytest.raises(cfg.ConfigError, match="expected key=value"):
        cfg.parse_key_values("zone")
    assert cfg.parse_initial_cluster("m0=http://a:1,m1=b:2") == {"m0": "http://a:1", "m1": "http://b:2"}


@click.command()
@cfg.config_option
@click.option("--master-addr", type=cfg.ADDRESS, default="127.0.0.1:10240")
@click.option("--keepalive-ttl", type=cfg.DURATION, default="5s")
@click.option("--slots", type=int, default=2)
def _prog(**o):
    click.echo(repr(sorted(o.items())))


def test_config_file_supplies_defaults_and_flags_override(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('master-addr = ":9000"\nkeepalive-ttl = "2s"\nslots = 4\n')
    out = CliRunner().invoke(_prog, ["--config", str(f), "--slots", "8"])
    assert out.exit_code == 0, out.output
    assert "Address(host='', port=9000)" in out.output
    assert "('keepalive_ttl', 2.0)" in out.output
    assert "('slots', 8)" in out.output


def test_config_file_unknown_key_is_named(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("slots = 1\nslotz = 2\n")
    out = CliRunner().invoke(_prog, ["--config", str(f)])
    assert out.exit_code == 2
    assert "unknown key 'slotz'" in out.output and str(f) in out.output


def test_config_file_bad_value_and_bad_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('keepalive-ttl = "soon"\n')
    out = CliRunner().invoke(_prog, ["--config", str(f)])
    assert out.exit_code == 2 and "malformed duration 'soon'" in out.output
    f.write_text("slots = \n")
    out = CliRunner().invoke(_prog, ["--config", str(f)])
    assert out.exit_code == 2 and "invalid TOML" in out.output


def test_sample_config_lists_every_flag():
    text = cfg.render_sample_config(_prog, "header")
    assert text.startswith("# header")
    for key in ("master-addr", "keepalive-ttl", "slots"):
        assert f"# {key} = " in text
    assert "config =" not in text

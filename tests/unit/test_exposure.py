"""The secure-unless-told-otherwise rule: pure, no I/O."""

from __future__ import annotations

import pytest

from rota.common import exposure
from rota.common.config import ConfigError


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert exposure.loopback(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "host-a", "fe80::1"])
def test_hosts_beyond_loopback(host: str) -> None:
    assert not exposure.loopback(host)


def test_loopback_listens_need_nothing() -> None:
    exposure.check(
        [("--master-addr", "127.0.0.1:1"), ("--peer-urls", "http://[::1]:2")], False, False, False, "--t"
    )


@pytest.mark.parametrize(
    ("tls", "tokens", "needle"),
    [(False, False, "without TLS (--tls-ca, --tls-cert, --tls-key) and a token (--t)"),
     (True, False, "without a token (--t)"), (False, True, "without TLS")],
)  # fmt: skip
def test_an_open_listen_without_tls_and_tokens_is_refused_naming_the_flag(
    tls: bool, tokens: bool, needle: str
) -> None:
    listens = [("--master-addr", "127.0.0.1:1"), ("--etcd-client-urls", "http://0.0.0.0:2379")]
    with pytest.raises(ConfigError, match="--insecure") as e:
        exposure.check(listens, tls, tokens, False, "--t")
    assert needle in str(e.value) and "--etcd-client-urls http://0.0.0.0:2379" in str(e.value)
    assert "\n" not in str(e.value)


def test_tls_and_tokens_or_insecure_let_it_start() -> None:
    listens = [("--master-addr", "0.0.0.0:10240")]
    exposure.check(listens, True, True, False, "--t")
    exposure.check(listens, False, False, True, "--t")

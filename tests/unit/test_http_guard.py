"""The master's HTTP port refuses cross-site writes and foreign Host names (scheduler/http_guard.py)."""

from __future__ import annotations

import pytest

from rota.scheduler.http_guard import host_allowed, host_name, own_names, refusal

NAMES = own_names(["master-1.example", "127.0.0.1"])


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("127.0.0.1:10280", "127.0.0.1"),
        ("[::1]:10280", "::1"),
        ("Example.COM", "example.com"),
        ("::1", "::1"),
    ],
)
def test_the_name_of_a_host_header(host: str, name: str) -> None:
    assert host_name(host) == name


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:10280", True),
        ("10.1.2.3:80", True),  # an IP address cannot be rebound
        ("[::1]:10280", True),
        ("localhost:10280", True),
        ("app.localhost", True),
        ("master-1.example:10280", True),  # --http-allowed-hosts
        ("MASTER-1.example", True),
        ("master-1.example.:10280", True),  # a fully qualified name's trailing dot
        ("evil.test:10280", False),  # a rebinding page's own name
        ("127.0.0.1.evil.test", False),
        ("", False),
    ],
)
def test_only_ip_addresses_localhost_and_known_names_are_served(host: str, ok: bool) -> None:
    assert host_allowed(host, NAMES) is ok
    refused = refusal("GET", "/api/v1/jobs", host, None, None, NAMES)
    assert (refused is None) is ok
    if not ok:
        assert refused is not None and refused[0] == 421 and "--http-allowed-hosts" in refused[1]


def test_metrics_answer_any_host_name() -> None:
    assert refusal("GET", "/metrics", "prometheus-target.internal:10280", None, None, NAMES) is None


@pytest.mark.parametrize(
    ("origin", "fetch_site", "ok"),
    [
        (None, None, True),  # curl, master-client
        ("http://127.0.0.1:10280", "same-origin", True),  # the dashboard itself
        ("http://127.0.0.1:8000", None, False),  # another port is another origin
        ("http://evil.test", None, False),
        ("null", None, False),  # a sandboxed frame or a file:// page
        (None, "cross-site", False),
        (None, "same-site", False),
    ],
)
def test_writes_from_another_origin_are_refused(origin: str | None, fetch_site: str | None, ok: bool) -> None:
    refused = refusal("POST", "/api/v1/jobs", "127.0.0.1:10280", origin, fetch_site, NAMES)
    assert (refused is None) is ok
    if not ok:
        assert refused is not None and refused[0] == 403 and "cross-site" in refused[1]
    assert refusal("GET", "/api/v1/jobs", "127.0.0.1:10280", origin, fetch_site, NAMES) is None

"""Web pages the operator visits cannot use the master's API (issue 13), in headless Chromium.

A page served from another origin (another port of 127.0.0.1) tries the no-preflight POST that any
page may send, and a page whose DNS name resolves to the master (DNS rebinding, made with Chromium's
host resolver rules) tries to read and write through it. Every attempt is refused and no job is
created; the dashboard on the master's own address still works.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from rota.common.procs import free_ports
from rota.devtools.localcluster import LocalCluster

pytestmark = pytest.mark.etcd

CHROMIUM = os.environ.get("ROTA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
JOB = json.dumps({"name": "planted", "task": [{"name": "t", "kind": "shell", "command": "echo pwned"}]})


def attack_page(master: str) -> bytes:
    """A page that posts a job to ``master`` in every way a page may without asking first."""
    return f"""<!doctype html><title>cute cats</title><script>
    const done = [];
    const body = {json.dumps(JOB)};
    Promise.allSettled([
      fetch("{master}/api/v1/jobs", {{method: "POST", mode: "no-cors", body,
                                      headers: {{"Content-Type": "text/plain"}}}}),
      fetch("{master}/api/v1/jobs", {{method: "POST", mode: "no-cors", body}}),
      fetch("{master}/api/v1/jobs", {{method: "POST", body, headers: {{"Content-Type": "application/json"}}}}),
    ]).then((r) => {{ window.__results = r.map((x) => x.status); }});
    </script>""".encode()


@pytest.fixture
def attacker() -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP server on another port of 127.0.0.1 (another origin) serving the attack page."""
    (port,) = free_ports(1)
    page: list[bytes] = [b""]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page[0])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", page
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def cluster(local_cluster) -> LocalCluster:
    """Started before the browser: Playwright's sync API runs an event loop of its own."""
    return local_cluster()  # type: ignore[no-any-return]


@pytest.fixture
def browser() -> Iterator[object]:
    assert os.path.exists(CHROMIUM), "Chromium is missing: apt-get install chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP evil.test 127.0.0.1"],
        )
        try:
            yield b
        finally:
            b.close()


def jobs(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/api/v1/jobs", timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def test_pages_from_other_origins_and_rebound_names_cannot_use_the_api(
    cluster: LocalCluster, attacker, browser
) -> None:
    master = cluster.masters[0].http_url
    port = urlsplit(master).port
    origin, page = attacker
    page[0] = attack_page(master)

    # Another origin: the no-cors POSTs reach the master, which refuses them; the CORS one is blocked.
    tab = browser.new_page()  # type: ignore[attr-defined]
    tab.goto(origin + "/")
    tab.wait_for_function("window.__results !== undefined", timeout=30_000)
    assert jobs(master) == []

    # DNS rebinding: evil.test resolves to the master, so the page is same-origin with it by name.
    rebound = f"http://evil.test:{port}"
    resp = tab.goto(rebound + "/api/v1/cluster")
    assert resp is not None and resp.status == 421
    assert "not a name of this master" in tab.content()
    status = tab.evaluate(
        """async ([url, body]) => (await fetch(url + "/api/v1/jobs",
              {method: "POST", body, headers: {"Content-Type": "application/json"}})).status""",
        [rebound, JOB],
    )
    assert status == 421
    assert jobs(master) == []

    # The master's own dashboard, by its address, still reads and writes.
    tab.goto(master + "/")
    status = tab.evaluate(
        """async ([body]) => (await fetch("/api/v1/jobs",
              {method: "POST", body, headers: {"Content-Type": "application/json"}})).status""",
        [json.dumps({"name": "ok", "task": [{"name": "t", "kind": "noop"}]})],
    )
    assert status == 201
    assert [j["name"] for j in jobs(master)] == ["ok"]

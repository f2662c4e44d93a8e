"""The web dashboard in headless Chromium against a real three-master cluster.

Loads a follower's dashboard, watches a job progress to SUCCEEDED without reloading,
opens its tasks and one task's output, cancels another job with the Cancel button, and saves screenshots to
``$ROTA_SCREENSHOTS`` (default ``build/screenshots``; README.md points there).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from rota.devtools.localcluster import LocalCluster

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("ROTA_SCREENSHOTS") or ROOT / "build" / "screenshots")
CHROMIUM = os.environ.get("ROTA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Headless, and nothing that reaches for the network: this machine's network is closed.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


@pytest.fixture
def page(cluster: LocalCluster):
    assert os.path.exists(CHROMIUM), "Chromium is missing: apt-get install chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright

    # Playwright starts Chromium with a fresh, temporary profile of its own.
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.set_default_timeout(TIMEOUT_MS)
            yield pg
        finally:
            browser.close()


def api(url: str, path: str, doc: dict | None = None):
    """The cluster's HTTP API. (Playwright's sync API runs an event loop, so no sync gRPC Client here.)"""
    req = urllib.request.Request(
        url + "/api/v1" + path, data=json.dumps(doc).encode() if doc is not None else None
    )
    if doc is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_dashboard_shows_the_cluster_a_job_running_to_success_and_cancels_one(
    cluster: LocalCluster, page
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    url = cluster.masters[0].http_url
    leader = api(url, "/cluster")["leader"]["name"]
    follower = next(m for m in cluster.masters if m.name != leader)
    page.goto(follower.http_url + "/")

    # The cluster: three masters, the leader named, etcd healthy, both executors ready.
    page.wait_for_selector(f'#masters tr[data-master="{leader}"] .state.leader')
    assert page.locator("#masters tbody tr").count() == 3
    assert page.locator("#leader").inner_text().startswith(f"leader: {leader} ")
    assert "healthy" in page.locator("#etcd").inner_text()
    page.wait_for_function("document.querySelectorAll('#executors tbody .state.ready').length === 2")
    page.evaluate("window.__notReloaded = true")
    page.screenshot(path=str(SHOTS / "cluster.png"), full_page=True)

    # A job appears and progresses to SUCCEEDED by live updates alone.
    nap = {"name": "nap", "kind": "shell", "command": "echo nap $ROTA_TASK_ID; sleep 1.5", "count": 6}
    # Its report task prints the job's report as its last stdout line.
    report = {
        "name": "sum",
        "kind": "shell",
        "command": """echo 'naps: 6'; echo '{"naps": 6, "latency_ms": {"nap": {"p50": 1.5, "max": 2}, "sum": {"p50": 0.25, "max": 1.5}, "all": {"p50": 1, "max": 3}}}'""",
        "report": True,
    }
    spec = {"name": "dash-demo", "task": [nap, report]}
    job = api(url, "/jobs", spec)["id"]
    row = f'#jobs tr[data-job-id="{job}"]'
    page.wait_for_selector(f'{row}[data-state="RUNNING"]')
    page.locator(row).click()
    page.wait_for_selector(f'#job-detail[data-job-id="{job}"] #tasks tr[data-state="RUNNING"]')
    page.screenshot(path=str(SHOTS / "job-running.png"), full_page=True)
    page.wait_for_selector(f'{row}[data-state="SUCCEEDED"]')
    page.wait_for_function(
        "document.querySelectorAll('#tasks tbody tr[data-state=\"SUCCEEDED\"]').length === 7"
    )
    page.wait_for_selector("#detail-report:not([hidden])")
    # Plain fields as a list, a name -> row-of-numbers field as a table, all of it as JSON too.
    assert page.locator("#detail-report dl").inner_text().split() == ["naps", "6"]
    table = page.locator('#detail-report table[data-name="latency_ms"]')
    assert table.locator("thead th").all_text_contents()[1:] == ["p50", "max"]
    assert [r.split("\t") for r in table.locator("tbody tr").all_inner_texts()] == [
        ["nap", "1.500", "2.000"],  # one format per column, whole numbers too once one is not
        ["sum", "0.250", "1.500"],
        ["all", "1.000", "3.000"],
    ]
    assert json.loads(page.locator("#detail-report pre").text_content() or "")["naps"] == 6
    assert page.evaluate("window.__notReloaded") is True
    names = {e["name"] for e in api(url, "/executors")}
    shown = set(page.locator("#tasks tbody tr td:nth-child(5)").all_inner_texts())
    assert shown and shown <= names
    assert api(url, f"/jobs/{job}")["state"] == "SUCCEEDED"
    page.screenshot(path=str(SHOTS / "job-succeeded.png"), full_page=True)

    # A task's output, fetched from the executor that ran it.
    page.locator(f'#tasks button.logs[data-task-id="{job}/4"]').click()
    page.wait_for_selector(f'#log-panel[data-task-id="{job}/4"][data-loaded="true"]')
    assert page.locator("#log-stdout").inner_text().strip() == f"nap {job}/4"
    page.locator("#log-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "task-logs.png"), full_page=True)

    # The Cancel button stops a running job.
    long = api(
        url, "/jobs", {"name": "dash-cancel", "task": [{"name": "s", "kind": "sleep", "seconds": 120}]}
    )["id"]
    long_row = f'#jobs tr[data-job-id="{long}"]'
    page.wait_for_selector(f'{long_row}[data-state="RUNNING"]')
    page.locator(f'{long_row} button.cancel[data-job-id="{long}"]').click()
    page.wait_for_selector(f'{long_row}[data-state="CANCELLED"]')
    assert page.locator(f"{long_row} button.cancel").count() == 0
    assert api(url, f"/jobs/{long}")["state"] == "CANCELLED"
    page.screenshot(path=str(SHOTS / "job-cancelled.png"), full_page=True)


def test_dashboard_pages_through_jobs_and_tasks(cluster: LocalCluster, page) -> None:
    """Small pages (set in the URL) so that a few jobs make several: Older, Newer, and task pages."""
    url = cluster.masters[0].http_url
    ids = [
        api(url, "/jobs", {"name": f"pg{i}", "task": [{"name": "t", "kind": "noop"}]})["id"] for i in range(3)
    ]
    many = api(url, "/jobs", {"name": "pg-many", "task": [{"name": "n", "kind": "noop", "count": 7}]})["id"]
    page.goto(url + "/?jobs_per_page=2&tasks_per_page=3")
    rows = "#jobs tbody tr"
    page.wait_for_selector(f'#jobs tr[data-job-id="{many}"]')
    assert page.locator(rows).count() == 2
    assert page.locator(f'#jobs tr[data-job-id="{ids[2]}"]').count() == 1  # newest first: many, pg2
    page.locator("#jobs-older").click()
    page.wait_for_selector(f'#jobs tr[data-job-id="{ids[1]}"]')
    assert page.locator(f'#jobs tr[data-job-id="{many}"]').count() == 0
    page.locator("#jobs-newer").click()
    page.wait_for_selector(f'#jobs tr[data-job-id="{many}"]')
    page.locator(f'#jobs tr[data-job-id="{many}"]').click()
    page.wait_for_selector(f'#tasks tr[data-task-id="{many}/2"]')
    assert page.locator("#tasks tbody tr").count() == 3
    assert "tasks 0–2 of 7" in page.locator("#tasks-more").inner_text()
    page.locator("#tasks-next").click()
    page.wait_for_selector(f'#tasks tr[data-task-id="{many}/5"]')
    assert page.locator(f'#tasks tr[data-task-id="{many}/0"]').count() == 0
    page.screenshot(path=str(SHOTS / "paging.png"), full_page=True)


SERVICE = """
import os, socket, sys, time, rota.task
if os.environ["ROTA_ATTEMPT"] == "1":
    sys.exit(3)
srv = socket.create_server((os.environ["ROTA_HOST"], int(os.environ["ROTA_PORT_FEED"])))
rota.task.progress(0.5, "serving")
while not os.path.exists({done!r}):
    time.sleep(0.1)
"""


def test_dashboard_shows_a_services_endpoint_progress_restarts_and_a_gangs_reason(
    cluster: LocalCluster, page, tmp_path: Path
) -> None:
    """Issue 14's fields on the job page: where a service listens, its progress and its restarts;
    and why a gang too large for the cluster waits."""
    url = cluster.masters[0].http_url
    done = tmp_path / "done"
    task = {
        "name": "svc",
        "kind": "python",
        "service": True,
        "ports": ["feed"],
        "code": SERVICE.format(done=str(done)),
    }
    job = api(url, "/jobs", {"name": "dash-service", "task": [task]})["id"]
    page.goto(url + "/")
    page.locator(f'#jobs tr[data-job-id="{job}"]').click()
    row = f'#tasks tr[data-task-id="{job}/0"]'
    page.wait_for_selector(f"{row} .endpoints")
    page.wait_for_selector(f"{row} .progress")
    endpoint = api(url, f"/jobs/{job}")["tasks"][0]["endpoints"]["feed"]
    assert page.locator(f"{row} .endpoints").inner_text().strip() == f"feed {endpoint}"
    assert page.locator(f"{row} .progress").inner_text().strip() == "50% serving"
    assert page.locator(f"{row} .restarts").inner_text().strip() == "(service, 1 restart)"
    page.screenshot(path=str(SHOTS / "service.png"), full_page=True)
    done.touch()

    gang = {
        "name": "dash-gang",
        "gang": True,
        "task": [{"name": "g", "kind": "sleep", "seconds": 1, "count": 9}],
    }
    waiting = api(url, "/jobs", gang)["id"]
    page.locator(f'#jobs tr[data-job-id="{waiting}"]').click()
    page.wait_for_selector(f'#job-detail[data-job-id="{waiting}"] #detail-reason:not([hidden])')
    reason = page.locator("#detail-reason").inner_text()
    assert reason.startswith("gang 'dash-gang' of 9 tasks needs 9 free slots for kind 'sleep'"), reason
    api(url, f"/jobs/{waiting}/cancel", {})


def test_dashboard_draws_a_jobs_graph_and_pauses_a_schedule(cluster: LocalCluster, page) -> None:
    """Issue 16: a job's task groups and edges, colored by state (a failed branch and what it
    skipped); a schedule with its next fire time, paused with its button."""
    url = cluster.masters[0].http_url
    graph = {
        "name": "dash-graph",
        "max-attempts": 1,
        "task": [
            {"name": "extract", "kind": "noop"},
            {"name": "bad", "kind": "shell", "command": "exit 1", "after": ["extract"]},
            {"name": "good", "kind": "noop", "count": 3, "after": ["extract"]},
            {"name": "load", "kind": "noop", "after": ["bad", "good"]},
        ],
    }
    job = api(url, "/jobs", graph)["id"]
    sched = api(url, "/jobs", {"name": "dash-cron", "id": "dash-cron", "schedule": "0 3 * * *",
                               "task": [{"name": "t", "kind": "noop"}]})  # fmt: skip
    assert sched["schedule"]["next_fire"].endswith("03:00:00+00:00")
    page.goto(url + "/")
    page.wait_for_selector('body[data-streaming="true"]')  # redrawn by the event stream, not polling
    page.locator(f'#jobs tr[data-job-id="{job}"]').click()
    page.wait_for_selector('#detail-graph g.node[data-group="load"][data-state="SKIPPED"]')
    states = {
        n.get_attribute("data-group"): n.get_attribute("data-state")
        for n in page.locator("#detail-graph g.node").all()
    }
    assert states == {"extract": "SUCCEEDED", "bad": "FAILED", "good": "SUCCEEDED", "load": "SKIPPED"}
    edges = {
        (e.get_attribute("data-from"), e.get_attribute("data-to"))
        for e in page.locator("#detail-graph line").all()
    }
    assert edges == {("extract", "bad"), ("extract", "good"), ("bad", "load"), ("good", "load")}
    row = '#schedules tr[data-schedule="dash-cron"]'
    assert "3:00" in page.locator(f"{row} .next-fire").inner_text()
    page.screenshot(path=str(SHOTS / "graph-and-schedule.png"), full_page=True)
    page.locator(f"{row} button.pause").click()
    page.wait_for_selector(f"{row} button.resume")
    assert api(url, "/schedules")[0]["paused"] is True
    req = urllib.request.Request(url + "/api/v1/schedules/dash-cron", method="DELETE")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.loads(resp.read())["id"] == "dash-cron"
    assert api(url, "/schedules") == []

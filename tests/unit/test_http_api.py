"""The HTTP API's pure parts: request bodies to job specs, and the OpenAPI file against the routes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from rota.common.jobspec import JobSpecError
from rota.scheduler.http_api import OPENAPI, HttpApi, UnsupportedType, parse_job_body

TOML = b'name = "hi"\n[[task]]\nname = "t"\nkind = "shell"\ncommand = ["echo", "hi"]\n'


def test_a_toml_body_and_its_json_form_give_the_same_job() -> None:
    a = parse_job_body(TOML, "application/toml")
    b = parse_job_body(
        b'{"name": "hi", "task": [{"name": "t", "kind": "shell", "command": ["echo", "hi"]}]}',
        "application/json",
    )
    assert a.to_dict() == b.to_dict()
    assert a.tasks[0].kind == "shell"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "application/toml", "empty"),
        (b"\xff\xfe", "application/toml", "not UTF-8"),
        (b"name = ", "application/toml", "TOML"),
        (b'{"name": ', "application/json", "invalid JSON"),
        (b"[1, 2]", "application/json", "JSON object"),
        (b'name = "x"\n', "application/toml", "task"),
        (b'name = "x"\nbogus = 1\n[[task]]\nname = "t"\nkind = "noop"\n', "application/toml", "bogus"),
        (b'name = "x"\n[[task]]\nname = "t"\nkind = "nope"\n', "application/toml", "nope"),
    ],
)
def test_bad_bodies_are_refused_naming_what_is_wrong(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(JobSpecError, match=re.escape(message)) as e:
        parse_job_body(body, content_type)
    assert "<request body>" in str(e.value)


def test_a_body_that_names_a_file_is_not_read_as_a_path() -> None:
    hello = Path(__file__).resolve().parents[2] / "sample" / "jobs" / "hello.toml"
    assert hello.is_file()  # so the load_job path (which would read it) is the one refused
    with pytest.raises(JobSpecError, match="TOML"):
        parse_job_body(str(hello).encode(), "application/toml")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
def test_a_job_in_a_type_a_page_may_post_cross_site_is_refused(content_type: str) -> None:
    """These are the types a web page can post to another site without asking first."""
    with pytest.raises(UnsupportedType, match="application/json, application/toml or application/yaml"):
        parse_job_body(b'{"name": "x", "task": [{"name": "t", "kind": "noop"}]}', content_type)


def _routes() -> set[tuple[str, str]]:
    app = web.Application()
    HttpApi("127.0.0.1:1", "m0").install(app)
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and not path.startswith("/static"):
            out.add((route.method.lower(), path))
    return out


def test_the_openapi_file_documents_every_route_and_nothing_else() -> None:
    doc = yaml.safe_load(OPENAPI.read_text())
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    documented.discard(("get", "/metrics"))  # served by scheduler.httpserver, not HttpApi
    assert documented == _routes()
    assert doc["openapi"].startswith("3.")

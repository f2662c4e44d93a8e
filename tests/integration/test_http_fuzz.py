"""Fuzz the HTTP API of a real master from its own document, scheduler/openapi.yaml (schemathesis).

Every operation gets a bounded, deterministic set of generated requests, valid by the document and
invalid by it. Each answer must be documented (status, content type, body schema, headers), never a
5xx, and an invalid request must be refused; the master must keep answering; and the jobs that exist
afterwards are exactly those a 2xx submit answer created: nothing is written on a refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rota.devtools.localcluster import LocalCluster

pytestmark = pytest.mark.etcd

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "scheduler" / "openapi.yaml"
#: Per operation and generation mode: a few hundred requests in all (the simplest operations have
#: only one request to make), some seconds on a small machine.
EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def load_schema() -> Any:
    """The document as shipped, with the job body narrowed so that many generated jobs are valid
    (the document lets any string be a kind or a name; the server checks what it cannot say) and
    small (a job of a million tasks is valid, and writing a few would take the whole time budget)."""
    doc = yaml.safe_load(OPENAPI.read_text())
    schemas = doc["components"]["schemas"]
    task = schemas["TaskFile"]
    common = {k: task["properties"][k] for k in ("timeout", "max-attempts")}
    common["name"] = {"type": "string", "pattern": "^[a-z][a-z0-9]{0,8}$"}
    common["count"] = {"type": "integer", "minimum": 1, "maximum": 20}
    kinds = {
        "noop": {},
        "sleep": {"seconds": task["properties"]["seconds"]},
        "shell": {"command": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}},
    }
    schemas["TaskFile"] = {
        "oneOf": [
            {
                "type": "object",
                "required": ["name", "kind", *params],
                "additionalProperties": False,
                "properties": {**common, "kind": {"type": "string", "enum": [kind]}, **params},
            }
            for kind, params in kinds.items()
        ]
    }
    schemas["JobFile"]["properties"]["name"]["pattern"] = "^[A-Za-z][ -~]*$"
    schemas["JobFile"]["properties"]["task"]["maxItems"] = 3
    # A generated schedule that happened to be valid would make jobs of its own later, which the
    # count of created jobs below cannot foresee; schedules have their own tests (test_schedules.py).
    for key in ("schedule", "time-zone", "overlap", "catch-up"):
        del schemas["JobFile"]["properties"][key]
    return schemathesis.openapi.from_dict(doc)


def fuzz(operation: Any, mode: GenerationMode, call: Callable[[Any], None], **given_kwargs: Any) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy(generation_mode=mode, **given_kwargs))
    def run(case: Any) -> None:
        call(case)

    try:
        run()
    except Unsatisfiable:
        pass  # nothing about this operation can be invalid (no parameters, or only free strings)


@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
def test_every_operation_answers_generated_requests_as_documented(
    local_cluster: Callable[..., LocalCluster], tokens: bool
) -> None:
    cluster = local_cluster(masters=1, tokens=tokens)  # no executor: no generated task ever runs
    base = cluster.masters[0].http_url
    assert cluster.client().list_jobs() == []
    created: set[str] = set()
    failures: dict[str, str] = {}
    session = requests.Session()
    if tokens:
        session.headers["Authorization"] = f"Bearer {cluster.admin_token}"

    for result in load_schema().get_all_operations():
        operation = result.ok()

        def call(case: Any, operation: Any = operation) -> None:
            try:
                response = case.call(base_url=base, session=session, timeout=20)
            except requests.RequestException as e:
                failures.setdefault(f"{operation.label}: no answer", f"{e!r}\n{case.as_curl_command()}")
                return
            if operation.label in ("POST /api/v1/jobs", "POST /api/v1/tasks") and response.status_code in (
                200,
                201,
            ):
                body = response.json()
                if body["created"]:
                    assert response.status_code == 201
                    created.add(body["id"])
            try:
                case.validate_response(response, checks=CHECKS, transport_kwargs={"base_url": base})
            except (AssertionError, FailureGroup) as e:
                title = str(e).strip().splitlines()[0:3]
                failures.setdefault(f"{operation.label}: {title}", str(e))

        if operation.label == "GET /api/v1/events":
            continue  # a stream that never ends: a request would only time out (test_events.py has it)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, call)
        if operation.label == "POST /api/v1/jobs":  # generation prefers JSON bodies; TOML text too
            fuzz(operation, GenerationMode.POSITIVE, call, media_type="application/toml")
        still = session.get(f"{base}/api/v1/cluster", timeout=20)
        assert still.status_code == 200, f"the master stopped answering after {operation.label}"

    job = b'{"name": "refused", "task": [{"name": "a", "kind": "noop"}]}'
    for headers, status in (
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/json", "Origin": "http://elsewhere.example"}, 403),
        ({"Content-Type": "application/json", "Host": "rebound.example"}, 421),
    ):
        refused = session.post(f"{base}/api/v1/jobs?id=refused-{status}", data=job, headers=headers)
        assert refused.status_code == status, refused.text

    assert not failures, "\n\n".join(failures.values())
    listed = {doc["id"] for doc in cluster.client().list_jobs(limit=10_000)}
    assert listed == created, "jobs written without a 2xx submit answer, or answered but not written"
    assert created, "no generated job was valid: the fuzzer never reached the write path"

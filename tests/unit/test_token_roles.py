"""Tokens and roles: pure logic, no I/O."""

from __future__ import annotations

import pytest

from rota.common import roles, tokens
from rota.protos import rota_pb2


def test_a_generated_token_parses_back_and_matches_only_its_own_digest() -> None:
    t = tokens.generate()
    assert tokens.parse(str(t)) == t
    assert tokens.parse(f"  {t}\n") == t
    assert tokens.matches(t, tokens.digest(t.secret))
    other = tokens.generate()
    assert not tokens.matches(t, tokens.digest(other.secret))
    assert t.secret not in tokens.digest(t.secret)


@pytest.mark.parametrize(
    "text",
    ["", "rota_", "Bearer x", "rota_0123456789ab_short", "rota_0123456789AB_" + "a" * 43, "x" * 500],
)
def test_text_that_is_not_a_token_is_refused(text: str) -> None:
    with pytest.raises(tokens.BadToken):
        tokens.parse(text)


def test_names_and_ids_are_checked() -> None:
    assert tokens.validate_name("ci-bot@team.example") == "ci-bot@team.example"
    for bad in ["", "-x", "a b", "x" * 65, "é"]:
        with pytest.raises(tokens.BadToken):
            tokens.validate_name(bad)
    with pytest.raises(tokens.BadToken):
        tokens.validate_id("../etc")


def test_a_token_file_names_itself_in_its_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "t"
    t = tokens.generate()
    good.write_text(f"{t}\n")
    assert tokens.read_file(str(good)) == t
    bad = tmp_path / "bad"
    bad.write_text("hunter2\n")
    with pytest.raises(tokens.BadToken, match="bad"):
        tokens.read_file(str(bad))
    with pytest.raises(tokens.BadToken, match="missing"):
        tokens.read_file(str(tmp_path / "missing"))


def test_every_rpc_of_both_services_has_a_permission() -> None:
    """A call missing from the table is refused outright; this catches one added without a place."""
    for service in rota_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert roles.method_permission(f"/rota.{service.name}/{method.name}") is not None, method.name
    assert roles.method_permission("/rota.Master/NoSuchCall") is None


@pytest.mark.parametrize(
    ("role", "allowed", "refused"),
    [
        (roles.ADMIN, ["SubmitJob", "CancelJob", "DrainExecutor", "CreateToken", "Attach", "GetJob"], []),
        (roles.SUBMIT, ["SubmitJob", "CancelJob", "GetJob", "ListJobs", "WaitJob", "TaskLogs"],
         ["DrainExecutor", "CreateToken", "RevokeToken", "Attach"]),
        (roles.READ, ["GetJob", "ListJobs", "WaitJob", "GetClusterStatus", "ListExecutors", "TaskLogs"],
         ["SubmitJob", "CancelJob", "DrainExecutor", "ListTokens", "Attach"]),
        (roles.EXECUTOR, ["Attach", "WhoAmI"], ["SubmitJob", "GetJob", "ListJobs", "TaskLogs", "CreateToken"]),
    ],
)  # fmt: skip
def test_roles_allow_what_the_contract_says(role: str, allowed: list[str], refused: list[str]) -> None:
    for m in allowed:
        assert roles.allows(role, roles.METHODS[m]), (role, m)
    for m in refused:
        assert not roles.allows(role, roles.METHODS[m]), (role, m)
    assert roles.allows("nobody", roles.METHODS["GetMasterInfo"])
    assert not roles.allows("nobody", roles.METHODS["GetJob"])


def test_a_submit_token_cancels_only_its_own_jobs() -> None:
    assert roles.may_cancel(roles.SUBMIT, "a", "a")
    assert not roles.may_cancel(roles.SUBMIT, "a", "b")
    assert not roles.may_cancel(roles.SUBMIT, "a", "")
    assert roles.may_cancel(roles.ADMIN, "a", "b")
    assert not roles.may_cancel(roles.READ, "a", "a")


def test_health_is_open_and_reflection_takes_any_token_but_only_by_full_name() -> None:
    """Kubernetes' probes hold no token; reflection shows only the public schema, to any role."""
    assert roles.method_permission("/grpc.health.v1.Health/Check") == roles.OPEN
    assert roles.method_permission("/grpc.health.v1.Health/Watch") == roles.OPEN
    describe = roles.method_permission("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert describe is not None and describe != roles.OPEN
    assert all(roles.allows(role, describe) for role in roles.ROLES)
    assert not roles.allows("nobody", describe)
    assert roles.method_permission("/rota.Master/Check") is None
    # v1 is not served, but passes the gate to answer UNIMPLEMENTED (grpcurl then asks v1alpha).
    assert (
        roles.method_permission("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") == roles.DESCRIBE
    )
    # Rota's short names count only in Rota's services.
    assert roles.method_permission("/other.Service/GetMasterInfo") is None

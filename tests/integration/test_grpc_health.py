"""The standard gRPC health service and server reflection on masters and executors (issue 17):
what Kubernetes' gRPC probes and grpcurl use. Health needs no token; reflection any token."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rota.devtools.localcluster import LocalCluster, Process
from rota.protos import rota_pb2, rota_pb2_grpc

pytestmark = pytest.mark.etcd

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


def executor_addr(proc: Process) -> str:
    return proc.argv[proc.argv.index("--advertise-addr") + 1]


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def check(addr: str, service: str = "", token: str | None = None) -> int:
    with grpc.insecure_channel(addr) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), metadata=bearer(token), timeout=5
        )
        return int(reply.status)


def list_services(addr: str, token: str | None = None) -> list[str]:
    """What ``grpcurl ADDR list`` asks."""
    with grpc.insecure_channel(addr) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), metadata=bearer(token), timeout=5))
        return sorted(s.name for s in reply.list_services_response.service)


def describes(addr: str, symbol: str) -> bool:
    """Whether reflection hands out the file that defines ``symbol`` (what grpcurl needs to call it)."""
    with grpc.insecure_channel(addr) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        return bool(reply.file_descriptor_response.file_descriptor_proto)


def rota_call(addr: str, service: str) -> None:
    """A Rota call without a token: ListJobs on a master, GetStatus on an executor."""
    with grpc.insecure_channel(addr) as ch:
        if service == "rota.Master":
            rota_pb2_grpc.MasterStub(ch).ListJobs(rota_pb2.ListJobsRequest(), timeout=5)
        else:
            rota_pb2_grpc.ExecutorStub(ch).GetStatus(rota_pb2.ExecutorStatusRequest(), timeout=5)


def refused(call: Callable[..., Any], *args: Any) -> grpc.StatusCode | None:
    try:
        call(*args)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return None


def test_every_master_and_executor_serves_health_and_reflection_and_says_when_it_stops(
    local_cluster: Callable[..., LocalCluster], wait_until: Callable[..., Any]
) -> None:
    cluster = local_cluster(executors=1)
    (executor,) = cluster.executors
    e_addr = executor_addr(executor)
    for m in cluster.masters:  # the followers as much as the leader
        assert check(m.addr) == SERVING, m.name
        assert check(m.addr, "rota.Master") == SERVING, m.name
        assert list_services(m.addr) == sorted(["rota.Master", HEALTH, REFLECTION])
        assert describes(m.addr, "rota.Master")
    with pytest.raises(grpc.RpcError) as unknown:
        check(cluster.masters[0].addr, "rota.NoSuchService")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    wait_until("the executor to serve", lambda: check(e_addr) == SERVING, timeout=10)
    assert check(e_addr, "rota.Executor") == SERVING
    assert list_services(e_addr) == sorted(["rota.Executor", HEALTH, REFLECTION])
    assert describes(e_addr, "rota.Executor")

    # A drained executor takes no work: NOT_SERVING, until undrained.
    with cluster.client() as c:
        c.drain_executor(executor.name)
        wait_until(
            "the drained executor to say NOT_SERVING", lambda: check(e_addr) == NOT_SERVING, timeout=10
        )
        assert check(e_addr, "rota.Executor") == NOT_SERVING
        c.undrain_executor(executor.name)
        wait_until("the undrained executor to serve again", lambda: check(e_addr) == SERVING, timeout=10)

    # A master on its way out says NOT_SERVING to a watcher before its port closes.
    victim = cluster.masters[1]
    with grpc.insecure_channel(victim.addr) as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == SERVING
        victim.signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
    assert victim.wait(15) == 0


def test_with_tokens_health_needs_none_and_reflection_needs_any_token(
    local_cluster: Callable[..., LocalCluster], wait_until: Callable[..., Any]
) -> None:
    cluster = local_cluster(executors=1, tokens=True)
    (executor,) = cluster.executors
    e_addr = executor_addr(executor)
    with cluster.client() as c:
        reader, _ = c.create_token("read", "reader")
        worker, _ = c.create_token("executor", "worker")
    for m in cluster.masters:
        assert check(m.addr) == SERVING, m.name
        assert check(m.addr, "rota.Master") == SERVING, m.name
        assert refused(rota_call, m.addr, "rota.Master") == grpc.StatusCode.UNAUTHENTICATED, m.name
        assert refused(list_services, m.addr) == grpc.StatusCode.UNAUTHENTICATED, m.name
        assert refused(list_services, m.addr, "rota_nonsense") == grpc.StatusCode.UNAUTHENTICATED, m.name
        for token in (reader, worker):
            assert list_services(m.addr, token) == sorted(["rota.Master", HEALTH, REFLECTION])

    wait_until("the executor to serve", lambda: check(e_addr) == SERVING, timeout=10)
    assert refused(rota_call, e_addr, "rota.Executor") == grpc.StatusCode.UNAUTHENTICATED
    assert refused(list_services, e_addr) == grpc.StatusCode.UNAUTHENTICATED
    assert list_services(e_addr, reader) == sorted(["rota.Executor", HEALTH, REFLECTION])

"""deploy/ checked by real validators (none of it is run here: there is no container engine).

Each validator is run on the real files and must pass, and on a copy broken on purpose and must
fail, so a validator that accepts anything cannot make these tests pass. A missing validator is a
failure naming `make deploy-tools`, never a skip. The programs' own flag parser reads the config
files of compose.yaml and the Kubernetes ConfigMap as the containers would be started with them.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from rota.common import certs, tokens

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
UNITS = [DEPLOY / "systemd" / "rota-master.service", DEPLOY / "systemd" / "rota-executor.service"]


def tool(name: str) -> str:
    """A validator: from this virtualenv (PyPI tools) or PATH (Debian's); missing is a failure."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    assert found, f"{name} is missing: run `make deploy-tools` (installs every validator of deploy/)"
    return found


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, cwd=cwd)


def broken(tmp_path: Path, src: Path, old: str, new: str, name: str | None = None) -> Path:
    """A copy of ``src`` with one change, which must apply (else the test proves nothing)."""
    text = src.read_text()
    assert old in text, f"{src}: {old!r} not found; update the broken-copy test"
    out = tmp_path / (name or src.name)
    out.write_text(text.replace(old, new, 1))
    return out


# --- Dockerfile: hadolint ---------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    r = run(tool("hadolint"), "--no-color", DOCKERFILE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_fails_a_broken_dockerfile(tmp_path: Path) -> None:
    bad = broken(tmp_path, DOCKERFILE, "apt-get install -y --no-install-recommends", "apt-get install -y")
    r = run(tool("hadolint"), "--no-color", bad)
    assert r.returncode != 0 and "DL3015" in r.stdout, r.stdout + r.stderr


def test_dockerfile_generates_every_proto_as_the_makefile_does() -> None:
    # The generated modules are not in git (.dockerignore drops stale ones): the image makes them.
    text = DOCKERFILE.read_text()
    assert "-m grpc_tools.protoc -Irota/protos=protos" in text and "protos/*.proto" in text
    assert "protos/*_pb2*.py" in (ROOT / ".dockerignore").read_text()


# --- compose.yaml: the Compose Specification schema, promtool, the programs' flags -------------


def test_compose_passes_the_compose_spec_schema() -> None:
    r = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_spec_schema_fails_a_broken_compose_file(tmp_path: Path) -> None:
    bad = broken(tmp_path, COMPOSE, "    hostname: master-0", "    hostnme: master-0")
    r = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", bad)
    assert r.returncode != 0 and "hostnme" in r.stdout, r.stdout + r.stderr


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_mounts_files_that_exist() -> None:
    for name, svc in _compose()["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name} mounts {src}, which is not in deploy/"


def test_compose_prometheus_config_passes_promtool_and_scrapes_every_program() -> None:
    conf = DEPLOY / "compose" / "prometheus.yml"
    r = run(tool("promtool"), "check", "config", conf)
    assert r.returncode == 0, r.stdout + r.stderr
    targets = {
        t
        for job in yaml.safe_load(conf.read_text())["scrape_configs"]
        for s in job["static_configs"]
        for t in s["targets"]
    }
    wanted = {
        f"{n}:{10280 if n.startswith('master') else 10281}"
        for n in _compose()["services"]
        if n.startswith(("master", "executor"))
    }
    assert targets == wanted


def test_promtool_fails_a_broken_prometheus_config(tmp_path: Path) -> None:
    bad = broken(
        tmp_path, DEPLOY / "compose" / "prometheus.yml", "scrape_interval: 5s", "scrape_interval: 5 seconds"
    )
    r = run(tool("promtool"), "check", "config", bad)
    assert r.returncode != 0, r.stdout + r.stderr


def _compose_args(service: str) -> list[str]:
    """The service's command after the program name, its /etc/rota file mapped back to deploy/."""
    svc = _compose()["services"][service]
    mounts = dict(reversed(v.split(":")[:2]) for v in svc["volumes"] if v.startswith("."))
    return [str(DEPLOY / mounts[a]) if a in mounts else a for a in svc["command"][1:]]


def _master_config(args: list[str]) -> Any:
    from rota.scheduler.master import build_config, master_command

    with master_command.make_context("master", list(args)) as ctx:
        return build_config(ctx.params)


def _executor_params(args: list[str]) -> dict[str, Any]:
    from rota.executor.main import executor_command

    with executor_command.make_context("executor", list(args)) as ctx:
        return ctx.params


def test_compose_masters_and_executors_start_from_a_valid_config() -> None:
    services = _compose()["services"]
    masters = [n for n in services if n.startswith("master")]
    for name in masters:
        conf = _master_config(_compose_args(name))
        assert conf.name == name and str(conf.advertise_addr) == f"{name}:10240"
        assert set(conf.member.initial_cluster.replace("=", ",").split(",")[::2]) == set(masters)
    for name in (n for n in services if n.startswith("executor")):
        params = _executor_params(_compose_args(name))
        assert params["name"] == name
        assert [a.dial() for a in params["join"]] == [f"{m}:10240" for m in masters]


def test_the_masters_own_parser_fails_a_broken_config(tmp_path: Path) -> None:
    bad = broken(tmp_path, DEPLOY / "compose" / "master.toml", "data-dir", "data-directory")
    args = [bad if a.endswith("master.toml") else a for a in _compose_args("master-0")]
    with pytest.raises(click.BadParameter, match="unknown key 'data-directory'"):
        _master_config([str(a) for a in args])
    # Without --insecure and without TLS and tokens, a master listening on 0.0.0.0 must refuse.
    bad = broken(tmp_path, DEPLOY / "compose" / "master.toml", "insecure = true", "insecure = false")
    args = [bad if a.endswith("master.toml") else a for a in _compose_args("master-0")]
    with pytest.raises(Exception, match="--insecure"):
        _master_config([str(a) for a in args])


# --- Kubernetes: kubernetes-validate (schemas shipped in the package), the programs' flags -----


def test_k8s_manifests_pass_kubernetes_validate() -> None:
    assert K8S, "deploy/k8s has no manifests"
    r = run(tool("kubernetes-validate"), "--strict", *K8S)
    assert r.returncode == 0, r.stdout + r.stderr
    # Every resource was checked, none passed over for want of a schema.
    for kind in ("statefulset/", "deployment/", "poddisruptionbudget/", "configmap/", "service/"):
        assert f"passed for resource {kind}" in r.stdout, r.stdout


def test_kubernetes_validate_fails_a_broken_manifest(tmp_path: Path) -> None:
    bad = broken(tmp_path, DEPLOY / "k8s" / "master.yaml", "podManagementPolicy:", "podManagementPolicyy:")
    r = run(tool("kubernetes-validate"), "--strict", bad)
    assert r.returncode != 0 and "podManagementPolicyy" in r.stdout, r.stdout + r.stderr
    bad = broken(tmp_path, DEPLOY / "k8s" / "master.yaml", "replicas: 3", "replicas: three", "m2.yaml")
    r = run(tool("kubernetes-validate"), "--strict", bad)
    assert r.returncode != 0, r.stdout + r.stderr


def _k8s(kind: str, name: str) -> dict[str, Any]:
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def test_k8s_masters_start_from_a_valid_config(tmp_path: Path) -> None:
    sts = _k8s("StatefulSet", "rota-master")
    config = _k8s("ConfigMap", "rota-config")["data"]
    (tmp_path / "master.toml").write_text(config["master.toml"])
    (tmp_path / "executor.toml").write_text(config["executor.toml"])
    ns, svc = sts["metadata"]["namespace"], sts["spec"]["serviceName"]
    assert _k8s("Service", svc)["spec"]["clusterIP"] == "None"
    # Real files stand in for the Secrets; flags beat the config file, as in the pod.
    names = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]
    hosts = ["127.0.0.1", "localhost", *(f"{n}.{svc}.{ns}.svc.cluster.local" for n in names)]
    certs.create(str(tmp_path / "tls"), hosts)
    (tmp_path / "admin-token").write_text(f"{tokens.generate()}\n")
    secrets = [
        f"--tls-ca={tmp_path}/tls/ca.pem",
        f"--tls-cert={tmp_path}/tls/node.pem",
        f"--tls-key={tmp_path}/tls/node-key.pem",
        f"--admin-token-file={tmp_path}/admin-token",
    ]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    for pod in names:
        args = [a.replace("$(POD_NAME)", pod) for a in container["args"][1:]]
        args = [f"--config={tmp_path}/master.toml" if a.startswith("--config=") else a for a in args]
        conf = _master_config(args + secrets)
        assert conf.name == pod and conf.tls is not None and conf.admin_token is not None
        assert list(_initial(config["master.toml"])) == names
    # Executors: the shell line of the Deployment, its variables filled in as the pod would.
    dep = _k8s("Deployment", "rota-executor")["spec"]["template"]["spec"]["containers"][0]
    line = (
        dep["args"][2]
        .replace("$POD_NAME", "rota-executor-x")
        .replace('$(echo "$POD_IP" | tr . -)', "10-1-2-3")
    )
    argv = shlex.split(line)
    assert argv[:2] == ["exec", "executor"]
    args = [f"--config={tmp_path}/executor.toml" if a.startswith("--config=") else a for a in argv[2:]]
    params = _executor_params(args)
    assert [a.dial() for a in params["join"]] == [f"{h}:10240" for h in hosts[2:]]


def _initial(toml_text: str) -> dict[str, str]:
    line = re.search(r'^initial-cluster = "([^"]+)"', toml_text, re.M)
    assert line
    return dict(item.split("=", 1) for item in line.group(1).split(","))


# --- systemd: systemd-analyze verify and security --------------------------------------------


def _units_with_stub_programs(tmp_path: Path, units: list[Path]) -> list[Path]:
    """Copies whose ExecStart points at stub programs in tmp_path (verify needs them to exist);
    nothing else changes."""
    stubs = tmp_path / "opt-rota-venv-bin"
    stubs.mkdir(exist_ok=True)
    out = []
    for unit in units:
        text = unit.read_text()
        for prog in re.findall(r"^ExecStart=/opt/rota/venv/bin/(\S+)", text, re.M):
            (stubs / prog).write_text("#!/bin/sh\n")
            (stubs / prog).chmod(0o755)
        assert "/opt/rota/venv/bin/" in text
        dest = tmp_path / unit.name
        dest.write_text(text.replace("/opt/rota/venv/bin/", f"{stubs}/"))
        out.append(dest)
    return out


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = _units_with_stub_programs(tmp_path, UNITS)
    r = run(tool("systemd-analyze"), "verify", *units, cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values but prints them: any output is a finding.
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_systemd_analyze_verify_fails_a_broken_unit(tmp_path: Path) -> None:
    good = _units_with_stub_programs(tmp_path, UNITS[:1])[0]
    bad = broken(tmp_path, good, "NoNewPrivileges=yes", "NoNewPrivilege=yes", "typo.service")
    r = run(tool("systemd-analyze"), "verify", bad, cwd=tmp_path)
    assert "Unknown key 'NoNewPrivilege'" in r.stderr, r.stdout + r.stderr
    bad = broken(tmp_path, good, "ExecStart=", "ExecStart=/nonexistent", "noexec.service")
    r = run(tool("systemd-analyze"), "verify", bad, cwd=tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr


# The most exposure allowed, in tenths of systemd-analyze's 0-10 score (0 = locked down): the
# executor is looser on purpose, since its sandbox is its tasks' sandbox.
EXPOSURE = {"rota-master.service": "25", "rota-executor.service": "60"}


def test_systemd_units_stay_hardened(tmp_path: Path) -> None:
    for unit in _units_with_stub_programs(tmp_path, UNITS):
        r = run(
            tool("systemd-analyze"),
            "security",
            "--offline=yes",
            f"--threshold={EXPOSURE[unit.name]}",
            unit.name,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stdout[-600:] + r.stderr


def test_systemd_security_fails_an_unhardened_unit(tmp_path: Path) -> None:
    good = _units_with_stub_programs(tmp_path, UNITS[:1])[0]
    text = good.read_text().split("# Hardening:")[0] + "\n[Install]\nWantedBy=multi-user.target\n"
    (tmp_path / "soft.service").write_text(text)
    r = run(
        tool("systemd-analyze"), "security", "--offline=yes", "--threshold=25", "soft.service", cwd=tmp_path
    )
    assert r.returncode != 0, r.stdout[-600:] + r.stderr

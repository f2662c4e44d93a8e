"""What ``bin/executor`` was told: the settings the agent's link, fence and runner share."""

from __future__ import annotations

from dataclasses import dataclass, field

from rota.common.limits import Limits
from rota.common.tls import TlsFiles


@dataclass
class AgentConfig:
    name: str
    join: list[str]
    addr: str
    slots: int
    labels: dict[str, str]
    keepalive_ttl: float
    keepalive_interval: float
    work_dir: str
    #: Tasks taken beyond the slots; None adapts it to how fast tasks end (executor.flow).
    prefetch: int | None = None
    #: How long running tasks may take to finish once it drains (SIGTERM, or drain-executor
    #: without a timeout) before they are handed back.
    drain_timeout: float = 30.0
    #: Sent with the hello (and checked by the masters) when the cluster checks tokens: an
    #: executor or admin token.
    token: str | None = None
    #: --task-default-limits: what bounds a task that asks nothing (its timeout included).
    task_defaults: Limits = field(default_factory=Limits)
    #: --task-max-limits: a task asking for more is refused; one asking nothing gets at most this.
    task_maxima: Limits = field(default_factory=Limits)
    #: Mutual TLS to the masters and on its own gRPC port; None for plain channels.
    tls: TlsFiles | None = None
    #: What tasks asking for resources may use here (--resources).
    resources: dict[str, float] = field(default_factory=dict)

"""What ``bin/executor`` was told: the settings the agent's link, fence and runner share."""

from __future__ import annotations

from dataclasses import dataclass


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
    prefetch: int = 0

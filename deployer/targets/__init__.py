"""Deployment targets beyond the compose file: the same plan rendered for Kubernetes and
deployed to a Docker Swarm. Each target either expresses the whole plan or refuses it
(`errors.TargetUnsupported`) with the reason and the options."""

from __future__ import annotations

from enum import Enum


class Target(str, Enum):
    """Where a plan runs: one box through compose, a Kubernetes cluster, a Docker Swarm."""

    COMPOSE = "compose"
    KUBERNETES = "kubernetes"
    SWARM = "swarm"

    def __str__(self) -> str:
        return self.value

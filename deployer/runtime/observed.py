"""The deployment's containers as the engine describes them, found by their labels
(docker/compose v1 `container.py`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import docker.errors

from deployer.runtime.engine_errors import docker_errors
from deployer.runtime.states import ContainerState
from deployer.spec import LABEL_CONFIG_HASH, LABEL_ONEOFF, LABEL_PROJECT, LABEL_SERVICE

if TYPE_CHECKING:
    from deployer.spec import ContainerSpec


@dataclass(frozen=True)
class Observed:
    """One container of the deployment as the engine describes it (from its labels)."""

    service: str
    id: str
    name: str
    state: ContainerState
    health: str | None  # starting | healthy | unhealthy; None without a healthcheck
    config_hash: str
    labels: Mapping[str, str]
    image: str
    image_id: str  # what the container runs; differs from the tag's once the tag moves
    restart_count: int
    exit_code: int | None
    started_at: str | None
    restart_policy: str

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Observed:
        config = attrs.get("Config") or {}
        labels = config.get("Labels") or {}
        state = attrs.get("State") or {}
        health = state.get("Health") or {}
        host = attrs.get("HostConfig") or {}
        return cls(
            service=labels.get(LABEL_SERVICE, ""),
            id=attrs.get("Id", ""),
            name=str(attrs.get("Name", "")).lstrip("/"),
            state=ContainerState.parse(state.get("Status", "unknown")),
            health=health.get("Status"),
            config_hash=labels.get(LABEL_CONFIG_HASH, ""),
            labels=dict(labels),
            image=config.get("Image", ""),
            image_id=str(attrs.get("Image", "")),
            restart_count=int(attrs.get("RestartCount") or 0),
            exit_code=state.get("ExitCode"),
            started_at=state.get("StartedAt"),
            restart_policy=(host.get("RestartPolicy") or {}).get("Name") or "no",
        )


def project_filter(deployment: str) -> dict[str, list[str]]:
    """The engine-side filter for the deployment's (non one-off) containers."""
    return {"label": [f"{LABEL_PROJECT}={deployment}", f"{LABEL_ONEOFF}=False"]}


def containers(client: docker.DockerClient, deployment: str) -> list[Any]:
    """The SDK's container objects of the deployment, stopped ones included."""
    return list(client.containers.list(all=True, filters=project_filter(deployment)))


def observe(client: docker.DockerClient, deployment: str) -> list[Observed]:
    """The deployment's containers, found by the compose project label."""
    with docker_errors(f"listing the containers of {deployment!r}"):
        return [Observed.from_attrs(c.attrs) for c in containers(client, deployment)]


def local_image_ids(client: docker.DockerClient, specs: Sequence[ContainerSpec]) -> dict[str, str]:
    """Image name -> id of the local image the name points at now (absent when not pulled)."""
    ids = {}
    for image in sorted({s.image for s in specs}):
        try:
            ids[image] = client.images.get(image).id
        except docker.errors.ImageNotFound:
            continue
    return ids

"""The deployment's containers as the engine describes them, found by their labels
(docker/compose v1 `container.py`).

A container is the deployment's only when it carries qwen-deploy's own labels besides compose's
project label: `docker compose` run on the rendered file stamps them too, but another compose
project that happens to have the deployment's name does not. Those are "foreign": listed by
`status`, never stopped, removed or recreated.

Read through the Docker SDK's client, or through the small Engine API client (`status`, which
then imports no SDK: see engine_api.py); both give the engine's inspect documents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from deployer.runtime.engine_api import EngineApi, engine_api_errors
from deployer.runtime.states import ContainerState
from deployer.spec import (
    LABEL_CONFIG_HASH,
    LABEL_ENGINE,
    LABEL_ONEOFF,
    LABEL_PREFIX,
    LABEL_PROJECT,
    LABEL_SERVICE,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    import docker

    from deployer.spec import ContainerSpec

    # What the containers can be read through: the SDK's client, or the Engine API's.
    EngineClient: TypeAlias = docker.DockerClient | EngineApi


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


# Every container qwen-deploy creates carries it (ContainerSpec.labels), through the SDK or
# through `docker compose up` on the rendered file.
OWNED_LABEL = LABEL_ENGINE
# Stamped on the networks the runtime creates, so `down` removes only those.
NETWORK_OWNER_LABEL = LABEL_PREFIX + "deployment"


def is_owned(labels: Mapping[str, str] | None) -> bool:
    """Whether a container's labels say qwen-deploy created it."""
    return OWNED_LABEL in (labels or {})


def project_filter(deployment: str) -> dict[str, list[str]]:
    """The engine-side filter for the deployment's own (non one-off) containers."""
    return {
        "label": [f"{LABEL_PROJECT}={deployment}", f"{LABEL_ONEOFF}=False", OWNED_LABEL],
    }


def containers(client: docker.DockerClient, deployment: str) -> list[Any]:
    """The SDK's container objects of the deployment, stopped ones included."""
    return list(client.containers.list(all=True, filters=project_filter(deployment)))


def _errors(client: EngineClient, what: str) -> AbstractContextManager[None]:
    """The client's own errors, as DeployErrors."""
    if isinstance(client, EngineApi):
        return engine_api_errors(what)
    from deployer.runtime.engine_errors import docker_errors  # imports the SDK

    return docker_errors(what)


def _inspected(client: EngineClient, filters: dict[str, list[str]]) -> Iterator[Mapping[str, Any]]:
    """The inspect document of every container the filters match, stopped ones included."""
    if isinstance(client, EngineApi):
        yield from client.container_attrs(filters)
    else:
        yield from (c.attrs for c in client.containers.list(all=True, filters=filters))


def observe(client: EngineClient, deployment: str) -> list[Observed]:
    """The deployment's containers, found by the compose project label."""
    with _errors(client, f"listing the containers of {deployment!r}"):
        return [Observed.from_attrs(a) for a in _inspected(client, project_filter(deployment))]


def foreign(client: EngineClient, deployment: str) -> list[Observed]:
    """Containers of a compose project with the deployment's name that qwen-deploy did not
    create (no io.qwen-deploy.* label): someone else's, to be left alone."""
    with _errors(client, f"listing the containers of {deployment!r}"):
        found = _inspected(client, {"label": [f"{LABEL_PROJECT}={deployment}"]})
        observed = [Observed.from_attrs(a) for a in found]
        return [o for o in observed if not is_owned(o.labels)]


def local_image_ids(client: docker.DockerClient, specs: Sequence[ContainerSpec]) -> dict[str, str]:
    """Image name -> id of the local image the name points at now (absent when not pulled)."""
    import docker.errors

    ids = {}
    for image in sorted({s.image for s in specs}):
        try:
            ids[image] = client.images.get(image).id
        except docker.errors.ImageNotFound:
            continue
    return ids

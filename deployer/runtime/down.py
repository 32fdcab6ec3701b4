"""`down`: stop and remove the deployment's containers and its network."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from deployer.planner import DeploymentPlan
from deployer.runtime import containers as engine
from deployer.runtime.engine_errors import docker_errors
from deployer.runtime.observed import containers as deployment_containers
from deployer.spec import LABEL_PROJECT, LABEL_SERVICE


@dataclass(frozen=True)
class DownResult:
    deployment: str
    removed: tuple[str, ...]  # container names
    networks: tuple[str, ...]


def _stop_all(found: list[Any]) -> None:
    """Stopped together: each may take a while to exit, and order does not matter here."""
    errors: list[BaseException] = []

    def stop(container: Any) -> None:
        try:
            engine.stop(container, disarm=False)
        except BaseException as exc:  # raised again below, in this thread
            errors.append(exc)

    threads = [threading.Thread(target=stop, args=(c,), daemon=True) for c in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def down(
    client: docker.DockerClient, deployment: str, plan: DeploymentPlan | None = None
) -> DownResult:
    """Stop and remove the deployment's containers (later services first) and its network.
    Volumes (the model cache) and the deployment directory stay."""
    with docker_errors(f"deployment {deployment!r}"):
        found = deployment_containers(client, deployment)
        order = [s.name for s in plan.services] if plan else []

        def rank(container: Any) -> int:
            service = (container.labels or {}).get(LABEL_SERVICE, "")
            return -order.index(service) if service in order else 1

        found.sort(key=rank)
        _stop_all(found)
        removed = []
        for container in found:
            container.remove(force=True)
            removed.append(container.name)
        networks = []
        candidates = {
            n.id: n
            for n in client.networks.list(filters={"label": f"{LABEL_PROJECT}={deployment}"})
        }
        with contextlib.suppress(docker.errors.NotFound):
            named = client.networks.get(f"{deployment}_default")
            candidates[named.id] = named
        for network in candidates.values():
            network.remove()
            networks.append(network.name)
    return DownResult(deployment, tuple(removed), tuple(sorted(networks)))

"""`down`: stop and remove the deployment's containers and its network, never another compose
project's that has the same name."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from deployer.gateway.spec import GATEWAY_SERVICE
from deployer.plan import DeploymentPlan
from deployer.runtime import containers as engine
from deployer.runtime.engine_errors import docker_errors
from deployer.runtime.observed import NETWORK_OWNER_LABEL, foreign
from deployer.runtime.observed import containers as deployment_containers
from deployer.spec import LABEL_PROJECT, LABEL_SERVICE


@dataclass(frozen=True)
class DownResult:
    deployment: str
    removed: tuple[str, ...]  # container names
    networks: tuple[str, ...]
    left: tuple[str, ...] = ()  # "container NAME (why)": foreign ones of the same name, untouched


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
            if service == GATEWAY_SERVICE:  # the front door closes first
                return -len(order) - 1
            return -order.index(service) if service in order else 1

        found.sort(key=rank)
        _stop_all(found)
        removed = []
        for container in found:
            container.remove(force=True)
            removed.append(container.name)
        theirs = [o.name for o in foreign(client, deployment)]
        networks, kept = _remove_networks(client, deployment, bool(theirs))
    left = (
        *(f"container {n} (another compose project's)" for n in sorted(theirs)),
        *(f"network {n} (another compose project's, or still in use)" for n in sorted(kept)),
    )
    return DownResult(deployment, tuple(removed), tuple(sorted(networks)), left)


def _remove_networks(
    client: docker.DockerClient, deployment: str, foreign_project: bool
) -> tuple[list[str], list[str]]:
    """(removed, kept): the deployment's networks, removed when qwen-deploy made them (its own
    label) or when `docker compose` made `NAME_default` from the rendered file (compose's
    labels, no foreign container in the project, nothing else attached). Others are kept."""
    candidates = {
        n.id: n for n in client.networks.list(filters={"label": f"{LABEL_PROJECT}={deployment}"})
    }
    with contextlib.suppress(docker.errors.NotFound):
        named = client.networks.get(f"{deployment}_default")
        candidates[named.id] = named
    removed, kept = [], []
    for network in candidates.values():
        network.reload()  # `list` leaves out the attached containers
        labels = network.attrs.get("Labels") or {}
        attached = network.attrs.get("Containers") or {}
        ours = labels.get(NETWORK_OWNER_LABEL) == deployment
        compose_made = (
            labels.get(LABEL_PROJECT) == deployment
            and network.name == f"{deployment}_default"
            and not foreign_project
        )
        if (ours or compose_made) and not attached:
            network.remove()
            removed.append(network.name)
        else:
            kept.append(network.name)
    return removed, kept

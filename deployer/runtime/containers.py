"""Acting on one container: the create arguments from its spec, the network, restart policy,
stopping, and the logs of one start attempt."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import docker
import docker.errors
from docker.types import DeviceRequest

from deployer.runtime.observed import NETWORK_OWNER_LABEL
from deployer.spec import LABEL_CONFIG_HASH, LABEL_PROJECT, ContainerSpec

STOP_TIMEOUT_S = 30  # vLLM shuts down cleanly on SIGTERM well within this
LOG_TAIL_ON_FAILURE = 200


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def create_kwargs(
    client: docker.DockerClient,
    spec: ContainerSpec,
    env: Mapping[str, str],
    restart_policy: str | None = None,
) -> dict[str, Any]:
    """The `containers.create` arguments for a spec; secrets from `env` (the .env keys and
    HF_TOKEN), empty ones left out; `restart_policy` overrides the spec's."""
    environment = dict(spec.environment)
    for container_var, source in spec.secret_env:
        if env.get(source):
            environment[container_var] = env[source]
    check = spec.healthcheck
    return {
        "image": spec.image,
        "entrypoint": list(spec.entrypoint) if spec.entrypoint else None,
        "command": list(spec.command),
        "name": spec.container_name,
        "environment": environment,
        "labels": {**dict(spec.labels), LABEL_CONFIG_HASH: spec.config_hash(dict(env))},
        "ports": {f"{spec.container_port}/tcp": (spec.bind, spec.host_port)},
        "device_requests": [
            DeviceRequest(driver="nvidia", device_ids=list(spec.device_ids), capabilities=[["gpu"]])
        ],
        "ipc_mode": spec.ipc_mode,
        "volumes": {volume: {"bind": path, "mode": "rw"} for volume, path in spec.volumes},
        "restart_policy": {"Name": restart_policy or spec.restart_policy},
        "healthcheck": {
            "test": list(check.test),
            "interval": _ns(check.interval_s),
            "timeout": _ns(check.timeout_s),
            "retries": check.retries,
            "start_period": _ns(check.start_period_s),
        },
        "network": spec.network,
        "networking_config": {
            spec.network: client.api.create_endpoint_config(aliases=[spec.service])
        },
        "detach": True,
    }


def ensure_network(client: docker.DockerClient, name: str, project: str) -> None:
    """The deployment's bridge network, as compose would name and label it, plus a label that
    says qwen-deploy made it (so `down` removes it, and only it)."""
    try:
        client.networks.get(name)
    except docker.errors.NotFound:
        client.networks.create(
            name,
            driver="bridge",
            labels={
                LABEL_PROJECT: project,
                "com.docker.compose.network": "default",
                NETWORK_OWNER_LABEL: project,
            },
        )


def set_restart_policy(container: Any, name: str) -> None:
    """Give the container restart policy `name` unless it has it already."""
    policy = (container.attrs.get("HostConfig") or {}).get("RestartPolicy") or {}
    if policy.get("Name") != name:
        container.update(restart_policy={"Name": name})
        container.reload()


def stop(container: Any, disarm: bool = True) -> None:
    """Stop a container; `disarm` also sets its restart policy to `no`, so a failed service
    stays down (and keeps its logs) even when dockerd restarts. The next `up` or `restart`
    that gets it ready sets the spec's policy again."""
    container.reload()
    if container.status in ("running", "restarting", "paused"):
        container.stop(timeout=STOP_TIMEOUT_S)
    if disarm:
        with contextlib.suppress(docker.errors.APIError):
            container.update(restart_policy={"Name": "no"})


def remove(container: Any) -> None:
    """Stop and remove a container."""
    stop(container, disarm=False)
    container.remove(force=True)


def log_lines(container: Any, since: float, tail: int = LOG_TAIL_ON_FAILURE) -> list[str]:
    """The container's last lines since `since` (Unix time): this attempt's, not older runs'."""
    with contextlib.suppress(docker.errors.APIError):
        raw = container.logs(tail=tail, since=datetime.fromtimestamp(since, timezone.utc))
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return text.splitlines()
    return []

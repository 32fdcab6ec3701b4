"""status, logs, restart and down of a Swarm deployment, returning the same result types as the
compose runtime so the CLI shows both the same way."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import docker
import docker.errors
import requests

from deployer.errors import StateError
from deployer.gateway.config import GATEWAY_SERVICE
from deployer.gateway.spec import GATEWAY_MODEL
from deployer.plan import DeploymentPlan
from deployer.runtime import docker_errors, parse_docker_time
from deployer.runtime.convergence import Action
from deployer.runtime.down import DownResult
from deployer.runtime.progress import Progress, ProgressCallback
from deployer.runtime.results import ApplyResult, ServiceOutcome
from deployer.runtime.states import ActionKind, Stage
from deployer.runtime.status import MISSING, ServiceStatus
from deployer.spec import LABEL_GPUS, LABEL_MODEL, LABEL_PORT
from deployer.targets import swarm_gateway
from deployer.targets.swarm import existing_services, remove_services, wait_ready
from deployer.targets.swarm_spec import LABEL_DEPLOYMENT, LABEL_SWARM_HASH


def _newest_task(service: Any) -> dict[str, Any]:
    tasks = sorted(service.tasks(), key=lambda t: t.get("CreatedAt", ""), reverse=True)
    return tasks[0] if tasks else {}


def _health(client: docker.DockerClient, task: dict[str, Any]) -> str:
    """The task's container health where the container is on this engine, else from the task
    state (Swarm keeps a task `starting` until its healthcheck passes)."""
    status = task.get("Status", {})
    container_id = (status.get("ContainerStatus") or {}).get("ContainerID")
    if container_id:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container = client.containers.get(container_id)
            return str(container.attrs["State"].get("Health", {}).get("Status", "none"))
    state = status.get("State", "")
    return "healthy" if state == "running" else "starting" if state == "starting" else "-"


def swarm_statuses(
    client: docker.DockerClient,
    deployment: str,
    plan: DeploymentPlan | None,
    desired_hashes: Mapping[str, str] | None = None,
    verify: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> list[ServiceStatus]:
    """One row per planned tier ("missing" without a service) and per service of the
    deployment no longer in the plan; STATE is the Swarm task's state."""
    now = now or datetime.now(timezone.utc)
    verify = verify or {}
    with docker_errors(f"status of {deployment!r}"):
        existing = existing_services(client, deployment)
        planned = [s.name for s in plan.services] if plan else []
        if plan is not None and plan.gateway is not None:  # a service too, with no GPU
            planned.append(GATEWAY_SERVICE)
        rows = []
        for tier in [*planned, *sorted(set(existing) - set(planned))]:
            in_plan = tier in planned
            svc = existing.get(tier)
            if svc is None:
                assert plan is not None
                model, gpus, port = _planned_columns(plan, tier)
                rows.append(
                    ServiceStatus(
                        service=tier,
                        model=model,
                        gpus=gpus,
                        port=port,
                        state=MISSING,
                        health="-",
                        uptime_s=None,
                        restart_count=0,
                        exit_code=None,
                        container=None,
                        in_plan=True,
                        up_to_date=None,
                        verify=verify.get(tier),
                    )
                )
                continue
            labels = svc.attrs["Spec"]["Labels"]
            task = _newest_task(svc)
            status = task.get("Status", {})
            state = str(status.get("State", "pending"))
            running = state == "running"
            since = parse_docker_time(status.get("Timestamp"))
            exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
            wanted = (desired_hashes or {}).get(tier)
            rows.append(
                ServiceStatus(
                    service=tier,
                    model=labels.get(LABEL_MODEL, "?"),
                    gpus=labels.get(LABEL_GPUS, "?"),
                    port=int(labels[LABEL_PORT]) if labels.get(LABEL_PORT) else None,
                    state=state,
                    health=_health(client, task),
                    uptime_s=(now - since).total_seconds() if since and running else None,
                    restart_count=max(0, len(svc.tasks()) - 1),
                    exit_code=None if running else exit_code,
                    container=svc.name,
                    in_plan=in_plan,
                    up_to_date=None if wanted is None else labels.get(LABEL_SWARM_HASH) == wanted,
                    verify=verify.get(tier),
                )
            )
    return rows


def _planned_columns(plan: DeploymentPlan, name: str) -> tuple[str, str, int | None]:
    """MODEL, GPUS and PORT of a planned service that has no Swarm service."""
    if name == GATEWAY_SERVICE and plan.gateway is not None:
        return GATEWAY_MODEL, "", plan.gateway.port
    service = plan.service(name)
    return service.served_model_name, ",".join(map(str, service.gpus)), service.port


def swarm_logs(
    client: docker.DockerClient,
    deployment: str,
    services: Sequence[str] = (),
    *,
    follow: bool = False,
    tail: int | None = None,
    since: datetime | int | None = None,
) -> Iterator[str]:
    """Log lines of the tiers' Swarm services (all when empty; then `name | ` prefixed,
    one service after another; --follow follows the last one)."""
    with docker_errors(f"logs of {deployment!r}"):
        existing = existing_services(client, deployment)
    names = list(services) or sorted(existing)
    if not names:
        raise StateError(f"deployment {deployment!r} has no Swarm services")
    for name in names:
        if name not in existing:
            raise StateError(
                f"no Swarm service for {name} in deployment {deployment!r}",
                hint="`qwen-deploy up --target swarm` creates it",
            )
    width = max(len(n) for n in names)
    for position, name in enumerate(names):
        prefix = f"{name.ljust(width)} | " if len(names) > 1 else ""
        stream = existing[name].logs(
            stdout=True,
            stderr=True,
            follow=follow and position == len(names) - 1,
            tail="all" if tail is None else tail,
            **({} if since is None else {"since": since}),
        )
        buffer = b""
        for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield prefix + line.decode(errors="replace")
        if buffer:
            yield prefix + buffer.decode(errors="replace")


def swarm_restart(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    keys: Mapping[str, str],
    services: Sequence[str] = (),
    *,
    timeout_s: float | None = None,
    session: requests.Session | None = None,
    progress: ProgressCallback | None = None,
    poll_s: float = 1.0,
) -> ApplyResult:
    """Restart tiers (all when empty) and the tiers that start after them, one after another
    in start order, each once the previous one is ready again (Swarm has no start order);
    then the gateway, when asked for or when everything is."""
    begun = time.monotonic()
    has_gateway = plan.gateway is not None
    tiers = [s for s in services if not (has_gateway and s == GATEWAY_SERVICE)]
    gateway_too = has_gateway and (not services or len(tiers) < len(services))
    chosen = {plan.service(s).name for s in tiers}
    if not services:
        chosen = {s.name for s in plan.services}
    for service in plan.services:  # a co-tenant that starts after a restarted one re-profiles
        if set(service.start_after) & chosen:
            chosen.add(service.name)
    session = session or requests.Session()
    with docker_errors(f"restart of {plan.deployment!r}"):
        existing = existing_services(client, plan.deployment)
        node = (client.info().get("Swarm") or {}).get("NodeID")
        outcomes: list[ServiceOutcome] = []
        actions = []
        failed: set[str] = set()
        for service_plan in plan.services:
            tier = service_plan.name
            if tier not in chosen:
                continue
            actions.append(Action(tier, ActionKind.RESTART, "asked"))
            if tier not in existing or set(service_plan.start_after) & failed:
                failed.add(tier)
                why = "no Swarm service, or the tier it starts after failed"
                outcomes.append(
                    ServiceOutcome(tier, ActionKind.RESTART, False, Stage.NOT_STARTED, why)
                )
                continue
            at = time.monotonic()
            svc = existing[tier]
            if progress is not None:
                progress(Progress(tier, Stage.STOPPING, 0.0))
            if int(svc.attrs["Spec"]["Mode"]["Replicated"].get("Replicas", 1)) == 0:
                svc.scale(1)  # stopped after a failed start: bring it back
            else:
                svc.force_update()
            time.sleep(poll_s)  # let Swarm replace the task before watching it
            ok, message, _ = wait_ready(
                svc,
                tier,
                plan,
                keys.get(service_plan.api_key_env, ""),
                timeout_s=timeout_s or service_plan.startup_timeout_s,
                local=_newest_task(svc).get("NodeID", node) == node,
                session=session,
                progress=progress,
                poll_s=poll_s,
            )
            if not ok:
                failed.add(tier)
            outcomes.append(
                ServiceOutcome(
                    tier,
                    ActionKind.RESTART,
                    ok,
                    Stage.HEALTHY if ok else Stage.FAILED,
                    message,
                    started_s=at - begun,
                )
            )
        if gateway_too:
            actions.append(Action(GATEWAY_SERVICE, ActionKind.RESTART, "asked"))
            outcomes.append(
                _restart_gateway(plan, existing, failed, session, progress, begun, poll_s)
            )
    return ApplyResult(plan.deployment, tuple(actions), tuple(outcomes), time.monotonic() - begun)


def _restart_gateway(
    plan: DeploymentPlan,
    existing: Mapping[str, Any],
    failed: set[str],
    session: requests.Session,
    progress: ProgressCallback | None,
    begun: float,
    poll_s: float,
) -> ServiceOutcome:
    assert plan.gateway is not None
    svc = existing.get(GATEWAY_SERVICE)
    if svc is None or failed:
        why = "no Swarm service" if svc is None else f"{', '.join(sorted(failed))} failed"
        return ServiceOutcome(GATEWAY_SERVICE, ActionKind.RESTART, False, Stage.NOT_STARTED, why)
    return swarm_gateway.restart(svc, plan.gateway.port, session, progress, begun, poll_s)


def swarm_down(
    client: docker.DockerClient, deployment: str, plan: DeploymentPlan | None = None
) -> DownResult:
    """Remove the tiers' services (later tiers first), their secrets and the overlay network;
    volumes (the model cache) and the deployment directory stay."""
    with docker_errors(f"deployment {deployment!r}"):
        existing = existing_services(client, deployment)
        order = [s.name for s in plan.services] if plan else sorted(existing)
        services = [existing[t] for t in order if t in existing]
        services += [s for t, s in existing.items() if t not in order]
        removed = [s.name for s in services]
        remove_services(client, services)
        for secret in client.secrets.list(filters={"label": f"{LABEL_DEPLOYMENT}={deployment}"}):
            secret.remove()
        networks = []
        for network in client.networks.list(filters={"label": f"{LABEL_DEPLOYMENT}={deployment}"}):
            network.remove()
            networks.append(network.name)
    return DownResult(deployment, tuple(removed), tuple(networks))

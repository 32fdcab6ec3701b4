"""The gateway's container in `up` and `restart`: its image built locally before the checks,
its ContainerSpec converged with the tiers' (same config-hash label, same actions), and started
once the tiers it fronts are ready. No GPU, so no memory check and no start gate."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import docker
import docker.errors
import requests

from deployer.errors import DeployFailed
from deployer.gateway import images
from deployer.gateway.config import GATEWAY_SERVICE, GatewaySpec, plan_gateway
from deployer.gateway.service import gateway_specs
from deployer.plan import DeploymentPlan
from deployer.runtime import containers as engine
from deployer.runtime.convergence import Action
from deployer.runtime.progress import Progress, ProgressCallback
from deployer.runtime.results import ApplyResult, ServiceOutcome
from deployer.runtime.states import ActionKind, ContainerState, Stage
from deployer.spec import ContainerSpec

READY_TIMEOUT_S = 60.0
POLL_S = 0.5


def ensure_image(
    client: docker.DockerClient, plan: DeploymentPlan, spec: GatewaySpec | None = None
) -> None:
    """Build the gateway's image unless it is there (before `up`'s image check)."""
    if (spec or plan_gateway(plan)) is None:
        return
    base = plan.image if plan.engine != "stand-in" else None
    images.build(client, str(plan.engine), base)


def create_kwargs(
    client: docker.DockerClient, spec: ContainerSpec, env: Mapping[str, str]
) -> dict[str, Any]:
    kwargs = engine.create_kwargs(client, spec, env, restart_policy="no")
    if not spec.device_ids:
        kwargs.pop("device_requests", None)  # no GPU: an empty request would still ask nvidia
    return kwargs


def _wait_healthy(container: Any, spec: ContainerSpec, session: requests.Session) -> None:
    host = "127.0.0.1" if spec.bind in ("0.0.0.0", "::", "") else spec.bind
    url = f"http://{host}:{spec.host_port}/health"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        container.reload()
        state = ContainerState.parse((container.attrs.get("State") or {}).get("Status"))
        if state in (ContainerState.EXITED, ContainerState.DEAD):
            code = (container.attrs.get("State") or {}).get("ExitCode")
            raise DeployFailed(f"the gateway's container exited with code {code}")
        with contextlib.suppress(requests.RequestException):
            if session.get(url, timeout=3).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise DeployFailed(f"the gateway did not answer {url} within {READY_TIMEOUT_S:g} s")
        time.sleep(POLL_S)


def apply_gateway(
    client: docker.DockerClient,
    spec: ContainerSpec,
    env: Mapping[str, str],
    action: Action,
    tiers_ready: Sequence[str],
    tiers_failed: Sequence[str],
    progress: ProgressCallback | None = None,
    t0: float | None = None,
) -> ServiceOutcome:
    """Carry out the gateway's action after the tiers' (`tiers_failed` non-empty: not started,
    the tiers it would front are not all up)."""
    t0 = time.monotonic() if t0 is None else t0
    began = time.monotonic()

    def report(stage: Stage, detail: str = "") -> None:
        if progress is not None:
            progress(Progress(GATEWAY_SERVICE, stage, time.monotonic() - began, detail))

    if tiers_failed and action.kind != ActionKind.NOOP:
        message = f"not started: {', '.join(tiers_failed)} did not become ready"
        report(Stage.NOT_STARTED, message)
        return ServiceOutcome(GATEWAY_SERVICE, action.kind, False, Stage.NOT_STARTED, message)
    container = None
    try:
        with requests.Session() as session:
            if action.kind in (ActionKind.CREATE, ActionKind.RECREATE):
                report(Stage.CREATING)
                if action.container:  # up stopped it first; a recreate replaces it
                    with contextlib.suppress(docker.errors.NotFound):
                        engine.remove(client.containers.get(action.container))
                container = client.containers.create(**create_kwargs(client, spec, env))
            else:
                container = client.containers.get(action.container or spec.container_name)
            if action.kind != ActionKind.NOOP:
                report(Stage.STARTING)
                if action.kind == ActionKind.RESTART:
                    engine.stop(container, disarm=False)
                container.start()
            _wait_healthy(container, spec, session)
            engine.set_restart_policy(container, spec.restart_policy)
    except (DeployFailed, docker.errors.DockerException) as exc:
        lines = engine.log_lines(container, began - 1) if container is not None else []
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException):
                engine.stop(container)
        message = str(exc)
        report(Stage.FAILED, message)
        return ServiceOutcome(
            GATEWAY_SERVICE,
            action.kind,
            False,
            Stage.FAILED,
            message,
            started_s=began - t0,
            log_excerpt=tuple(lines[-15:]),
        )
    report(Stage.HEALTHY, "unchanged" if action.kind == ActionKind.NOOP else "")
    return ServiceOutcome(
        GATEWAY_SERVICE,
        action.kind,
        True,
        Stage.HEALTHY,
        started_s=began - t0,
        ready_s=time.monotonic() - t0,
    )


def with_gateway(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    result: ApplyResult,
    progress: ProgressCallback | None = None,
) -> ApplyResult:
    """`up`'s result with the gateway's action carried out once the tiers' are done."""
    spec = next((s for s in specs if s.service == GATEWAY_SERVICE), None)
    action = next((a for a in result.actions if a.service == GATEWAY_SERVICE), None)
    if spec is None or action is None or action.kind == ActionKind.REMOVE:
        return result
    tiers = {o.service: o.ok for o in result.outcomes}
    failed = [s.name for s in plan.services if tiers.get(s.name) is False]
    ready = [s.name for s in plan.services if tiers.get(s.name)]
    outcome = apply_gateway(client, spec, env, action, ready, failed, progress)
    return replace(result, outcomes=(*result.outcomes, outcome))


def restart_gateway(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    deployment_dir: str,
    env: Mapping[str, str],
    progress: ProgressCallback | None = None,
    spec: GatewaySpec | None = None,
    tiers_failed: Sequence[str] = (),
) -> ServiceOutcome:
    """`restart gateway`: stop and start its container, wait for its /health (not started
    when tiers restarted with it did not come back)."""
    specs = gateway_specs(plan, deployment_dir, spec)
    if not specs:
        raise DeployFailed(f"deployment {plan.deployment!r} has no gateway")
    action = Action(GATEWAY_SERVICE, ActionKind.RESTART, "asked for", specs[0].container_name)
    return apply_gateway(client, specs[0], env, action, [], tiers_failed, progress)

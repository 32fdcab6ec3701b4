"""`up --target swarm`: deploy a plan to a Docker Swarm through the Docker SDK: an overlay
network, one secret per key, one service per tier pinned to the node and devices of the plan,
tiers sharing a GPU created one after another, each once the previous one is ready, then the
gateway (when the plan has one) once every tier is.

Functions take a `docker.DockerClient` (only the CLI builds one) and return the runtime's
result types, so the CLI reports a Swarm deployment as it reports a compose one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.types import (
    EndpointSpec,
    Healthcheck,
    Mount,
    NetworkAttachmentConfig,
    RestartPolicy,
    SecretReference,
    ServiceMode,
    UpdateConfig,
)

from deployer import diagnose
from deployer.deployment import resolve_api_keys
from deployer.errors import DeployFailed
from deployer.gateway.config import GATEWAY_SERVICE
from deployer.plan import DeploymentPlan
from deployer.runtime import docker_errors, readiness, runtime_env
from deployer.runtime.convergence import Action
from deployer.runtime.operations import UpRequest, UpResult
from deployer.runtime.progress import Progress, ProgressCallback
from deployer.runtime.results import ApplyResult, ServiceOutcome
from deployer.runtime.states import ActionKind, Stage
from deployer.targets import Target, sizing, swarm_gateway
from deployer.targets.record import write_target
from deployer.targets.swarm_nodes import (
    NVIDIA_RUNTIME_CONFIG,
    NodeCheck,
    advertised_gpus,
    check_node,
    check_nodes,
    match_nodes,
    swarm_problems,
)
from deployer.targets.swarm_spec import (
    LABEL_DEPLOYMENT,
    LABEL_SWARM_HASH,
    LABEL_TIER,
    SwarmService,
    network_name,
    refuse_unexpressible,
    secret_payloads,
    swarm_services,
)

NS = 1_000_000_000  # the Swarm API counts durations in nanoseconds
FAILED_TASK_STATES = ("failed", "rejected", "orphaned")


def _task_state(service: Any) -> tuple[str, str]:
    """(state, error) of the service's newest task that should be running."""
    tasks = sorted(service.tasks(), key=lambda t: t.get("CreatedAt", ""), reverse=True)
    if not tasks:
        return "pending", ""
    status = tasks[0].get("Status", {})
    return str(status.get("State", "unknown")), str(status.get("Err", ""))


def _logs(service: Any, tail: int = 60) -> list[str]:
    try:
        raw = b"".join(service.logs(stdout=True, stderr=True, tail=tail))
    except docker.errors.APIError:
        return []
    return raw.decode(errors="replace").splitlines()


def node_for(client: docker.DockerClient, plan: DeploymentPlan, skip_gpu_check: bool) -> Any:
    """The node that holds a one-box plan's GPUs (by the UUIDs it advertises), else this one."""
    info = client.info()
    local = (info.get("Swarm") or {}).get("NodeID") or ""
    if not local:
        return None
    if not skip_gpu_check:
        wanted = {g.uuid for g in plan.gpus}
        for node in client.nodes.list():
            if wanted <= advertised_gpus(node.attrs):
                return node
    return client.nodes.get(local)


@dataclass(frozen=True)
class Placement:
    """Where the plan's services go, as `check` found the swarm."""

    node_constraint: str  # a one-box plan's tiers (a several-box plan's tiers name their node)
    gateway_constraint: str  # the node `up` runs against: the gateway's URL is this host's
    local_tiers: frozenset[str]  # tiers on this engine's node: readiness asked over 127.0.0.1
    nodes: Mapping[str, str]  # plan node ("" for one box) -> Swarm node id, for target.json
    check: NodeCheck


def _runtime_config() -> str | None:
    try:
        return Path(NVIDIA_RUNTIME_CONFIG).read_text()
    except OSError:
        return None


def check(client: docker.DockerClient, plan: DeploymentPlan, skip_gpu_check: bool) -> Placement:
    """The nodes to deploy on and what they lack; raises DeployFailed naming every gap (and
    a several-box plan's node that is not in the swarm) before anything changes."""
    refuse_unexpressible(plan)
    hint = "fix the node as said, then run `up --target swarm` again; nothing was changed"
    with docker_errors("checking the swarm"):
        info = client.info()
        problems = swarm_problems(info)
        if problems:  # not a manager: the node API answers nothing
            raise DeployFailed("the swarm cannot run this plan: " + "; ".join(problems), hint=hint)
        local_id = str((info.get("Swarm") or {}).get("NodeID") or "")
        if plan.nodes:
            matched = match_nodes(plan, [n.attrs for n in client.nodes.list()])
            is_local = any(a.get("ID") == local_id for a in matched.values())
            result = check_nodes(
                plan, info, matched, _runtime_config() if is_local else None, skip_gpu_check
            )
            ids = {name: str(attrs.get("ID", "")) for name, attrs in matched.items()}
            local = frozenset(s.name for s in plan.services if s.node and ids[s.node] == local_id)
            constraint = f"node.id=={local_id}"
        else:
            node = node_for(client, plan, skip_gpu_check)
            is_local = node.id == local_id
            config = _runtime_config() if is_local else None
            result = check_node(plan, info, node.attrs, config, skip_gpu_check)
            ids = {"": node.id}
            local = frozenset(s.name for s in plan.services) if is_local else frozenset()
            constraint = f"node.id=={node.id}"
    if result.problems:
        raise DeployFailed(
            "the swarm cannot run this plan: " + "; ".join(result.problems), hint=hint
        )
    return Placement(constraint, f"node.id=={local_id}", local, ids, result)


def _create_kwargs(s: SwarmService, secret_ids: Mapping[str, str], drain_s: int) -> dict[str, Any]:
    mounts = []
    if s.shm_bytes:
        mounts.append(Mount(target="/dev/shm", source=None, type="tmpfs", tmpfs_size=s.shm_bytes))
    mounts += [Mount(target=path, source=volume, type="volume") for volume, path in s.volumes]
    hc = s.healthcheck
    return {
        "image": s.image,
        "name": s.name,
        "command": list(s.command),
        "args": list(s.args),
        "env": [f"{k}={v}" for k, v in s.env],
        "labels": {**dict(s.labels), LABEL_SWARM_HASH: s.config_hash()},
        "container_labels": {
            LABEL_DEPLOYMENT: dict(s.labels)[LABEL_DEPLOYMENT],
            LABEL_TIER: s.tier,
        },
        "constraints": list(s.constraints),
        "mounts": mounts,
        "networks": [NetworkAttachmentConfig(s.network, aliases=[s.tier])],
        # dnsrr and host-mode ports: no routing mesh, the tier answers on its node's port.
        "endpoint_spec": EndpointSpec(
            mode="dnsrr", ports={s.published_port: (s.target_port, "tcp", "host")}
        ),
        "secrets": [
            SecretReference(secret_ids[name], name, filename=name) for _, name in s.secrets
        ],
        "healthcheck": Healthcheck(
            test=list(hc.test),
            interval=hc.interval_s * NS,
            timeout=hc.timeout_s * NS,
            retries=hc.retries,
            start_period=hc.start_period_s * NS,
        ),
        "restart_policy": RestartPolicy(condition="on-failure", delay=10 * NS, max_attempts=3),
        # One GPU, one engine: the old task stops before the new one starts.
        "update_config": UpdateConfig(parallelism=1, order="stop-first"),
        "mode": ServiceMode("replicated", replicas=1),
        "stop_grace_period": drain_s * NS,
    }


def existing_services(client: docker.DockerClient, deployment: str) -> dict[str, Any]:
    """This deployment's Swarm services, by tier."""
    found = client.services.list(filters={"label": f"{LABEL_DEPLOYMENT}={deployment}"})
    return {s.attrs["Spec"]["Labels"].get(LABEL_TIER, s.name): s for s in found}


def converge_actions(
    plan: DeploymentPlan, desired: Sequence[SwarmService], existing: Mapping[str, Any]
) -> list[Action]:
    """Per tier: create, recreate (its spec or a tier it starts after changed) or keep; and
    remove the tiers the plan no longer has."""
    kinds: dict[str, Action] = {}
    for s in desired:
        old = existing.get(s.tier)
        if old is None:
            kinds[s.tier] = Action(s.tier, ActionKind.CREATE, "not deployed")
        elif old.attrs["Spec"]["Labels"].get(LABEL_SWARM_HASH) != s.config_hash():
            kinds[s.tier] = Action(s.tier, ActionKind.RECREATE, "configuration changed", old.name)
        else:
            kinds[s.tier] = Action(s.tier, ActionKind.NOOP, "up to date", old.name)
        before = s.start_after[-1] if s.start_after else None
        kept = kinds[s.tier].kind == ActionKind.NOOP
        if before and kept and kinds[before].kind != ActionKind.NOOP:
            # It starts after a tier that starts again: GPU memory is profiled again.
            container = kinds[s.tier].container
            kinds[s.tier] = Action(s.tier, ActionKind.RECREATE, f"starts after {before}", container)
    removed = [
        Action(tier, ActionKind.REMOVE, "not in the plan", svc.name)
        for tier, svc in existing.items()
        if tier not in kinds
    ]
    return [kinds[s.tier] for s in desired] + removed


def remove_services(
    client: docker.DockerClient, services: Sequence[Any], timeout_s: float = 120
) -> None:
    """Remove services and wait until their containers are gone (their GPU memory is free)."""
    names = [s.name for s in services]
    for service in reversed(services):
        service.remove()
    deadline = time.monotonic() + timeout_s
    while names and time.monotonic() < deadline:
        left = [
            n
            for n in names
            if client.containers.list(
                all=True, filters={"label": f"com.docker.swarm.service.name={n}"}
            )
        ]
        if not left:
            return
        time.sleep(0.5)


def _secrets(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    desired: Sequence[SwarmService],
    values: Mapping[str, str],
) -> dict[str, str]:
    """Create the secrets the services name (once per name); returns name -> id."""
    have = {
        s.name: s.id
        for s in client.secrets.list(filters={"label": f"{LABEL_DEPLOYMENT}={plan.deployment}"})
    }
    for name, (tier, value) in secret_payloads(tuple(desired), values).items():
        if name not in have:
            secret = client.secrets.create(
                name=name,
                data=value.encode(),
                labels={LABEL_DEPLOYMENT: plan.deployment, LABEL_TIER: tier},
            )
            have[name] = secret.id
    return have


def _drop_unused_secrets(client: docker.DockerClient, plan: DeploymentPlan, keep: set[str]) -> None:
    for secret in client.secrets.list(filters={"label": f"{LABEL_DEPLOYMENT}={plan.deployment}"}):
        if secret.name not in keep:
            # Still referenced by a task being torn down: the next `up` or `down` removes it.
            with contextlib.suppress(docker.errors.APIError):
                secret.remove()


def ensure_network(client: docker.DockerClient, plan: DeploymentPlan) -> None:
    name = network_name(plan)
    if not client.networks.list(names=[name]):
        client.networks.create(
            name, driver="overlay", labels={LABEL_DEPLOYMENT: plan.deployment}, scope="swarm"
        )


def wait_ready(
    service: Any,
    tier: str,
    plan: DeploymentPlan,
    key: str,
    *,
    timeout_s: float,
    local: bool,
    session: requests.Session,
    progress: ProgressCallback | None,
    poll_s: float = 1.0,
) -> tuple[bool, str, list[str]]:
    """Until the task is running and healthy (and, on this node, /v1/models answers with the
    key): (ok, message, log lines). A failed task stops the service: no crash loop next to
    healthy co-tenants; it stays down, with its logs, until the next `up`."""
    started = time.monotonic()
    stage = Stage.STARTING
    while time.monotonic() - started < timeout_s:
        service.reload()
        state, error = _task_state(service)
        if state in FAILED_TASK_STATES or (state == "shutdown" and error):
            lines = _logs(service)
            service.scale(0)
            return False, f"task {state}: {error or 'exited'}", lines
        if state == "running":
            ok, detail = readiness(session, plan.service(tier), key) if local else (True, "")
            if ok:
                return True, "ready", []
            stage, state = Stage.LOADING, detail
        if progress is not None:
            progress(Progress(tier, stage, time.monotonic() - started, state))
        time.sleep(poll_s)
    lines = _logs(service)
    service.scale(0)
    return False, f"not ready after {timeout_s:.0f} s", lines


def up_dry_run(
    client: docker.DockerClient, request: UpRequest, skip_gpu_check: bool = False
) -> tuple[Action, ...]:
    """What `up --target swarm` would do now, after the same checks; changes nothing."""
    plan = request.plan
    keys = resolve_api_keys(
        plan,
        request.profile,
        request.directory.read_env(),
        request.environ,
        request.allow_unauthenticated,
    )
    place = check(client, plan, skip_gpu_check)
    values = runtime_env(keys, request.hf_token)
    desired = swarm_services(plan, values, place.node_constraint, place.gateway_constraint)
    with docker_errors("reading the swarm"):
        return tuple(converge_actions(plan, desired, existing_services(client, plan.deployment)))


def up(
    client: docker.DockerClient,
    request: UpRequest,
    skip_gpu_check: bool = False,
    progress: ProgressCallback | None = None,
    on_checked: Callable[[Sequence[Action]], None] | None = None,
) -> UpResult:
    """Under the deployment's lock: check the swarm and the node, write the directory, then
    converge the services wave by wave and wait until each tier is ready."""
    from deployer.gateway import lifecycle  # it imports deployer.runtime's modules
    from deployer.render import render_files

    plan, directory = request.plan, request.directory
    begun = time.monotonic()
    with directory.lock(request.wait_s):
        keys = resolve_api_keys(
            plan,
            request.profile,
            directory.read_env(),
            request.environ,
            request.allow_unauthenticated,
        )
        values = runtime_env(keys, request.hf_token)
        place = check(client, plan, skip_gpu_check)
        with docker_errors("checking images"):
            try:
                client.images.get(plan.image)
            except docker.errors.ImageNotFound:
                raise DeployFailed(
                    f"image {plan.image} is not on this engine",
                    hint="build it (`make images`) or `docker pull` it on the node",
                ) from None
            # Built here, where its service runs (the node `up` talks to): no registry has it.
            lifecycle.ensure_image(client, plan)
        desired = swarm_services(plan, values, place.node_constraint, place.gateway_constraint)
        if on_checked is not None:
            on_checked(())
        directory.write_files(render_files(plan, str(directory.path), keys))
        nodes = dict(place.nodes)
        write_target(
            directory.path,
            Target.SWARM,
            node=nodes.pop("", None) or next(iter(nodes.values()), None),
            nodes=nodes,
            network=network_name(plan),
        )
        with docker_errors("deploying to the swarm"):
            existing = existing_services(client, plan.deployment)
            actions = converge_actions(plan, desired, existing)
            going = [
                existing[a.service]
                for a in actions
                if a.kind in (ActionKind.RECREATE, ActionKind.REMOVE)
            ]
            remove_services(client, going)
            ensure_network(client, plan)
            secret_ids = _secrets(client, plan, desired, values)
            outcomes = _start_waves(
                client, plan, desired, actions, secret_ids, keys, place, request, progress, begun
            )
            _drop_unused_secrets(client, plan, {n for s in desired for _, n in s.secrets})
    result = ApplyResult(plan.deployment, tuple(actions), tuple(outcomes), time.monotonic() - begun)
    return UpResult(result, keys)


def _start_waves(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    desired: Sequence[SwarmService],
    actions: Sequence[Action],
    secret_ids: Mapping[str, str],
    keys: Mapping[str, str],
    place: Placement,
    request: UpRequest,
    progress: ProgressCallback | None,
    begun: float,
) -> list[ServiceOutcome]:
    """Create each wave's services, then wait for each; a tier that fails keeps the tiers
    that start after it from being created. The gateway comes last, once every tier is
    ready."""
    by_tier = {s.tier: s for s in desired}
    kind = {a.service: a.kind for a in actions}
    failed: set[str] = set()
    outcomes: dict[str, ServiceOutcome] = {}
    session = request.session or requests.Session()
    for wave in plan.start_waves:
        started: dict[str, tuple[Any, float]] = {}
        for tier in wave:
            spec, service_plan = by_tier[tier], plan.service(tier)
            if set(spec.start_after) & failed:
                failed.add(tier)
                outcomes[tier] = ServiceOutcome(
                    tier,
                    kind[tier],
                    False,
                    Stage.NOT_STARTED,
                    f"{spec.start_after[-1]} did not become ready",
                )
                continue
            at = time.monotonic()
            if kind[tier] == ActionKind.NOOP:
                service = client.services.get(spec.name)
            else:
                if progress is not None:
                    progress(Progress(tier, Stage.CREATING, 0.0))
                service = client.services.create(
                    **_create_kwargs(spec, secret_ids, sizing.drain_s(service_plan))
                )
            started[tier] = (service, at)
        for tier, (service, at) in started.items():
            service_plan = plan.service(tier)
            ok, message, lines = wait_ready(
                service,
                tier,
                plan,
                keys.get(service_plan.api_key_env, ""),
                timeout_s=request.timeout_s or service_plan.startup_timeout_s,
                local=tier in place.local_tiers,
                session=session,
                progress=progress,
                poll_s=request.poll_s,
            )
            if not ok:
                failed.add(tier)
            outcomes[tier] = ServiceOutcome(
                tier,
                kind[tier],
                ok,
                Stage.HEALTHY if ok else Stage.FAILED,
                message,
                started_s=at - begun,
                ready_s=(time.monotonic() - begun) if ok else None,
                log_excerpt=tuple(diagnose.excerpt(lines)) if lines else (),
                findings=tuple(diagnose.diagnose(lines)),
            )
            if progress is not None:
                progress(Progress(tier, outcomes[tier].stage, time.monotonic() - at, message))
    ordered = [outcomes[s.name] for s in plan.services]
    gateway = by_tier.get(GATEWAY_SERVICE)
    if gateway is not None:
        grace = max(sizing.drain_s(s) for s in plan.services)
        ordered.append(
            swarm_gateway.start(
                client,
                gateway,
                kind[GATEWAY_SERVICE],
                [s.name for s in plan.services if s.name in failed],
                _create_kwargs(gateway, secret_ids, grace),
                session,
                progress,
                begun,
                request.poll_s,
            )
        )
    return ordered

"""How a plan runs as Docker Swarm services. Pure: the Docker calls are in `swarm.py`, what the
nodes need in `swarm_nodes.py`.

Swarm can reserve a *count* of generic resources but cannot pin a GPU or share one, and it has
no start order. So every tier is pinned to the node that holds the plan's GPUs (a placement
constraint: the node's id for a one-box plan, `node.hostname==NODE` for each tier of a
several-box plan) and to the plan's devices on it (NVIDIA_VISIBLE_DEVICES, which the node's
NVIDIA runtime reads), qwen-deploy's own per-GPU plan stays the truth, and `swarm.py` creates
tiers that share a GPU one after another. Services reserve no generic resources: two
co-tenants cannot both reserve one GPU (the second would never be scheduled), and a
reservation puts Swarm's own pick of GPU UUIDs into the task, which the runtime's
`swarm-resource` setting would expose instead of the plan's. Keys are Swarm secrets, read into
the environment by a small shim before the engine starts (vLLM reads VLLM_API_KEY, not a file).

The gateway is one more service on the overlay network, with no GPU, on the manager `up` runs
against (so its URL is this host's), reaching the tiers by their network aliases.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from deployer.errors import TargetUnsupported
from deployer.gateway import images
from deployer.gateway.config import GATEWAY_SERVICE, GatewaySpec, plan_gateway
from deployer.gateway.service import gateway_container_spec
from deployer.plan import WILDCARD_BINDS, DeploymentPlan, Engine
from deployer.spec import LABEL_PREFIX, ContainerSpec, Healthcheck
from deployer.targets import sizing
from deployer.targets.node_specs import tier_specs
from deployer.targets.swarm_nodes import hostname_constraint
from deployer.vllm_pin import STANDIN_ENTRYPOINT, VLLM_ENTRYPOINT

LABEL_TARGET = "io.qwen-deploy.target"
LABEL_DEPLOYMENT = "io.qwen-deploy.deployment"
LABEL_TIER = "io.qwen-deploy.tier"
LABEL_SWARM_HASH = "io.qwen-deploy.swarm-config-hash"
STACK_NAMESPACE = "com.docker.stack.namespace"  # `docker stack ps NAME` lists the tasks
SECRETS_DIR = "/run/secrets"
SECRET_FILES_VAR = "QWEN_DEPLOY_SECRET_FILES"  # VAR=path pairs the shim reads
GATEWAY_ENTRYPOINT = ("python3", "-m", "deployer.gateway")  # the gateway image's ENTRYPOINT
SECRET_NAME_MAX = 64  # Docker refuses longer secret names

# Swarm mounts secrets as files; vLLM reads its key from the environment. This runs first,
# moves each file into its variable, then execs the rest of the command line.
SECRET_SHIM = """\
import os, sys
for pair in os.environ.pop("QWEN_DEPLOY_SECRET_FILES", "").split(","):
    if pair:
        var, path = pair.split("=", 1)
        with open(path) as handle:
            os.environ[var] = handle.read().strip()
os.execvp(sys.argv[1], sys.argv[1:])
"""


@dataclass(frozen=True)
class SwarmService:
    """One tier (or the gateway) as a Swarm service."""

    name: str  # the Swarm service name
    tier: str  # the plan's service name; also its DNS alias on the overlay network
    image: str
    command: tuple[str, ...]  # replaces the image's entrypoint: shim, start gate, engine
    args: tuple[str, ...]  # the `vllm serve` arguments, as in the compose file
    env: tuple[tuple[str, str], ...]
    secrets: tuple[tuple[str, str], ...]  # container variable -> Swarm secret name
    published_port: int
    target_port: int
    network: str
    shm_bytes: int  # /dev/shm as tmpfs of this size; 0: none (the gateway)
    volumes: tuple[tuple[str, str], ...]  # named volume -> path in the container
    healthcheck: Healthcheck
    labels: tuple[tuple[str, str], ...]
    constraints: tuple[str, ...]
    start_after: tuple[str, ...]  # tiers (plan names) that must be healthy first
    secret_sources: tuple[tuple[str, str], ...] = ()  # Swarm secret name -> .env variable

    def config_hash(self) -> str:
        """Digest of everything that should recreate the service when it changes (secret
        names carry their contents' digest, so a new key changes it too)."""
        data = asdict(self)
        data.pop("labels")
        data.pop("secret_sources")  # follows from `secrets`
        # HF_TOKEN only matters for downloads: `up` with or without it recreates nothing.
        data["secrets"] = [pair for pair in data["secrets"] if pair[0] != "HF_TOKEN"]
        data["env"] = [
            (k, ",".join(p for p in v.split(",") if not p.startswith("HF_TOKEN=")))
            if k == SECRET_FILES_VAR
            else (k, v)
            for k, v in data["env"]
        ]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def network_name(plan: DeploymentPlan) -> str:
    return f"{plan.deployment}_swarm"


def service_name(plan: DeploymentPlan, tier: str) -> str:
    return f"{plan.deployment}-{tier}"


def secret_name(plan: DeploymentPlan, tier: str, purpose: str, value: str) -> str:
    """Swarm secrets cannot change: a new value gets a new name (a digest, not the value)."""
    digest = hashlib.sha256(f"{plan.deployment}\0{tier}\0{value}".encode()).hexdigest()[:12]
    name = f"{plan.deployment}-{tier}-{purpose}-{digest}"
    if len(name) > SECRET_NAME_MAX:  # a long deployment name: keep the digest, cut the rest
        name = f"{name[: SECRET_NAME_MAX - len(digest) - 1].rstrip('-_.')}-{digest}"
    return name


def refuse_unexpressible(plan: DeploymentPlan) -> None:
    """Raise TargetUnsupported for what Swarm cannot do that the plan asks for."""
    local = [f"{s.name} ({s.bind}:{s.port})" for s in plan.services if s.bind not in WILDCARD_BINDS]
    gateway = plan_gateway(plan)
    if gateway is not None and gateway.bind not in WILDCARD_BINDS:
        local.append(f"{GATEWAY_SERVICE} ({gateway.bind}:{gateway.port})")
    if local:
        raise TargetUnsupported(
            f"Swarm publishes a service's port on every interface of its node and cannot bind "
            f"one address; the plan binds {', '.join(local)}",
            hint="set `bind: 0.0.0.0` in the profile (`gateway: {bind: 0.0.0.0}` for the "
            "gateway; then put a firewall or a TLS proxy in front: every port still needs its "
            "key), or deploy with --target compose, which binds the address the profile names",
        )


def _engine_entrypoint(plan: DeploymentPlan) -> tuple[str, ...]:
    return STANDIN_ENTRYPOINT if plan.engine == Engine.STAND_IN else VLLM_ENTRYPOINT


def _labels(plan: DeploymentPlan, spec: ContainerSpec) -> tuple[tuple[str, str], ...]:
    labels = {k: v for k, v in spec.labels if k.startswith(LABEL_PREFIX)}
    labels.update(
        {
            LABEL_TARGET: "swarm",
            LABEL_DEPLOYMENT: plan.deployment,
            LABEL_TIER: spec.service,
            STACK_NAMESPACE: plan.deployment,
        }
    )
    return tuple(sorted(labels.items()))


def _secret_purpose(container_var: str, env_var: str, owner: str) -> str:
    if container_var == "HF_TOKEN":
        return "hf-token"
    if owner != GATEWAY_SERVICE:
        return "api-key"
    # The gateway holds several keys: each secret is named after its variable.
    return env_var.lower().removeprefix("qwen_deploy_").replace("_", "-")


def _secrets(
    plan: DeploymentPlan, spec: ContainerSpec, values: Mapping[str, str]
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """(container variable, secret name) pairs and (secret name, .env variable) pairs."""
    secrets, sources = [], []
    for container_var, env_var in spec.secret_env:
        value = values.get(env_var)
        if not value:
            continue  # HF_TOKEN not given, or a service without a key
        purpose = _secret_purpose(container_var, env_var, spec.service)
        name = secret_name(plan, spec.service, purpose, value)
        secrets.append((container_var, name))
        sources.append((name, env_var))
    return tuple(secrets), tuple(sources)


def _secret_env(secrets: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{var}={SECRETS_DIR}/{name}" for var, name in secrets)


def swarm_services(
    plan: DeploymentPlan,
    secret_values: Mapping[str, str],
    node_constraint: str,
    gateway_constraint: str | None = None,
) -> tuple[SwarmService, ...]:
    """One SwarmService per tier, in plan order, from the same ContainerSpecs compose uses,
    then the gateway's when the plan has one. `secret_values` maps .env variables (and
    HF_TOKEN) to their values; `node_constraint` places a one-box plan's tiers (a several-box
    plan's name their own nodes), `gateway_constraint` the gateway (default: the same)."""
    refuse_unexpressible(plan)
    services = []
    for tier, spec in zip(plan.services, tier_specs(plan, "swarm"), strict=True):
        secrets, sources = _secrets(plan, spec, secret_values)
        env = dict(spec.environment)
        # The node's NVIDIA runtime exposes exactly the plan's devices (what --gpus does).
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.device_ids)
        env[SECRET_FILES_VAR] = _secret_env(secrets)
        inner = spec.entrypoint or _engine_entrypoint(plan)  # the start gate keeps its order
        services.append(
            SwarmService(
                name=service_name(plan, tier.name),
                tier=tier.name,
                image=spec.image,
                command=("python3", "-c", SECRET_SHIM, *inner),
                args=spec.command,
                env=tuple(sorted(env.items())),
                secrets=secrets,
                published_port=spec.host_port,
                target_port=spec.container_port,
                network=network_name(plan),
                shm_bytes=sizing.shm_bytes(tier),
                volumes=spec.volumes,
                healthcheck=spec.healthcheck,
                labels=_labels(plan, spec),
                constraints=(hostname_constraint(tier.node) if tier.node else node_constraint,),
                start_after=tier.start_after,
                secret_sources=sources,
            )
        )
    gateway = plan_gateway(plan)
    if gateway is not None:
        services.append(
            gateway_service(plan, gateway, secret_values, gateway_constraint or node_constraint)
        )
    return tuple(services)


def gateway_service(
    plan: DeploymentPlan, gateway: GatewaySpec, secret_values: Mapping[str, str], constraint: str
) -> SwarmService:
    """The gateway as the compose file runs it (its ContainerSpec: config JSON in the
    environment, tiers at http://<tier>:8000 on the network), its keys as Swarm secrets."""
    spec = gateway_container_spec(plan, gateway, "swarm", images.image_tag(str(plan.engine)))
    secrets, sources = _secrets(plan, spec, secret_values)
    missing = [var for var, _ in spec.secret_env if not secret_values.get(var)]
    if missing:  # a gateway without its keys must not start (compose's `${VAR:?}`)
        raise ValueError(f"no secret for the gateway's {', '.join(missing)}")
    env = {**dict(spec.environment), SECRET_FILES_VAR: _secret_env(secrets)}
    return SwarmService(
        name=service_name(plan, GATEWAY_SERVICE),
        tier=GATEWAY_SERVICE,
        image=spec.image,
        command=("python3", "-c", SECRET_SHIM, *GATEWAY_ENTRYPOINT),
        args=spec.command,
        env=tuple(sorted(env.items())),
        secrets=secrets,
        published_port=spec.host_port,
        target_port=spec.container_port,
        network=network_name(plan),
        shm_bytes=0,
        volumes=(),
        healthcheck=spec.healthcheck,
        labels=_labels(plan, spec),
        constraints=(constraint,),
        start_after=(),  # `swarm.up` starts it once every tier is ready
        secret_sources=sources,
    )


def secret_payloads(
    services: tuple[SwarmService, ...], values: Mapping[str, str]
) -> dict[str, tuple[str, str]]:
    """Swarm secret name -> (its service's tier, its value), for the secrets to create."""
    return {name: (s.tier, values[source]) for s in services for name, source in s.secret_sources}

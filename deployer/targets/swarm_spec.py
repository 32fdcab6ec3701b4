"""How a plan runs as Docker Swarm services, and whether a node can run it. Pure: the Docker
calls are in `swarm.py`.

Swarm can reserve a *count* of generic resources but cannot pin a GPU or share one, and it has
no start order. So every tier is pinned to the node that holds the plan's GPUs (a placement
constraint) and to the plan's devices (NVIDIA_VISIBLE_DEVICES, which the node's NVIDIA runtime
reads), qwen-deploy's own per-GPU plan stays the truth, and `swarm.py` creates tiers that share
a GPU one after another. Services reserve no generic resources: two co-tenants cannot both
reserve one GPU (the second would never be scheduled), and a reservation puts Swarm's own pick
of GPU UUIDs into the task, which the runtime's `swarm-resource` setting would expose instead of
the plan's. Keys are Swarm secrets, read into the environment by a small shim before the
engine starts (vLLM reads VLLM_API_KEY, not a file).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from deployer.errors import TargetUnsupported
from deployer.plan import WILDCARD_BINDS, DeploymentPlan, Engine
from deployer.spec import ContainerSpec, Healthcheck, container_specs
from deployer.targets import sizing
from deployer.vllm_pin import STANDIN_ENTRYPOINT, VLLM_ENTRYPOINT

GPU_KIND = "NVIDIA-GPU"  # the generic-resource kind NVIDIA's Swarm guides advertise
LABEL_TARGET = "io.qwen-deploy.target"
LABEL_DEPLOYMENT = "io.qwen-deploy.deployment"
LABEL_TIER = "io.qwen-deploy.tier"
LABEL_SWARM_HASH = "io.qwen-deploy.swarm-config-hash"
STACK_NAMESPACE = "com.docker.stack.namespace"  # `docker stack ps NAME` lists the tasks
SECRETS_DIR = "/run/secrets"
SECRET_FILES_VAR = "QWEN_DEPLOY_SECRET_FILES"  # VAR=path pairs the shim reads
NVIDIA_RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"

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
    """One tier as a Swarm service."""

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
    shm_bytes: int
    volumes: tuple[tuple[str, str], ...]  # named volume -> path in the container
    healthcheck: Healthcheck
    labels: tuple[tuple[str, str], ...]
    constraints: tuple[str, ...]
    start_after: tuple[str, ...]  # tiers (plan names) that must be healthy first

    def config_hash(self) -> str:
        """Digest of everything that should recreate the service when it changes (secret
        names carry their contents' digest, so a new key changes it too)."""
        data = asdict(self)
        data.pop("labels")
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
    return f"{plan.deployment}-{tier}-{purpose}-{digest}"


def refuse_unexpressible(plan: DeploymentPlan) -> None:
    """Raise TargetUnsupported for what Swarm cannot do that the plan asks for."""
    if getattr(plan, "gateway", None) is not None:
        raise TargetUnsupported(
            "the plan has a gateway, which the Swarm target does not deploy yet",
            hint="deploy the tiers without the profile's gateway section and run `qwen-deploy "
            "gateway serve` on the node, or deploy with --target compose",
        )
    local = [s for s in plan.services if s.bind not in WILDCARD_BINDS]
    if local:
        names = ", ".join(f"{s.name} ({s.bind}:{s.port})" for s in local)
        raise TargetUnsupported(
            f"Swarm publishes a service's port on every interface of its node and cannot bind "
            f"one address; the plan binds {names}",
            hint="set `bind: 0.0.0.0` in the profile (then put a firewall or a TLS proxy in "
            "front: every port still needs its key), or deploy with --target compose, which "
            "binds the address the profile names",
        )


def _engine_entrypoint(plan: DeploymentPlan) -> tuple[str, ...]:
    return STANDIN_ENTRYPOINT if plan.engine == Engine.STAND_IN else VLLM_ENTRYPOINT


def swarm_services(
    plan: DeploymentPlan,
    secret_values: Mapping[str, str],
    node_constraint: str,
) -> tuple[SwarmService, ...]:
    """One SwarmService per tier, in plan order, from the same ContainerSpecs compose uses.
    `secret_values` maps .env variables (and HF_TOKEN) to their values."""
    refuse_unexpressible(plan)
    services = []
    for tier, spec in zip(plan.services, container_specs(plan, "swarm"), strict=True):
        secrets = _secrets(plan, spec, secret_values)
        env = dict(spec.environment)
        # The node's NVIDIA runtime exposes exactly the plan's devices (what --gpus does).
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(spec.device_ids)
        env[SECRET_FILES_VAR] = ",".join(f"{var}={SECRETS_DIR}/{name}" for var, name in secrets)
        inner = spec.entrypoint or _engine_entrypoint(plan)  # the start gate keeps its order
        node = getattr(tier, "node", None)  # several-box plans name each tier's node
        constraint = f"node.hostname=={node}" if node else node_constraint
        labels = {k: v for k, v in spec.labels if k.startswith("io.qwen-deploy.")}
        labels.update(
            {
                LABEL_TARGET: "swarm",
                LABEL_DEPLOYMENT: plan.deployment,
                LABEL_TIER: tier.name,
                STACK_NAMESPACE: plan.deployment,
            }
        )
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
                labels=tuple(sorted(labels.items())),
                constraints=(constraint,),
                start_after=tier.start_after,
            )
        )
    return tuple(services)


def _secrets(
    plan: DeploymentPlan, spec: ContainerSpec, values: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    out = []
    for container_var, env_var in spec.secret_env:
        value = values.get(env_var)
        if not value:
            continue  # HF_TOKEN not given, or a service without a key
        purpose = "hf-token" if container_var == "HF_TOKEN" else "api-key"
        out.append((container_var, secret_name(plan, spec.service, purpose, value)))
    return tuple(out)


# --- what the node needs ------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCheck:
    """What a node lacks for this plan (problems) and what is worth knowing (notes)."""

    problems: tuple[str, ...]
    notes: tuple[str, ...]


def advertised_gpus(node_attrs: Mapping[str, Any]) -> set[str]:
    """GPU UUIDs a node advertises as named generic resources of kind NVIDIA-GPU."""
    resources = node_attrs.get("Description", {}).get("Resources", {}) or {}
    found = set()
    for item in resources.get("GenericResources") or []:
        named = item.get("NamedResourceSpec") or {}
        if named.get("Kind") == GPU_KIND:
            found.add(str(named.get("Value")))
    return found


def check_node(
    plan: DeploymentPlan,
    info: Mapping[str, Any],
    node_attrs: Mapping[str, Any],
    runtime_config: str | None,
    skip_gpu_check: bool,
) -> NodeCheck:
    """Swarm state, the node's GPU generic resources and its NVIDIA runtime, from `docker
    info`, `docker node inspect` and the runtime's config.toml (None: not readable here)."""
    problems: list[str] = []
    notes: list[str] = []
    swarm = info.get("Swarm", {}) or {}
    if swarm.get("LocalNodeState") != "active":
        problems.append("this engine is not part of a swarm (`docker swarm init` makes it one)")
    elif not swarm.get("ControlAvailable"):
        problems.append("this engine is a swarm worker; run qwen-deploy against a manager")
    if skip_gpu_check:
        notes.append("GPU checks skipped (--skip-gpu-check): the stand-in uses no GPU")
        return NodeCheck(tuple(problems), tuple(notes))
    wanted = {g.uuid: g.index for g in plan.gpus}
    missing = sorted(set(wanted) - advertised_gpus(node_attrs))
    if any(getattr(s, "node", None) for s in plan.services):
        missing = []  # each tier is pinned to its node by hostname; one node is inspected here
        notes.append("several-box plan: the GPU generic resources of each node are not checked")
    if missing:
        entries = ", ".join(f'"{GPU_KIND}={uuid}"' for uuid in sorted(wanted))
        problems.append(
            f"the node does not advertise GPU(s) {', '.join(str(wanted[u]) for u in missing)} "
            f"as generic resources; add to /etc/docker/daemon.json: "
            f'"node-generic-resources": [{entries}] and restart dockerd'
        )
    if info.get("DefaultRuntime") != "nvidia":
        problems.append(
            f"the node's default runtime is {info.get('DefaultRuntime')!r}, not 'nvidia': Swarm "
            'services cannot ask for GPUs themselves; set "default-runtime": "nvidia" in '
            "/etc/docker/daemon.json (NVIDIA Container Toolkit) and restart dockerd"
        )
    if runtime_config is None:
        notes.append(f"{NVIDIA_RUNTIME_CONFIG} is not readable here: swarm-resource not checked")
    elif _swarm_resource(runtime_config):
        notes.append(
            "swarm-resource is set in the NVIDIA runtime: services that reserve NVIDIA-GPU get "
            "the GPUs Swarm picks; qwen-deploy's tiers reserve none and get the plan's, so keep "
            "other GPU services off this node"
        )
    else:
        notes.append(
            "swarm-resource is not set in the NVIDIA runtime: fine for qwen-deploy (it pins "
            "devices itself); other services reserving NVIDIA-GPU would see every GPU"
        )
    return NodeCheck(tuple(problems), tuple(notes))


def _swarm_resource(config_toml: str) -> bool:
    for line in config_toml.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "swarm-resource" and value.strip().strip('"'):
            return True
    return False

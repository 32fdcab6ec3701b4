"""Which swarm node runs which tier, and what each node lacks for the plan, from `docker info`
and `docker node inspect` documents. Pure: the Docker calls are in `swarm.py`.

A one-box plan runs on the node that advertises its GPUs. A several-box plan names each tier's
node; the Swarm target pins the tier there with the placement constraint `node.hostname==NODE`
(Swarm compares it, ignoring case, with the host name each node reports), so a plan's node is
matched to the swarm's nodes the same way, and a name that matches none (or two) is refused
before anything is created. Each node is then checked for its own GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deployer.errors import DeployFailed
from deployer.gpus import Gpu
from deployer.plan import DeploymentPlan

GPU_KIND = "NVIDIA-GPU"  # the generic-resource kind NVIDIA's Swarm guides advertise
NVIDIA_RUNTIME_CONFIG = "/etc/nvidia-container-runtime/config.toml"
NOT_IN_SWARM_HINT = (
    "join it to the swarm (`docker swarm join-token worker` on a manager prints the command), "
    "or plan again naming each --gpus-file NODE=FILE after a HOSTNAME that `docker node ls` "
    "lists; nothing was changed"
)


@dataclass(frozen=True)
class NodeCheck:
    """What the nodes lack for this plan (problems) and what is worth knowing (notes)."""

    problems: tuple[str, ...]
    notes: tuple[str, ...]


def hostname_constraint(node: str) -> str:
    return f"node.hostname=={node}"


def node_hostname(node_attrs: Mapping[str, Any]) -> str:
    return str((node_attrs.get("Description") or {}).get("Hostname") or "")


def advertised_gpus(node_attrs: Mapping[str, Any]) -> set[str]:
    """GPU UUIDs a node advertises as named generic resources of kind NVIDIA-GPU."""
    resources = (node_attrs.get("Description") or {}).get("Resources") or {}
    found = set()
    for item in resources.get("GenericResources") or []:
        named = item.get("NamedResourceSpec") or {}
        if named.get("Kind") == GPU_KIND:
            found.add(str(named.get("Value")))
    return found


def match_nodes(
    plan: DeploymentPlan, swarm_nodes: Sequence[Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    """Each node of a several-box plan -> the swarm node with that host name. Raises
    DeployFailed for a node the swarm does not have, or has twice (the constraint would
    match both)."""
    by_host: dict[str, list[Mapping[str, Any]]] = {}
    for attrs in swarm_nodes:
        by_host.setdefault(node_hostname(attrs).lower(), []).append(attrs)
    matched: dict[str, Mapping[str, Any]] = {}
    for box in plan.nodes:
        tiers = " and ".join(s.name for s in plan.services if s.node == box.name)
        found = by_host.get(box.name.lower(), [])
        if not found:
            known = ", ".join(sorted(node_hostname(a) for a in swarm_nodes)) or "none"
            raise DeployFailed(
                f"the plan places {tiers} on node {box.name}, which is not in this swarm "
                f"(its nodes: {known})",
                hint=NOT_IN_SWARM_HINT,
            )
        if len(found) > 1:
            ids = ", ".join(sorted(str(a.get("ID", "?"))[:12] for a in found))
            raise DeployFailed(
                f"{len(found)} nodes of this swarm have the host name {box.name} ({ids}); "
                f"{hostname_constraint(box.name)} would place {tiers} on any of them",
                hint="remove the stale node (`docker node rm`) or give the hosts distinct names; "
                "nothing was changed",
            )
        matched[box.name] = found[0]
    return matched


def swarm_problems(info: Mapping[str, Any]) -> list[str]:
    swarm = info.get("Swarm", {}) or {}
    if swarm.get("LocalNodeState") != "active":
        return ["this engine is not part of a swarm (`docker swarm init` makes it one)"]
    if not swarm.get("ControlAvailable"):
        return ["this engine is a swarm worker; run qwen-deploy against a manager"]
    return []


def _gpu_problem(where: str, gpus: Sequence[Gpu], node_attrs: Mapping[str, Any]) -> list[str]:
    wanted = {g.uuid: g.index for g in gpus}
    missing = sorted(set(wanted) - advertised_gpus(node_attrs), key=lambda u: wanted[u])
    if not missing:
        return []
    entries = ", ".join(f'"{GPU_KIND}={uuid}"' for uuid in sorted(wanted))
    return [
        f"{where} does not advertise GPU(s) {', '.join(str(wanted[u]) for u in missing)} "
        f"as generic resources; add to its /etc/docker/daemon.json: "
        f'"node-generic-resources": [{entries}] and restart dockerd'
    ]


def _runtime_problem(where: str, info: Mapping[str, Any]) -> list[str]:
    if info.get("DefaultRuntime") == "nvidia":
        return []
    return [
        f"{where}'s default runtime is {info.get('DefaultRuntime')!r}, not 'nvidia': Swarm "
        'services cannot ask for GPUs themselves; set "default-runtime": "nvidia" in its '
        "/etc/docker/daemon.json (NVIDIA Container Toolkit) and restart dockerd"
    ]


def _availability_problem(name: str, node_attrs: Mapping[str, Any]) -> list[str]:
    state = str((node_attrs.get("Status") or {}).get("State", "unknown"))
    availability = str((node_attrs.get("Spec") or {}).get("Availability", "active"))
    if state != "ready":
        return [f"node {name} is {state}, not ready (`docker node ls` shows why)"]
    if availability != "active":
        return [
            f"node {name} is {availability}: Swarm places no task there "
            f"(`docker node update --availability active {name}`)"
        ]
    return []


def _runtime_notes(runtime_config: str | None) -> list[str]:
    if runtime_config is None:
        return [f"{NVIDIA_RUNTIME_CONFIG} is not readable here: swarm-resource not checked"]
    if _swarm_resource(runtime_config):
        return [
            "swarm-resource is set in the NVIDIA runtime: services that reserve NVIDIA-GPU get "
            "the GPUs Swarm picks; qwen-deploy's tiers reserve none and get the plan's, so keep "
            "other GPU services off this node"
        ]
    return [
        "swarm-resource is not set in the NVIDIA runtime: fine for qwen-deploy (it pins "
        "devices itself); other services reserving NVIDIA-GPU would see every GPU"
    ]


def check_node(
    plan: DeploymentPlan,
    info: Mapping[str, Any],
    node_attrs: Mapping[str, Any],
    runtime_config: str | None,
    skip_gpu_check: bool,
) -> NodeCheck:
    """A one-box plan: swarm state, the node's GPU generic resources and its NVIDIA runtime,
    from `docker info`, `docker node inspect` and the runtime's config.toml (None: not
    readable here)."""
    problems = swarm_problems(info)
    if skip_gpu_check:
        notes = ("GPU checks skipped (--skip-gpu-check): the stand-in uses no GPU",)
        return NodeCheck(tuple(problems), notes)
    problems += _gpu_problem("the node", plan.gpus, node_attrs)
    problems += _runtime_problem("the node", info)
    return NodeCheck(tuple(problems), tuple(_runtime_notes(runtime_config)))


def check_nodes(
    plan: DeploymentPlan,
    info: Mapping[str, Any],
    matched: Mapping[str, Mapping[str, Any]],
    runtime_config: str | None,
    skip_gpu_check: bool,
) -> NodeCheck:
    """A several-box plan: swarm state, then per node (as `match_nodes` found them) that Swarm
    can place tasks there and that it advertises its own planned GPUs. The default runtime
    and config.toml can be read only for the node this engine is; other nodes get a note."""
    problems = swarm_problems(info)
    notes: list[str] = []
    local_id = (info.get("Swarm") or {}).get("NodeID")
    for box in plan.nodes:
        attrs = matched[box.name]
        problems += _availability_problem(box.name, attrs)
        if skip_gpu_check:
            continue
        problems += _gpu_problem(f"node {box.name}", box.gpus, attrs)
        if attrs.get("ID") == local_id:
            problems += _runtime_problem(f"node {box.name}", info)
            notes += [f"node {box.name}: {n}" for n in _runtime_notes(runtime_config)]
        else:
            notes.append(
                f"node {box.name}: its default runtime is not visible from this manager; it "
                'must be "nvidia" (check `docker info` there)'
            )
    if skip_gpu_check:
        notes.append("GPU checks skipped (--skip-gpu-check): the stand-in uses no GPU")
    return NodeCheck(tuple(problems), tuple(notes))


def _swarm_resource(config_toml: str) -> bool:
    for line in config_toml.splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "swarm-resource" and value.strip().strip('"'):
            return True
    return False

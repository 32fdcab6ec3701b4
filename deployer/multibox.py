"""Plans across several boxes: one GPU inventory per node, the tiers placed on nodes with the
same memory model as on one box. Tensor parallelism never spans nodes, services that share a
GPU in the profile stay together on one node, and each node is planned by `planner.plan`. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from deployer.catalog import Catalog
from deployer.errors import PlanError, ProfileError
from deployer.gpus import GpuInventory
from deployer.plan import DeploymentPlan, NodePlan
from deployer.planner import PlanOptions, plan
from deployer.profiles import Profile, ServiceSpec

NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")  # a host name label


def check_node_name(name: str, where: str) -> str:
    if not NODE_NAME.match(name):
        raise PlanError(
            f"{where}: node name {name!r} is not a host name (letters, digits, '.', '_', '-')",
            hint="name each --gpus-file NODE=FILE after the node, as Kubernetes and Swarm know it",
        )
    return name


def _groups(profile: Profile) -> list[list[ServiceSpec]]:
    """Services that must share a node: those whose explicit GPUs overlap (co-tenants)."""
    groups: list[list[ServiceSpec]] = []
    for spec in profile.services:
        joined = [
            g for g in groups if spec.gpus and any(set(spec.gpus) & set(o.gpus or ()) for o in g)
        ]
        merged = [spec] + [s for g in joined for s in g]
        groups = [g for g in groups if g not in joined] + [merged]
    order = {s.name: i for i, s in enumerate(profile.services)}
    for group in groups:
        group.sort(key=lambda s: order[s.name])
    return sorted(groups, key=lambda g: order[g[0].name])


def _clashes(placed: list[ServiceSpec], group: list[ServiceSpec]) -> bool:
    """Two groups with explicit GPUs of the same index on one node would become co-tenants
    the profile did not ask for."""
    taken = {i for s in placed for i in (s.gpus or ())}
    return any(i in taken for s in group for i in (s.gpus or ()))


def _sub_profile(profile: Profile, specs: list[ServiceSpec]) -> Profile:
    names = {s.name for s in specs}
    return replace(profile, services=tuple(s for s in profile.services if s.name in names))


def _score(result: DeploymentPlan, inventory: GpuInventory) -> tuple[int, int, int]:
    """Prefer the node left with the most untouched GPUs, then the fewest services on its
    busiest GPU, then the most free memory on the untouched ones."""
    used = {i for s in result.services for i in s.gpus}
    idle = [g for g in inventory.gpus if g.index not in used and not g.mig_enabled]
    busiest = max((len(result.services_on(i)) for i in used), default=0)
    return len(idle), -busiest, sum(g.free_bytes for g in idle)


def plan_boxes(
    inventories: Mapping[str, GpuInventory],
    profile: Profile,
    catalog: Catalog,
    options: PlanOptions | None = None,
) -> DeploymentPlan:
    """Place the profile's services on the named nodes and plan each node."""
    options = options or PlanOptions()
    if not inventories:
        raise PlanError("no GPU inventory given")
    for name in inventories:
        check_node_name(name, "--gpus-file")
    assigned: dict[str, list[ServiceSpec]] = {name: [] for name in inventories}
    for group in _groups(profile):
        names = " and ".join(s.name for s in group)
        best: tuple[tuple[int, int, int], str] | None = None
        why: list[str] = []
        for node, inventory in inventories.items():
            if _clashes(assigned[node], group):
                wanted = sorted({i for s in group for i in s.gpus or ()})
                why.append(f"{node}: GPUs {wanted} are another service's there")
                continue
            try:
                trial = plan(
                    inventory, _sub_profile(profile, assigned[node] + group), catalog, options
                )
            except (PlanError, ProfileError) as exc:
                why.append(f"{node}: {exc.message}")
                continue
            score = _score(trial, inventory)
            if best is None or score > best[0]:
                best = (score, node)
        if best is None:
            raise PlanError(
                f"{names} fit on no node (tensor parallelism stays within one node): "
                + "; ".join(why),
                hint="add a node with --gpus-file NODE=FILE, or shrink the service",
            )
        assigned[best[1]].extend(group)
    return _merge(inventories, profile, catalog, options, assigned)


def _merge(
    inventories: Mapping[str, GpuInventory],
    profile: Profile,
    catalog: Catalog,
    options: PlanOptions,
    assigned: dict[str, list[ServiceSpec]],
) -> DeploymentPlan:
    per_node = {
        node: plan(inventories[node], _sub_profile(profile, specs), catalog, options)
        for node, specs in assigned.items()
        if specs
    }
    services = {s.name: replace(s, node=node) for node, p in per_node.items() for s in p.services}
    waves: list[list[str]] = []
    for p in per_node.values():
        for level, wave in enumerate(p.start_waves):
            if len(waves) <= level:
                waves.append([])
            waves[level].extend(wave)
    order = [s.name for s in profile.services]
    first = next(iter(per_node.values()))
    return DeploymentPlan(
        deployment=first.deployment,
        profile=profile.name,
        profile_source=profile.source,
        engine=first.engine,
        image=first.image,
        vllm_version=first.vllm_version,
        inventory_source=", ".join(f"{n}={inventories[n].source}" for n in per_node),
        gpus=(),
        services=tuple(services[name] for name in order),
        start_waves=tuple(tuple(sorted(w, key=order.index)) for w in waves),
        warnings=tuple(f"node {n}: {w}" for n, p in per_node.items() for w in p.warnings),
        nodes=tuple(NodePlan(n, inventories[n].source, p.gpus) for n, p in per_node.items()),
        gateway=profile.gateway,
    )

"""The tiers' ContainerSpecs for an orchestrator, for plans over one box or several. Pure.

`spec.container_specs` describes the stand-in's GPUs from `plan.gpus`, which a several-box plan
leaves empty (each node has its own GPUs, in `plan.nodes`): here each tier's spec is made from
the plan as its own node sees it, so a stand-in's memory ledger has that node's GPUs."""

from __future__ import annotations

from dataclasses import replace

from deployer.plan import DeploymentPlan
from deployer.spec import ContainerSpec, container_specs


def tier_specs(plan: DeploymentPlan, deployment_dir: str) -> tuple[ContainerSpec, ...]:
    """One ContainerSpec per tier, in plan order."""
    if not plan.nodes:
        return container_specs(plan, deployment_dir)
    per_node = {
        box.name: container_specs(replace(plan, gpus=box.gpus, nodes=()), deployment_dir)
        for box in plan.nodes
    }
    return tuple(
        per_node[service.node][position] if service.node in per_node else spec
        for position, (service, spec) in enumerate(
            zip(plan.services, container_specs(plan, deployment_dir), strict=True)
        )
    )

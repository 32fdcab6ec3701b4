"""Checks on rendered Kubernetes manifests that no schema validator makes: the GPUs asked for
fit the inventory, tiers sharing a GPU ask together for no more than the plan allows, no key
is written into a manifest, and every start-up probe waits at least the predicted load time.
Pure; each returns the problems found (empty when all is well)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from deployer.plan import DeploymentPlan
from deployer.planner import gpu_spare_bytes
from deployer.targets import kubernetes_gpu as gpu
from deployer.targets import sizing

COMPONENT_LABEL = "app.kubernetes.io/component"


def _deployments(manifests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == "Deployment"]


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def _claim_count(obj: dict[str, Any]) -> int:
    spec = obj["spec"]["spec"] if obj["kind"] == "ResourceClaimTemplate" else obj["spec"]
    return sum(int(r["exactly"]["count"]) for r in spec["devices"]["requests"])


def requested_gpus(manifests: Iterable[dict[str, Any]]) -> int:
    """Physical GPUs the manifests take on their node: device-plugin limits, each pod's own
    claim templates, and every shared claim once however many pods name it."""
    manifests = list(manifests)
    claims = {
        (m["kind"], m["metadata"]["name"]): _claim_count(m)
        for m in manifests
        if m["kind"] in ("ResourceClaim", "ResourceClaimTemplate")
    }
    total = 0
    shared: set[str] = set()
    for deployment in _deployments(manifests):
        pod = _pod(deployment)
        replicas = int(deployment["spec"].get("replicas", 1))
        for container in pod["containers"]:
            limit = container.get("resources", {}).get("limits", {}).get(gpu.GPU_RESOURCE, 0)
            total += int(limit) * replicas
        for claim in pod.get("resourceClaims", []):
            if "resourceClaimTemplateName" in claim:
                name = claim["resourceClaimTemplateName"]
                total += claims[("ResourceClaimTemplate", name)] * replicas
            else:
                shared.add(claim["resourceClaimName"])
    return total + sum(claims[("ResourceClaim", name)] for name in shared)


def gpu_total_problems(manifests: Iterable[dict[str, Any]], gpus_on_node: int) -> list[str]:
    asked = requested_gpus(manifests)
    if asked > gpus_on_node:
        return [f"the manifests ask for {asked} GPUs; the node has {gpus_on_node}"]
    return []


def shared_gpu_problems(
    plan: DeploymentPlan, manifests: Iterable[dict[str, Any]], claim_gpu: Mapping[str, int]
) -> list[str]:
    """Every tier runs with the plan's fraction; per shared claim, the tiers naming it are the
    plan's tenants of that GPU and together ask for no more than the planner's own room rule
    allows (the fractions are read back from the manifests, not from the plan)."""
    fractions: dict[str, float] = {}
    by_claim: dict[str, list[str]] = {}
    problems = []
    for deployment in _deployments(manifests):
        tier = deployment["metadata"]["labels"][COMPONENT_LABEL]
        args = _pod(deployment)["containers"][0]["args"]
        fractions[tier] = float(_flag(args, "--gpu-memory-utilization") or "nan")
        planned = plan.service(tier).gpu_memory_utilization
        if not math.isclose(fractions[tier], planned):
            problems.append(
                f"{tier}: --gpu-memory-utilization {fractions[tier]:g}, the plan says {planned:g}"
            )
        for claim in _pod(deployment).get("resourceClaims", []):
            if "resourceClaimName" in claim:
                by_claim.setdefault(claim["resourceClaimName"], []).append(tier)
    as_rendered = replace(
        plan,
        services=tuple(
            replace(s, gpu_memory_utilization=fractions.get(s.name, s.gpu_memory_utilization))
            for s in plan.services
        ),
    )
    for name, tenants in sorted(by_claim.items()):
        index = claim_gpu[name]
        expected = sorted(s.name for s in plan.services_on(index))
        if sorted(tenants) != expected:
            problems.append(
                f"claim {name} (GPU {index}) is used by {sorted(tenants)}, the plan has {expected}"
            )
        spare = gpu_spare_bytes(as_rendered, index)
        if spare < 0:
            problems.append(
                f"claim {name} (GPU {index}): its tiers ask {-spare} bytes more than it has"
            )
    return problems


def secret_problems(files: Mapping[str, str], secrets: Iterable[str]) -> list[str]:
    """A key or token literal in any manifest file (secrets.env is not one)."""
    return [
        f"{name} contains a secret ({value[:3]}…)"
        for name, text in sorted(files.items())
        for value in secrets
        if value and value in text
    ]


def probe_problems(plan: DeploymentPlan, manifests: Iterable[dict[str, Any]]) -> list[str]:
    """Every tier's start-up probe waits at least the start-up time predicted for it."""
    problems = []
    for deployment in _deployments(manifests):
        tier = deployment["metadata"]["labels"][COMPONENT_LABEL]
        probe = _pod(deployment)["containers"][0]["startupProbe"]
        waits = (
            probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
        )
        predicted = sizing.startup_budget(plan.service(tier)).predicted_s
        if waits < predicted:
            problems.append(
                f"{tier}: the start-up probe gives up after {waits} s, {predicted} s predicted"
            )
    return problems

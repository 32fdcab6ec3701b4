"""Checks on rendered Kubernetes manifests that no schema validator makes: the GPUs asked for
fit the inventory, tiers sharing a GPU ask together for no more than the plan allows, no key
is written into a manifest, and every start-up probe waits at least the predicted load time.
Pure; each returns the problems found (empty when all is well)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from deployer.gateway.spec import GATEWAY_SERVICE as GATEWAY
from deployer.memory_model import requested_bytes
from deployer.plan import DeploymentPlan
from deployer.planner import usable_room_bytes
from deployer.targets import kubernetes_gpu as gpu
from deployer.targets import sizing

COMPONENT_LABEL = "app.kubernetes.io/component"


def _deployments(manifests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == "Deployment"]


def _tier_deployments(manifests: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tiers' Deployments: not the gateway's (no GPU, no vLLM, no start-up probe)."""
    return [
        m for m in _deployments(manifests) if m["metadata"]["labels"][COMPONENT_LABEL] != GATEWAY
    ]


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def _claim_count(obj: dict[str, Any]) -> int:
    spec = obj["spec"]["spec"] if obj["kind"] == "ResourceClaimTemplate" else obj["spec"]
    return sum(int(r["exactly"]["count"]) for r in spec["devices"]["requests"])


def _node(deployment: dict[str, Any]) -> str | None:
    node = _pod(deployment).get("nodeSelector", {}).get("kubernetes.io/hostname")
    return str(node) if node else None


def requested_gpus(manifests: Iterable[dict[str, Any]]) -> dict[str | None, int]:
    """Physical GPUs the manifests take per node (None: not pinned to one): device-plugin
    limits, each pod's own claim templates, and every shared claim once however many pods
    name it."""
    manifests = list(manifests)
    claims = {
        (m["kind"], m["metadata"]["name"]): _claim_count(m)
        for m in manifests
        if m["kind"] in ("ResourceClaim", "ResourceClaimTemplate")
    }
    totals: dict[str | None, int] = {}
    shared: dict[str, str | None] = {}
    for deployment in _deployments(manifests):
        pod, node = _pod(deployment), _node(deployment)
        replicas = int(deployment["spec"].get("replicas", 1))
        count = 0
        for container in pod["containers"]:
            limit = container.get("resources", {}).get("limits", {}).get(gpu.GPU_RESOURCE, 0)
            count += int(limit) * replicas
        for claim in pod.get("resourceClaims", []):
            if "resourceClaimTemplateName" in claim:
                name = claim["resourceClaimTemplateName"]
                count += claims[("ResourceClaimTemplate", name)] * replicas
            else:
                shared[claim["resourceClaimName"]] = node
        totals[node] = totals.get(node, 0) + count
    for name, node in shared.items():
        totals[node] = totals.get(node, 0) + claims[("ResourceClaim", name)]
    return totals


def gpu_total_problems(
    manifests: Iterable[dict[str, Any]], gpus_per_node: Mapping[str | None, int]
) -> list[str]:
    """Each node is asked for no more GPUs than its inventory lists."""
    problems = []
    for node, asked in sorted(requested_gpus(manifests).items(), key=lambda i: str(i[0])):
        has = gpus_per_node.get(node, 0)
        if asked > has:
            where = f"node {node}" if node else "the node"
            problems.append(f"the manifests ask for {asked} GPUs; {where} has {has}")
    return problems


def shared_gpu_problems(
    plan: DeploymentPlan,
    manifests: Iterable[dict[str, Any]],
    claim_gpu: Mapping[str, gpu.GpuKey],
) -> list[str]:
    """Every tier runs with the plan's fraction; per shared claim, the tiers naming it are the
    plan's tenants of that GPU and together ask for no more than the planner's room rule
    allows (the fractions are read back from the manifests, not from the plan)."""
    fractions: dict[str, float] = {}
    by_claim: dict[str, list[str]] = {}
    problems = []
    for deployment in _tier_deployments(manifests):
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
    for name, users in sorted(by_claim.items()):
        key = claim_gpu[name]
        on_it = gpu.tenants(plan).get(key, ())
        expected = sorted(s.name for s in on_it)
        if sorted(users) != expected:
            problems.append(
                f"claim {name} (GPU {key[1]}) is used by {sorted(users)}, the plan has {expected}"
            )
        planned_gpu = gpu.planned_gpu(plan, key)
        if planned_gpu is None:
            problems.append(f"claim {name}: GPU {key[1]} is not in the plan")
            continue
        room = usable_room_bytes(
            planned_gpu, tensor_parallel_sizes=[s.tensor_parallel_size for s in on_it]
        )
        asked = sum(requested_bytes(planned_gpu, fractions[t]) for t in users)
        if asked > room:
            problems.append(
                f"claim {name} (GPU {key[1]}): its tiers ask {asked - room} bytes more than it has"
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
    for deployment in _tier_deployments(manifests):
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

"""How each tier's pod gets its GPUs on Kubernetes. Pure: plan in, manifest fragments out.

A plan whose tiers each own their GPUs uses the device plugin (`nvidia.com/gpu` limits) with
node affinity on GPU-feature-discovery labels derived from the plan's needs. A plan in which
tiers share a GPU cannot be said with the device plugin: time-slicing and MPS apply one method
to every GPU of a node and ignore per-GPU `devices` (NVIDIA/k8s-device-plugin README,
`api/config/v1/replicas.go`), so "GPUs 0-1 exclusive, GPU 2 shared by two tiers" would hand
the TP-2 tier replicas of one physical GPU. Such plans use Dynamic Resource Allocation
(resource.k8s.io/v1, stable in Kubernetes 1.35): one ResourceClaim per shared GPU, referenced by
every tier on it, and one ResourceClaimTemplate per tier for the GPUs it has alone. All tiers
of such a plan go through DRA: a device plugin and a DRA driver handing out the same GPUs would
book them twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployer.gpus import Gpu
from deployer.plan import DeploymentPlan, ServicePlan
from deployer.vllm_pin import QUANTIZATIONS

GpuKey = tuple[str | None, int]  # (node, index); the node is None in a one-box plan

GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's extended resource
DRA_DRIVER = "gpu.nvidia.com"  # NVIDIA's DRA driver (k8s-dra-driver-gpu); also its DeviceClass
# GPU-feature-discovery node labels (MiB, integers, product with spaces as '-').
GFD_MEMORY = "nvidia.com/gpu.memory"
GFD_MAJOR = "nvidia.com/gpu.compute.major"
GFD_MINOR = "nvidia.com/gpu.compute.minor"
GFD_PRODUCT = "nvidia.com/gpu.product"
CLAIM_NAME = "gpus"  # the pod-level name of a tier's exclusive claim
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class GpuNeed:
    """What a GPU must have for the plan to hold on it."""

    memory_mib: int  # at least the planned GPU's total: fractions are of the total
    capability: int  # major*10+minor, the quantization's minimum in the pinned vLLM
    product: str | None  # only when the user asks to pin the product

    def node_affinity(self) -> dict[str, Any]:
        """requiredDuringScheduling terms on GFD labels (terms are ORed, expressions ANDed)."""
        major, minor = divmod(self.capability, 10)
        memory = {"key": GFD_MEMORY, "operator": "Gt", "values": [str(self.memory_mib - 1)]}
        product = (
            [{"key": GFD_PRODUCT, "operator": "In", "values": [self.product.replace(" ", "-")]}]
            if self.product
            else []
        )
        terms = [
            [
                memory,
                {
                    "key": GFD_MAJOR,
                    "operator": "Gt",
                    "values": [str(major - 1 if minor == 0 else major)],
                },
            ]
        ]
        if minor:
            terms.append(
                [
                    memory,
                    {"key": GFD_MAJOR, "operator": "In", "values": [str(major)]},
                    {"key": GFD_MINOR, "operator": "Gt", "values": [str(minor - 1)]},
                ]
            )
        return {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": t + product} for t in terms]
                }
            }
        }

    def cel_selectors(self) -> list[dict[str, Any]]:
        """The same needs as CEL on the attributes NVIDIA's DRA driver publishes."""
        major, minor = divmod(self.capability, 10)
        exprs = [
            f'device.capacity["{DRA_DRIVER}"].memory.compareTo(quantity("{self.memory_mib}Mi"))'
            " >= 0",
            f'device.attributes["{DRA_DRIVER}"].cudaComputeCapability'
            f'.compareTo(semver("{major}.{minor}.0")) >= 0',
        ]
        if self.product:
            exprs.append(f'device.attributes["{DRA_DRIVER}"].productName == "{self.product}"')
        return [{"cel": {"expression": e}} for e in exprs]


@dataclass(frozen=True)
class GpuBinding:
    """The parts of one tier's pod that give it its GPUs."""

    limits: dict[str, int] = field(default_factory=dict)
    pod_claims: tuple[dict[str, str], ...] = ()
    container_claims: tuple[dict[str, str], ...] = ()
    affinity: dict[str, Any] | None = None


def node_of(service: ServicePlan) -> str | None:
    """The node a tier is planned on (several-box plans), None on one box."""
    node = getattr(service, "node", None)
    return str(node) if node else None


def tenants(plan: DeploymentPlan) -> dict[GpuKey, tuple[ServicePlan, ...]]:
    """Every planned GPU, by node and index, with the tiers on it in plan order."""
    found: dict[GpuKey, list[ServicePlan]] = {}
    for service in plan.services:
        for index in service.gpus:
            found.setdefault((node_of(service), index), []).append(service)
    return {key: tuple(services) for key, services in found.items()}


def shared(plan: DeploymentPlan) -> dict[GpuKey, tuple[ServicePlan, ...]]:
    """Only the GPUs several tiers share."""
    return {key: services for key, services in tenants(plan).items() if len(services) > 1}


def planned_gpu(plan: DeploymentPlan, key: GpuKey) -> Gpu | None:
    """The inventory's description of a planned GPU (of its node, in a several-box plan)."""
    node, index = key
    gpus = plan.gpus
    for box in getattr(plan, "nodes", ()) or ():
        if box.name == node:
            gpus = box.gpus
    return next((g for g in gpus if g.index == index), None)


def uses_dra(plan: DeploymentPlan) -> bool:
    """Whether this plan needs Dynamic Resource Allocation (some GPU has several tiers)."""
    return bool(shared(plan))


def need(
    plan: DeploymentPlan,
    services: tuple[ServicePlan, ...],
    keys: tuple[GpuKey, ...],
    pin_product: bool,
) -> GpuNeed:
    """The strictest need of these services on these planned GPUs."""
    gpus = [g for g in (planned_gpu(plan, k) for k in keys) if g is not None]
    return GpuNeed(
        memory_mib=min(g.memory_total_mib for g in gpus),
        capability=max(QUANTIZATIONS[s.quantization].min_capability for s in services),
        product=gpus[0].name if pin_product and len({g.name for g in gpus}) == 1 else None,
    )


def exclusive_gpus(plan: DeploymentPlan, service: ServicePlan) -> tuple[GpuKey, ...]:
    common = shared(plan)
    keys = tuple((node_of(service), i) for i in service.gpus)
    return tuple(k for k in keys if k not in common)


def binding(
    plan: DeploymentPlan,
    service: ServicePlan,
    shared_claim_name: dict[GpuKey, str],
    exclusive_template_name: str,
    pin_product: bool,
) -> GpuBinding:
    """Device-plugin limits and affinity, or DRA claims, for one tier."""
    keys = tuple((node_of(service), i) for i in service.gpus)
    if not uses_dra(plan):
        return GpuBinding(
            limits={GPU_RESOURCE: len(service.gpus)},
            affinity=need(plan, (service,), keys, pin_product).node_affinity(),
        )
    pod_claims: list[dict[str, str]] = []
    if exclusive_gpus(plan, service):
        pod_claims.append(
            {"name": CLAIM_NAME, "resourceClaimTemplateName": exclusive_template_name}
        )
    for key in keys:
        if key in shared_claim_name:
            pod_claims.append(
                {"name": f"gpu-{key[1]}", "resourceClaimName": shared_claim_name[key]}
            )
    return GpuBinding(
        pod_claims=tuple(pod_claims),
        container_claims=tuple({"name": c["name"]} for c in pod_claims),
    )


def _request(count: int, gpu_need: GpuNeed) -> dict[str, Any]:
    return {
        "name": "gpu",
        "exactly": {
            "deviceClassName": DRA_DRIVER,
            "allocationMode": "ExactCount",
            "count": count,
            "selectors": gpu_need.cel_selectors(),
        },
    }


def shared_claim(
    plan: DeploymentPlan, key: GpuKey, name: str, labels: dict[str, str], pin_product: bool
) -> dict[str, Any]:
    """One ResourceClaim for a GPU several tiers share: every pod that names it gets the same
    device (DRA allocates a claim once; its consumers share it)."""
    on_it = tenants(plan)[key]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "qwen-deploy/tenants": ",".join(s.name for s in on_it),
                "qwen-deploy/gpu-memory-utilization": ",".join(
                    f"{s.name}={s.gpu_memory_utilization:g}" for s in on_it
                ),
            },
        },
        "spec": {"devices": {"requests": [_request(1, need(plan, on_it, (key,), pin_product))]}},
    }


def exclusive_template(
    plan: DeploymentPlan, service: ServicePlan, name: str, labels: dict[str, str], pin_product: bool
) -> dict[str, Any]:
    """A ResourceClaimTemplate for the GPUs a tier has alone: each pod gets its own claim,
    released with the pod (Recreate frees it before the new pod asks)."""
    gpus = exclusive_gpus(plan, service)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "metadata": {"labels": labels},
            "spec": {
                "devices": {
                    "requests": [_request(len(gpus), need(plan, (service,), gpus, pin_product))]
                }
            },
        },
    }


def cluster_requirements(plan: DeploymentPlan) -> tuple[str, ...]:
    """What the cluster must run for these manifests to schedule."""
    if not uses_dra(plan):
        return (
            "the NVIDIA device plugin (nvidia.com/gpu) and GPU-feature-discovery node labels "
            f"({GFD_MEMORY}, {GFD_MAJOR}, {GFD_MINOR}), e.g. from the NVIDIA GPU Operator",
        )
    on = ", ".join(
        f"GPU {index}{f' of {node}' if node else ''} ({' and '.join(s.name for s in on_it)})"
        for (node, index), on_it in shared(plan).items()
    )
    return (
        f"tiers share {on}: the manifests use Dynamic Resource Allocation, which needs "
        "Kubernetes 1.34 or newer (resource.k8s.io/v1; stable in 1.35)",
        f"NVIDIA's DRA driver for GPUs (DeviceClass {DRA_DRIVER}) on the GPU nodes",
        "the device plugin must not hand out the same GPUs (disable its nvidia.com/gpu "
        "resource on those nodes), or both will book them",
        "time-slicing or MPS in the device plugin cannot express this plan: they apply one "
        "sharing method to every GPU of a node and ignore per-GPU device lists",
    )

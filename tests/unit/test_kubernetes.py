"""Kubernetes manifests: every shipped profile on every GPU box it fits validates against the
Kubernetes 1.35 schemas (strict: unknown fields are errors), and says what the plan says."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deployer.catalog import Catalog
from deployer.errors import DeployError
from deployer.plan import DeploymentPlan
from deployer.planner import PlanOptions, plan
from deployer.profiles import PROFILES_DIR, load_all_profiles, load_profile
from deployer.spec import START_GATE, vllm_args
from deployer.targets import kubernetes_checks as checks
from deployer.targets import kubernetes_gpu as gpu
from deployer.targets import sizing
from deployer.targets.kubernetes import (
    KUBERNETES_VERSION,
    KUSTOMIZATION,
    KubernetesOptions,
    KubernetesRender,
    render_kubernetes,
)
from tests.helpers import GPU_FILES, inventory

BOXES = sorted(p.stem for p in GPU_FILES.glob("*.json"))
PROFILES = sorted(p.name for p in load_all_profiles(PROFILES_DIR))


def keys_for(result: DeploymentPlan) -> dict[str, str]:
    """The tiers' keys, and the gateway's clients' keys when the plan has a gateway."""
    keys = {s.api_key_env: f"sk-{s.name}-0123456789abcdef" for s in result.services}
    for key in result.gateway.keys if result.gateway else ():
        keys[key.env_var] = f"gw-{key.name}-0123456789abcdef"
    return keys


def _combos(catalog: Catalog) -> tuple[tuple[str, str, str], ...]:
    """(profile, box, engine) for every shipped profile on every GPU fixture where it fits."""
    found = []
    for name in PROFILES:
        for box in BOXES:
            try:
                plan(inventory(box), load_profile(name), catalog)
            except DeployError:
                continue  # does not fit that box: not a plan to render
            found += [(name, box, "vllm"), (name, box, "stand-in")]
    return tuple(found)


def _render(
    catalog: Catalog, profile: str, box: str, engine: str = "vllm", **options: Any
) -> tuple[DeploymentPlan, KubernetesRender]:
    result = plan(inventory(box), load_profile(profile), catalog, PlanOptions(engine=engine))
    return result, render_kubernetes(result, keys_for(result), KubernetesOptions(**options))


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, f"{KUBERNETES_VERSION}.0", strict=True)


def _by_kind(render: KubernetesRender, kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in render.manifests.values() if m["kind"] == kind}


def _tier(render: KubernetesRender, name: str) -> dict[str, Any]:
    return _by_kind(render, "Deployment")[f"qwen3-{name}"]


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_every_shipped_profile_on_every_box_it_fits_validates_and_passes_the_checks(
    catalog: Catalog,
) -> None:
    combos = _combos(catalog)
    # Each shipped profile fits at least one fixture box, so none escapes validation.
    assert {c[0] for c in combos} == set(PROFILES)
    assert {c[1] for c in combos} >= {"3x-rtx4090", "8x-h100", "1x-rtx5090", "2x-a100-40gb"}
    for profile, box, engine in combos:
        result, render = _render(catalog, profile, box, engine)
        for name, manifest in render.manifests.items():
            try:
                _validate(manifest)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{profile} on {box} ({engine}): {name}: {exc.message}")
        objects = list(render.manifests.values())
        where = f"{profile} on {box} ({engine})"
        assert checks.gpu_total_problems(objects, {None: len(inventory(box).gpus)}) == [], where
        assert checks.shared_gpu_problems(result, objects, render.shared_claims) == [], where
        assert checks.secret_problems(render.files, keys_for(result).values()) == [], where
        assert checks.probe_problems(result, objects) == [], where
        # The GPUs asked for are exactly the plan's, not merely within the box.
        assert checks.requested_gpus(objects) == {None: len(result.gpus)}, where


def test_strict_validation_rejects_what_the_cluster_would(catalog: Catalog) -> None:
    _, render = _render(catalog, "tri-tier", "3x-rtx4090")
    deployment = copy.deepcopy(_tier(render, "micro"))
    _validate(deployment)
    deployment["spec"]["template"]["spec"]["enableServiceLink"] = False  # a typo of the field
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)
    claim = copy.deepcopy(next(iter(_by_kind(render, "ResourceClaim").values())))
    claim["spec"]["devices"]["requests"][0]["exactly"]["count"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(claim)


def test_tiers_run_the_compose_files_vllm_arguments(catalog: Catalog) -> None:
    result, render = _render(catalog, "tri-tier", "3x-rtx4090")
    for service in result.services:
        pod = _pod(_tier(render, service.name))
        container = pod["containers"][0]
        assert container["args"] == list(vllm_args(service))
        assert "command" not in container  # the image's own `vllm serve` entrypoint
        assert container["image"] == result.image
        assert pod["enableServiceLinks"] is False
        assert _tier(render, service.name)["spec"]["strategy"] == {"type": "Recreate"}
        service_obj = _by_kind(render, "Service")[f"qwen3-{service.name}"]
        assert service_obj["spec"]["ports"][0]["port"] == service.port
        assert (
            service_obj["spec"]["selector"]
            == _tier(render, service.name)["spec"]["selector"]["matchLabels"]
        )


def test_shared_gpu_uses_one_claim_for_both_co_tenants_and_an_exclusive_one_for_medium(
    catalog: Catalog,
) -> None:
    _, render = _render(catalog, "tri-tier", "3x-rtx4090")
    claims = _by_kind(render, "ResourceClaim")
    assert list(claims) == ["qwen3-gpu-2"] and render.shared_claims == {"qwen3-gpu-2": (None, 2)}
    assert claims["qwen3-gpu-2"]["spec"]["devices"]["requests"][0]["exactly"]["count"] == 1
    templates = _by_kind(render, "ResourceClaimTemplate")
    assert list(templates) == ["qwen3-medium-gpus"]
    assert (
        templates["qwen3-medium-gpus"]["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"]
        == 2
    )
    named = {
        tier: [
            c.get("resourceClaimName") or c["resourceClaimTemplateName"]
            for c in _pod(_tier(render, tier))["resourceClaims"]
        ]
        for tier in ("medium", "mini", "micro")
    }
    assert named == {
        "medium": ["qwen3-medium-gpus"],
        "mini": ["qwen3-gpu-2"],
        "micro": ["qwen3-gpu-2"],
    }
    for tier in named:
        container = _pod(_tier(render, tier))["containers"][0]
        # No device-plugin GPUs beside DRA: both would book the same devices.
        assert gpu.GPU_RESOURCE not in container["resources"].get("limits", {})
        assert [c["name"] for c in container["resources"]["claims"]] == [
            c["name"] for c in _pod(_tier(render, tier))["resourceClaims"]
        ]
    assert any("Dynamic Resource Allocation" in r for r in render.requirements)
    assert "Dynamic Resource Allocation" in render.files[KUSTOMIZATION]


def test_the_second_co_tenant_waits_for_the_first_ones_health(catalog: Catalog) -> None:
    _, render = _render(catalog, "tri-tier", "3x-rtx4090")
    assert "initContainers" not in _pod(_tier(render, "mini"))
    assert "initContainers" not in _pod(_tier(render, "medium"))
    (gate,) = _pod(_tier(render, "micro"))["initContainers"]
    assert gate["command"][:3] == ["python3", "-c", START_GATE]
    # mini's Service name and port, as cluster DNS resolves them.
    assert gate["command"][3] == "http://qwen3-mini:5001/health"


def test_device_plugin_limits_and_affinity_when_no_gpu_is_shared(catalog: Catalog) -> None:
    result, render = _render(catalog, "single-gpu", "3x-rtx4090")
    assert not result.shared_gpus()
    assert not _by_kind(render, "ResourceClaim") and not _by_kind(render, "ResourceClaimTemplate")
    (deployment,) = _by_kind(render, "Deployment").values()
    pod = _pod(deployment)
    assert pod["containers"][0]["resources"]["limits"] == {gpu.GPU_RESOURCE: 1}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    exprs = [
        {e["key"]: (e["operator"], e["values"]) for e in t["matchExpressions"]}
        for t in terms["nodeSelectorTerms"]
    ]
    service = result.services[0]
    assert (
        service.quantization == "awq"
    )  # needs compute capability 7.5: major > 7, or 7 and minor > 4
    total = result.gpu(service.gpus[0]).memory_total_mib  # type: ignore[union-attr]
    assert exprs == [
        {gpu.GFD_MEMORY: ("Gt", [str(total - 1)]), gpu.GFD_MAJOR: ("Gt", ["7"])},
        {
            gpu.GFD_MEMORY: ("Gt", [str(total - 1)]),
            gpu.GFD_MAJOR: ("In", ["7"]),
            gpu.GFD_MINOR: ("Gt", ["4"]),
        },
    ]
    assert all(gpu.GFD_PRODUCT not in e for e in exprs)
    _, pinned = _render(catalog, "single-gpu", "3x-rtx4090", pin_gpu_product=True)
    (deployment,) = _by_kind(pinned, "Deployment").values()
    for term in _pod(deployment)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]:
        assert {
            "key": gpu.GFD_PRODUCT,
            "operator": "In",
            "values": ["NVIDIA-GeForce-RTX-4090"],
        } in term["matchExpressions"]


def test_probe_budget_grace_period_and_shm_come_from_the_plan(catalog: Catalog) -> None:
    result, render = _render(catalog, "tri-tier", "3x-rtx4090")
    waits = {}
    for service in result.services:
        pod = _pod(_tier(render, service.name))
        probe = pod["containers"][0]["startupProbe"]
        waits[service.name] = probe["periodSeconds"] * probe["failureThreshold"]
        budget = sizing.startup_budget(service)
        assert budget.predicted_s <= waits[service.name] <= budget.budget_s + probe["periodSeconds"]
        assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"
        assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/health"
        # Long enough to finish a generation that fills the context at 25 tokens/s.
        assert pod["terminationGracePeriodSeconds"] >= service.max_model_len / 25
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
        assert shm == {"medium": "Memory", "sizeLimit": f"{2 * service.tensor_parallel_size}Gi"}
    # 32B AWQ (TP 2) has ten times the weights of 1.7B FP8: not one constant budget.
    assert waits["medium"] > 1.5 * waits["mini"] > 1.5 * waits["micro"]


def test_model_cache_claims_are_sized_from_the_catalogs_weights(catalog: Catalog) -> None:
    result, render = _render(catalog, "tri-tier", "3x-rtx4090")
    claims = _by_kind(render, "PersistentVolumeClaim")
    for service in result.services:
        (claim,) = [
            c
            for c in claims.values()
            if c["metadata"]["annotations"]["qwen-deploy/model"] == service.model
        ]
        size_gib = int(claim["spec"]["resources"]["requests"]["storage"].removesuffix("Gi"))
        weights = catalog.get(service.model).weight_bytes
        assert weights <= size_gib * 2**30 <= weights * 1.25 + 2**30
        volumes = {v["name"]: v for v in _pod(_tier(render, service.name))["volumes"]}
        assert (
            volumes["model-cache"]["persistentVolumeClaim"]["claimName"]
            == claim["metadata"]["name"]
        )
    _, host = _render(catalog, "tri-tier", "3x-rtx4090", model_cache="/srv/hf-cache")
    assert not _by_kind(host, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in _pod(_tier(host, "mini"))["volumes"]}
    assert volumes["model-cache"]["hostPath"] == {
        "path": "/srv/hf-cache",
        "type": "DirectoryOrCreate",
    }


def test_keys_reach_pods_only_through_the_generated_secret(catalog: Catalog) -> None:
    result, render = _render(catalog, "tri-tier", "3x-rtx4090")
    keys = keys_for(result)
    assert render.secrets_env is not None
    for var, key in keys.items():
        assert f"{var}={key}\n" in render.secrets_env
        assert all(key not in text for text in render.files.values())
    kustomization = yaml.safe_load(render.files[KUSTOMIZATION])
    assert kustomization["resources"] == list(render.manifests)
    (generator,) = kustomization["secretGenerator"]
    assert generator["envs"] == ["secrets.env"]
    for service in result.services:
        env = {e["name"]: e for e in _pod(_tier(render, service.name))["containers"][0]["env"]}
        ref = env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": generator["name"], "key": service.api_key_env}
        hf = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert hf["optional"] is True and "value" not in env["HF_TOKEN"]


def test_runtime_class_is_set_only_when_asked(catalog: Catalog) -> None:
    _, plain = _render(catalog, "single-gpu", "3x-rtx4090")
    _, nvidia = _render(catalog, "single-gpu", "3x-rtx4090", runtime_class="nvidia")
    (deployment,) = _by_kind(nvidia, "Deployment").values()
    assert _pod(deployment)["runtimeClassName"] == "nvidia"
    _validate(deployment)
    assert all("runtimeClassName" not in _pod(d) for d in _by_kind(plain, "Deployment").values())


def test_stand_in_tiers_share_the_ledger_on_their_node(catalog: Catalog) -> None:
    _, render = _render(catalog, "tri-tier", "3x-rtx4090", engine="stand-in")
    for tier in ("mini", "micro"):
        pod = _pod(_tier(render, tier))
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert (
            volumes["standin-ledger"]["hostPath"]["path"] == "/var/lib/qwen-deploy/standin-ledger"
        )
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["STANDIN_GPU_TOTAL_MIB"].startswith("0:")

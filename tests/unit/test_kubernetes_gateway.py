"""The gateway on Kubernetes: one more Deployment and Service with no GPU, configured as the
compose gateway is, reaching tiers by their Service names, keys only from the Secret; and a
several-box plan's tiers pinned to their nodes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import kubernetes_validate
import yaml

from deployer.catalog import Catalog
from deployer.gateway import images
from deployer.gateway.config import GatewaySpec, KeySpec, config_from_public
from deployer.gateway.spec import CONFIG_ENV
from deployer.multibox import plan_boxes
from deployer.plan import DeploymentPlan
from deployer.planner import PlanOptions, plan
from deployer.profiles import load_profile
from deployer.targets import kubernetes_checks as checks
from deployer.targets import kubernetes_gpu as gpu
from deployer.targets.kubernetes import (
    KUBERNETES_VERSION,
    KUSTOMIZATION,
    KubernetesRender,
    gpus_per_node,
    render_kubernetes,
)
from tests.helpers import inventory


def keys_for(result: DeploymentPlan) -> dict[str, str]:
    keys = {s.api_key_env: f"sk-{s.name}-0123456789abcdef" for s in result.services}
    for key in result.gateway.keys if result.gateway else ():
        keys[key.env_var] = f"gw-{key.name}-0123456789abcdef"
    return keys


def _tri_tier(catalog: Catalog, engine: str = "vllm") -> DeploymentPlan:
    result = plan(
        inventory("3x-rtx4090"), load_profile("tri-tier"), catalog, PlanOptions(engine=engine)
    )
    keys = (
        KeySpec("default"),
        KeySpec("ops", tiers=("mini",), rpm=60),
        KeySpec("admin", admin=True),
    )
    return replace(result, gateway=GatewaySpec(port=19100, keys=keys))


def _objects(render: KubernetesRender, kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in render.manifests.values() if m["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_the_gateway_is_one_more_deployment_and_service_without_a_gpu(catalog: Catalog) -> None:
    result = _tri_tier(catalog)
    keys = keys_for(result)
    render = render_kubernetes(result, keys)
    deployment = _objects(render, "Deployment")["qwen3-gateway"]
    service = _objects(render, "Service")["qwen3-gateway"]
    for obj in (deployment, service):
        kubernetes_validate.validate(obj, f"{KUBERNETES_VERSION}.0", strict=True)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    # No GPU of any kind: no device-plugin limit, no claim, no GPU toleration or affinity.
    assert gpu.GPU_RESOURCE not in container["resources"].get("limits", {})
    assert "claims" not in container["resources"] and "resourceClaims" not in pod
    assert "tolerations" not in pod and "affinity" not in pod and "nodeSelector" not in pod
    assert checks.requested_gpus(render.manifests.values()) == {None: len(result.gpus)}
    # The locally built image, used as loaded onto the nodes; the compose gateway's command.
    assert container["image"] == images.image_tag("vllm")
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["args"] == ["--config-env", CONFIG_ENV, "--host", "0.0.0.0", "--port", "19100"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert (
        pod["terminationGracePeriodSeconds"] >= max(s.max_model_len for s in result.services) / 25
    )
    assert service["spec"]["ports"][0]["port"] == 19100
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    tiers = {name for name in _objects(render, "Service") if name != "qwen3-gateway"}
    assert service["spec"]["selector"] not in [
        _objects(render, "Service")[t]["spec"]["selector"] for t in tiers
    ]
    assert any(
        r.startswith("the gateway image qwen-deploy/gateway:vllm-") for r in render.requirements
    )
    assert "--engine vllm --base vllm/vllm-openai:" in render.requirements[-1]
    assert "the gateway image" in render.files[KUSTOMIZATION]


def test_its_config_reaches_tiers_by_service_name_and_keys_come_from_the_secret(
    catalog: Catalog,
) -> None:
    result = _tri_tier(catalog, engine="stand-in")
    keys = keys_for(result)
    render = render_kubernetes(result, keys)
    container = _container(_objects(render, "Deployment")["qwen3-gateway"])
    assert container["image"] == images.image_tag("stand-in")
    env = {e["name"]: e for e in container["env"]}
    doc = json.loads(env.pop(CONFIG_ENV)["value"])
    assert {t["name"]: t["base_url"] for t in doc["tiers"]} == {
        "medium": "http://qwen3-medium:5002",
        "mini": "http://qwen3-mini:5001",
        "micro": "http://qwen3-micro:5000",
    }
    # Every other variable is a secretKeyRef into the generated Secret: tiers' and clients' keys.
    (generator,) = yaml.safe_load(render.files[KUSTOMIZATION])["secretGenerator"]
    assert set(env) == set(keys)
    for var, entry in env.items():
        assert entry["valueFrom"]["secretKeyRef"] == {"name": generator["name"], "key": var}
        assert f"{var}={keys[var]}\n" in (render.secrets_env or "")
    assert checks.secret_problems(render.files, keys.values()) == []
    # What the gateway's container builds from it: the same config the compose gateway runs.
    config = config_from_public(doc, keys)
    assert config.tier("mini").base_url == "http://qwen3-mini:5001"
    (ops,) = [k for k in config.keys if k.name == "ops"]
    assert ops.tiers == frozenset({"mini"}) and ops.rpm == 60
    assert [g.tiers for g in config.groups] == [("medium",), ("mini", "micro")]


def test_a_plan_without_a_gateway_renders_none(catalog: Catalog) -> None:
    result = replace(_tri_tier(catalog), gateway=None)
    render = render_kubernetes(result, keys_for(result))
    assert "qwen3-gateway" not in _objects(render, "Deployment")
    assert "GATEWAY" not in (render.secrets_env or "")
    assert not any("gateway" in r for r in render.requirements)


def test_a_several_box_plan_pins_each_tier_and_gives_stand_ins_their_nodes_gpus(
    catalog: Catalog,
) -> None:
    boxes = {"gpu-a": inventory("3x-rtx4090"), "gpu-b": inventory("3x-rtx4090")}
    result = plan_boxes(boxes, load_profile("tri-tier"), catalog, PlanOptions(engine="stand-in"))
    nodes = {s.name: s.node for s in result.services}
    assert set(nodes.values()) == {"gpu-a", "gpu-b"}
    render = render_kubernetes(result, keys_for(result))
    for manifest in render.manifests.values():
        kubernetes_validate.validate(manifest, f"{KUBERNETES_VERSION}.0", strict=True)
    assert checks.gpu_total_problems(render.manifests.values(), gpus_per_node(result)) == []
    by_box = {n.name: n for n in result.nodes}
    for tier, node in nodes.items():
        pod = _objects(render, "Deployment")[f"qwen3-{tier}"]["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"kubernetes.io/hostname": node}
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        totals = ",".join(f"{g.index}:{g.memory_total_mib}" for g in by_box[node].gpus)
        assert env["STANDIN_GPU_TOTAL_MIB"] == totals != ""
    # The gateway reaches tiers on any node through their Services; it is pinned nowhere.
    gateway = _objects(render, "Deployment")["qwen3-gateway"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in gateway

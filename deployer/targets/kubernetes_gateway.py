"""The gateway on Kubernetes: one more Deployment and its Service, with no GPU. Pure.

It runs what the compose file runs (`gateway.service.gateway_container_spec`): the config as
JSON in one environment variable, built from the plan, with each tier's URL its Service name
and port (cluster DNS) instead of the compose network's alias; the tiers' keys and the clients'
keys come from the deployment's Secret with secretKeyRef, never as literals. Its image is the
one qwen-deploy builds locally (`deployer/gateway/images.py`): no registry has it, so the
cluster's nodes must be given it (see `requirements`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from deployer.gateway import images
from deployer.gateway.config import GatewaySpec, public_config
from deployer.gateway.service import gateway_container_spec
from deployer.gateway.spec import CONFIG_ENV
from deployer.plan import DeploymentPlan
from deployer.targets import sizing

CONTAINER = "gateway"
HEALTH_PATH = "/health"  # needs no key
# Requests for a CPU-only proxy: small, so it fits beside the tiers on a GPU node or anywhere.
RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def gateway_image(plan: DeploymentPlan) -> str:
    return images.image_tag(str(plan.engine))


def requirements(plan: DeploymentPlan) -> tuple[str, ...]:
    """What the cluster needs for the gateway: its locally built image on the nodes."""
    image = gateway_image(plan)
    # For vLLM it is built FROM the plan's vLLM image (which has every dependency it needs).
    build = "--engine stand-in"
    if str(plan.engine) != "stand-in":
        build = f"--engine vllm --base {plan.image}"
    repo, _, _ = image.partition(":")
    return (
        f"the gateway image {image} on the nodes (qwen-deploy builds it, no registry has it: "
        f"`python -m deployer.gateway.images {build}`, then load it into each node's "
        "container runtime, e.g. `docker save` | `ctr -n k8s.io images import -`, `kind load "
        "docker-image` or `minikube image load`; or push it to your registry and run "
        f"`kustomize edit set image {repo}=<registry>/{repo}:<tag>` in this directory)",
    )


def gateway_objects(
    plan: DeploymentPlan,
    gateway: GatewaySpec,
    *,
    name: str,
    tier_urls: Mapping[str, str],
    keys_secret: str,
    labels: Mapping[str, str],
    selector: Mapping[str, str],
) -> list[dict[str, Any]]:
    """The gateway's Deployment and Service. `tier_urls`: each tier's Service URL."""
    spec = gateway_container_spec(plan, gateway, "/kubernetes", gateway_image(plan))
    config = public_config(plan, gateway, "network", tier_urls)
    env: list[dict[str, Any]] = [
        {"name": CONFIG_ENV, "value": json.dumps(config, sort_keys=True, separators=(",", ":"))}
    ]
    for container_var, env_var in spec.secret_env:
        ref = {"name": keys_secret, "key": env_var}
        env.append({"name": container_var, "valueFrom": {"secretKeyRef": ref}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        # Built locally and loaded onto the nodes: never pulled when it is there.
        "imagePullPolicy": "IfNotPresent",
        "args": list(spec.command),
        "ports": [{"name": "http", "containerPort": spec.container_port, "protocol": "TCP"}],
        "env": env,
        "resources": {k: dict(v) for k, v in RESOURCES.items()},
        "readinessProbe": _probe(3, 5),
        "livenessProbe": _probe(6, 10),
        "lifecycle": {"preStop": {"sleep": {"seconds": sizing.PRE_STOP_S}}},
    }
    pod: dict[str, Any] = {
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        # A stream may last as long as the longest generation of the tiers behind it.
        "terminationGracePeriodSeconds": max(sizing.drain_s(s) for s in plan.services),
        "containers": [container],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            # No GPU: a new gateway can start before the old one stops (no gap for clients).
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "selector": {"matchLabels": dict(selector)},
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {"qwen-deploy/fronts": ",".join(s.name for s in plan.services)},
                },
                "spec": pod,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [
                {"name": "http", "port": gateway.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }
    return [deployment, service]


def _probe(failure_threshold: int, period_s: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": HEALTH_PATH, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": 3,
        "failureThreshold": failure_threshold,
    }

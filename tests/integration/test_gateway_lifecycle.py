"""The gateway's container through its lifecycle functions (what `up` and `restart gateway`
call) on the real engine: created after the tiers, converged by its config hash, restarted,
not started when a tier failed."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import pytest
import requests

from deployer.gateway import lifecycle
from deployer.gateway.config import GatewaySpec, Limits, resolve_gateway_keys
from deployer.plan import DeploymentPlan, Engine
from deployer.runtime.convergence import Action, converge_actions
from deployer.runtime.observed import observe
from deployer.runtime.states import ActionKind, Stage
from tests.helpers.standin import FAST_ENV, STANDIN_IMAGE
from tests.integration.gateway_support import free_port, tri_tier_plan

pytestmark = pytest.mark.integration


@dataclass
class Box:
    plan: DeploymentPlan
    spec: GatewaySpec
    env: dict[str, str]
    directory: str


@pytest.fixture
def box(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Box]:
    name = f"gwlife{uuid.uuid4().hex[:6]}"
    spec = GatewaySpec(port=free_port(), limits=Limits(health_interval_s=0.5))
    plan = replace(tri_tier_plan(), deployment=name, engine=Engine.STAND_IN, image=STANDIN_IMAGE)
    network = docker_client.networks.create(f"{name}_default")
    env = dict(resolve_gateway_keys(spec, {}, {}))
    started = []
    try:
        for service in plan.services:
            key = f"tier-key-{service.name}-{name}"
            env[service.api_key_env] = key
            container = docker_client.containers.run(
                STANDIN_IMAGE,
                [service.model, "--served-model-name", service.served_model_name,
                 "--api-key", key, "--max-model-len", str(service.max_model_len)],
                name=f"{name}-{service.name}-1",
                environment={**FAST_ENV, "STANDIN_LOAD_SECONDS": "0"},
                detach=True,
            )  # fmt: skip
            started.append(container)
            network.connect(container, aliases=[service.name])
        lifecycle.ensure_image(docker_client, plan, spec)
        yield Box(plan, spec, env, str(tmp_path))
    finally:
        for container in started + list(
            docker_client.containers.list(all=True, filters={"name": f"{name}-gateway-1"})
        ):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        network.remove()


def gateway_action(client: docker.DockerClient, box: Box) -> Action:
    specs = lifecycle.gateway_specs(box.plan, box.directory, box.spec)
    observed = [o for o in observe(client, box.plan.deployment) if o.service == "gateway"]
    actions = converge_actions(box.plan, specs, box.env, observed)
    return next(a for a in actions if a.service == "gateway")


def test_the_gateway_container_is_converged_and_restarted(
    docker_client: docker.DockerClient, box: Box
) -> None:
    (spec,) = lifecycle.gateway_specs(box.plan, box.directory, box.spec)
    first = gateway_action(docker_client, box)
    assert first.kind == ActionKind.CREATE
    outcome = lifecycle.apply_gateway(docker_client, spec, box.env, first, ["medium"], [])
    assert outcome.ok, outcome
    url = f"http://127.0.0.1:{spec.host_port}"
    key = box.env["QWEN_DEPLOY_GATEWAY_KEY_DEFAULT"]
    models = requests.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert models.status_code == 200
    container = docker_client.containers.get(spec.container_name)
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert not container.attrs["HostConfig"].get("DeviceRequests")  # no GPU asked for
    assert (
        json.loads(dict(spec.environment)["QWEN_DEPLOY_GATEWAY"])["deployment"]
        == box.plan.deployment
    )
    assert gateway_action(docker_client, box).kind == ActionKind.NOOP
    again = lifecycle.restart_gateway(
        docker_client, box.plan, box.directory, box.env, spec=box.spec
    )
    assert again.ok and again.stage == Stage.HEALTHY
    blocked = lifecycle.apply_gateway(
        docker_client, spec, box.env, replace(first, kind=ActionKind.START), [], ["mini"]
    )
    assert not blocked.ok and "mini did not become ready" in blocked.message

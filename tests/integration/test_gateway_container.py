"""The gateway image (built offline for the stand-in engine) on the real Docker engine, in front
of three stand-in containers on one network, run as its ContainerSpec says (what `up` and
compose.yaml run): the config in its environment, keys beside it, tiers by service name."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from deployer.gateway import images
from deployer.gateway.config import GatewaySpec, Limits, resolve_gateway_keys
from deployer.gateway.service import gateway_container_spec
from tests.helpers.standin import FAST_ENV, STANDIN_IMAGE
from tests.integration.gateway_support import tri_tier_plan

pytestmark = pytest.mark.integration


@pytest.fixture
def network_deployment(
    docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    suffix = uuid.uuid4().hex[:8]
    network = docker_client.networks.create(f"gwtest-{suffix}")
    containers = []
    try:
        plan = tri_tier_plan()
        env: dict[str, str] = {}
        for service in plan.services:
            key = f"tier-key-{service.name}-{suffix}"
            env[service.api_key_env] = key
            container = docker_client.containers.run(
                STANDIN_IMAGE,
                [
                    service.model,
                    "--served-model-name",
                    service.served_model_name,
                    "--api-key",
                    key,
                    "--max-model-len",
                    str(service.max_model_len),
                    "--reasoning-parser",
                    "qwen3",
                ],
                name=f"gwtest-{suffix}-{service.name}",
                environment={**FAST_ENV, "STANDIN_LOAD_SECONDS": "0"},
                detach=True,
            )
            containers.append(container)
            network.connect(container, aliases=[service.name])
        spec = GatewaySpec(limits=Limits(health_interval_s=0.5))
        gateway_keys = resolve_gateway_keys(spec, {}, {})
        env.update(gateway_keys)
        # Exactly what `up` and compose.yaml run: the service's ContainerSpec.
        desc = gateway_container_spec(
            plan, spec, str(tmp_path), images.build(docker_client, "stand-in")
        )
        environment = dict(desc.environment)
        environment.update({var: env[source] for var, source in desc.secret_env})
        assert not desc.device_ids
        gateway = docker_client.containers.run(
            desc.image,
            desc.command,
            name=f"gwtest-{suffix}-gateway",
            environment=environment,
            ports={f"{desc.container_port}/tcp": ("127.0.0.1", None)},
            network=network.name,
            detach=True,
        )
        containers.append(gateway)
        gateway.reload()
        port = gateway.attrs["NetworkSettings"]["Ports"][f"{desc.container_port}/tcp"][0][
            "HostPort"
        ]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/api/v1/health", timeout=2).json()["status"] == "healthy":
                    break
            time.sleep(0.2)
        yield url, {"Authorization": f"Bearer {gateway_keys['QWEN_DEPLOY_GATEWAY_KEY_DEFAULT']}"}
    finally:
        for container in containers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        network.remove()


def test_the_gateway_container_fronts_the_tiers_by_service_name(
    network_deployment: tuple[str, dict[str, str]],
) -> None:
    url, headers = network_deployment
    health = requests.get(url + "/api/v1/health", timeout=5).json()
    assert health["status"] == "healthy", health
    models = requests.get(url + "/v1/models", headers=headers, timeout=5)
    assert {"medium", "mini", "micro", "auto"} <= {c["id"] for c in models.json()["data"]}
    for alias, tier in (("MEDIUM", "medium"), ("8b", "mini"), ("micro", "micro")):
        answer = requests.post(
            url + "/v1/chat/completions",
            headers=headers,
            json={
                "model": alias,
                "messages": [{"role": "user", "content": "salut"}],
                "max_tokens": 20,
            },
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-qwen-deploy-tier"] == tier
    with requests.post(
        url + "/api/v1/chat/stream",
        headers=headers,
        json={"message": "bonjour"},
        stream=True,
        timeout=30,
    ) as stream:
        kinds = [
            json.loads(line[6:])["type"]
            for line in stream.iter_lines()
            if line.startswith(b"data: ")
        ]
    assert kinds[0] == "start" and "thinking" in kinds and kinds[-1] == "end"
    assert requests.get(url + "/v1/models", timeout=5).status_code == 401

"""Fixtures that run the vLLM stand-in image on the real Docker engine (no mocks)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import docker
import pytest
from docker.types import DeviceRequest

# Ryuk (testcontainers' reaper) cannot be pulled here; fixtures remove what they start.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer

from tests.helpers.standin import FAST_ENV, STANDIN_IMAGE, Standin, StartStandin
from tests.integration.conftest_runtime import deployment, engine  # fixtures for every test

__all__ = ["deployment", "engine"]  # the runtime fixtures, shared by every integration test

MAKE_IMAGES_HINT = (
    "run `make images` (scripts/docker-up.sh starts the engine, scripts/build-images.sh builds "
    "the images)"
)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The engine, with the stand-in image present; fails (never skips) when either is missing."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"Docker engine not reachable ({exc}); {MAKE_IMAGES_HINT}", pytrace=False)
    try:
        client.images.get(STANDIN_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {STANDIN_IMAGE} not found; {MAKE_IMAGES_HINT}", pytrace=False)
    yield client
    client.close()


@pytest.fixture
def ledger_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """A named volume for the GPU-memory ledger, private to one test."""
    name = f"standin-ledger-test-{uuid.uuid4().hex[:10]}"
    docker_client.volumes.create(name)
    yield name
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.volumes.get(name).remove(force=True)


@pytest.fixture
def standin(docker_client: docker.DockerClient, ledger_volume: str) -> Iterator[StartStandin]:
    """Factory: start(*vllm_serve_args, env=..., gpus="0,1", wait=True) -> Standin.

    The container publishes port 8000 on 127.0.0.1 (random host port), mounts this test's
    ledger volume, and is removed at the end of the test.
    """
    started: list[DockerContainer] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        gpus: str | None = None,
        wait: bool = True,
    ) -> Standin:
        container = DockerContainer(STANDIN_IMAGE).with_command(list(args))
        for key, value in {**FAST_ENV, **(env or {})}.items():
            container.with_env(key, value)
        # Publish on 127.0.0.1 only, random host port: the Docker SDK takes (ip, port) here,
        # testcontainers' with_bind_ports() only a port.
        container.ports["8000/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
        container.with_volume_mapping(ledger_volume, "/var/lib/standin-ledger", "rw")
        if gpus is not None:
            container.with_kwargs(
                device_requests=[DeviceRequest(device_ids=gpus.split(","), capabilities=[["gpu"]])]
            )
        container.start()
        started.append(container)
        try:
            port = int(container.get_exposed_port(8000))
        except Exception:  # exited already (start-up failure tests): no port mapping left
            port = 0
        instance = Standin(container, port)
        if wait:
            response = instance.wait_listening()
            assert response.status_code in (200, 503), response.text
        return instance

    yield start
    for container in started:
        with contextlib.suppress(docker.errors.NotFound):
            container.stop()

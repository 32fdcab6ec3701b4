"""The runtime's integration fixtures: a real Docker engine with the stand-in image, and a fresh
deployment per test with a finalizer that removes what it created. tests/integration/conftest.py
makes them available to every integration test; the Deployment type is in tests/helpers."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.vllm_pin import STANDIN_IMAGE
from tests.helpers.deployments import (  # noqa: F401 - the rest for imports not yet moved
    BOX_FILE,
    KEYS,
    LOAD_SECONDS,
    Deployment,
    free_ports,
    tri_tier_profile,
    write_inventory,
)


@pytest.fixture(scope="session")
def engine() -> Any:
    """The Docker engine with the stand-in image; `make images` sets both up, so a missing
    one is a setup failure, never a skip."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # any failure to connect means: no engine here
        pytest.fail(f"no Docker engine ({exc}); run `make images` (scripts/docker-up.sh)")
    try:
        client.images.get(STANDIN_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{STANDIN_IMAGE} is not built; run `make images`")
    return client


@pytest.fixture
def deployment(engine: Any, tmp_path: Path) -> Iterator[Deployment]:
    """A fresh deployment name; its containers and network are removed afterwards (with the
    SDK directly, so cleanup does not depend on the code under test)."""
    name = f"rt-{uuid.uuid4().hex[:8]}"
    ports = dict(zip(("medium", "mini", "micro"), free_ports(3), strict=True))
    first_gpu = random.randrange(100, 1000, 3)
    yield Deployment(name, tmp_path / "home", engine, ports, first_gpu)
    label = {"label": f"com.docker.compose.project={name}"}
    for container in engine.containers.list(all=True, filters=label):
        with contextlib.suppress(Exception):
            container.remove(force=True)
    for network in engine.networks.list(names=[f"{name}_default"]):
        with contextlib.suppress(Exception):
            network.remove()

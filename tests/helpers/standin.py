"""A started vLLM stand-in container, as the integration tests drive it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import docker
import pytest
import requests

from deployer import vllm_pin

if TYPE_CHECKING:  # testcontainers is imported by the conftest, after it disables Ryuk
    from testcontainers.core.container import DockerContainer


STANDIN_IMAGE = os.environ.get("STANDIN_IMAGE", vllm_pin.STANDIN_IMAGE)

# Fast defaults for tests; a test overrides them through `env`.
FAST_ENV = {
    "STANDIN_LOAD_SECONDS": "0.3",
    "STANDIN_TTFT_MS": "1",
    "STANDIN_TOKENS_PER_SECOND": "2000",
    "STANDIN_GPU_TOTAL_MIB": "0:24564,1:24564,2:24564,3:24564",
}


@dataclass
class Standin:
    """A started stand-in container."""

    container: DockerContainer
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def docker(self) -> docker.models.containers.Container:
        return self.container.get_wrapped_container()

    def logs(self) -> str:
        return str(self.docker.logs().decode("utf-8", "replace"))

    def status(self) -> str:
        self.docker.reload()
        return str(self.docker.status)

    def wait_exit(self, timeout: float = 20) -> int:
        """Wait for the container to exit; its exit status."""
        result = self.docker.wait(timeout=timeout)
        return int(result["StatusCode"])

    def wait_listening(self, timeout: float = 20) -> requests.Response:
        """Poll /health until the server answers (any status); fail if the container exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return requests.get(self.url + "/health", timeout=2)
            except requests.ConnectionError:
                if self.status() == "exited":
                    pytest.fail(f"stand-in exited before listening:\n{self.logs()}")
                time.sleep(0.05)
        pytest.fail(f"stand-in not listening after {timeout}s:\n{self.logs()}")


StartStandin = Callable[..., Standin]

"""A runtime test's deployment: a 3-GPU inventory and a tri-tier profile under tmp_path with
small load times, its ports and keys, and a CLI runner bound to its home and name.

Stand-ins keep a per-GPU memory ledger shared by every stand-in on the engine (as vLLM
instances share a real GPU), keyed by the device ids Docker hands them. Each test's inventory
numbers its three GPUs from a random base, so a test never competes for "GPU 2" with another
test run, `make demo` or anything else using the stand-in on the same engine."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from tests.helpers.fixtures import BOX_FILE

LOAD_SECONDS = "1"
KEYS = {"medium": "test-key-medium", "mini": "test-key-mini", "micro": "test-key-micro"}


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_inventory(path: Path, first: int) -> Path:
    """The 3x RTX 4090 fixture with its GPUs numbered first, first+1, first+2."""
    data = json.loads(BOX_FILE.read_text())
    for offset, gpu in enumerate(data["gpus"]):
        gpu["index"] = first + offset
    path.write_text(json.dumps(data, indent=2))
    return path


def tri_tier_profile(
    ports: dict[str, int],
    first_gpu: int = 0,
    gateway: dict[str, Any] | None = None,
    **services: dict[str, Any],
) -> dict[str, Any]:
    """The tri-tier layout (medium TP 2 on the first two GPUs; mini then micro on the third)
    with the test's ports and keys; `services` overrides keys per service; `gateway`, when
    given, is the profile's gateway section."""
    g = first_gpu
    base: dict[str, dict[str, Any]] = {
        "medium": {"model": "Qwen/Qwen3-32B-AWQ", "gpus": [g, g + 1], "context": 32768},
        "mini": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [g + 2], "context": 32768, "share": 2},
        "micro": {"model": "Qwen/Qwen3-1.7B-FP8", "gpus": [g + 2], "context": 16384},
    }
    out = {}
    for name, spec in base.items():
        out[name] = {
            **spec,
            "port": ports[name],
            "api_key": KEYS[name],
            "aliases": [name.upper()],
            **services.get(name, {}),
        }
    profile: dict[str, Any] = {
        "name": "tri-tier-test",
        "defaults": {
            "environment": {"STANDIN_LOAD_SECONDS": LOAD_SECONDS},
            "startup_timeout_s": 60,
        },
        "services": out,
    }
    if gateway is not None:
        profile["gateway"] = gateway
    return profile


@dataclass
class Deployment:
    """One test's deployment: its name, home, GPUs, profile file and ports, and a CLI runner."""

    name: str
    home: Path
    engine: Any
    ports: dict[str, int]
    first_gpu: int
    profile: Path = field(init=False)
    gpus_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.profile = self.home.parent / "profile.yaml"
        self.gpus_file = write_inventory(self.home.parent / "gpus.json", self.first_gpu)
        self.write_profile()

    @property
    def gpu_ids(self) -> dict[str, list[str]]:
        """The device ids each service's container should get."""
        g = self.first_gpu
        return {"medium": [str(g), str(g + 1)], "mini": [str(g + 2)], "micro": [str(g + 2)]}

    def write_profile(
        self, gateway: dict[str, Any] | None = None, **services: dict[str, Any]
    ) -> None:
        data = tri_tier_profile(self.ports, self.first_gpu, gateway, **services)
        self.profile.write_text(yaml.safe_dump(data, sort_keys=False))

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        from deployer.cli.main import cli

        return CliRunner().invoke(
            cli,
            ["--home", str(self.home), "--deployment", self.name, *args],
            env={"NO_COLOR": "1", "HF_TOKEN": "", **(env or {})},
            catch_exceptions=False,
        )

    def up(self, *args: str) -> Result:
        return self.cli(
            "up",
            "--profile",
            str(self.profile),
            "--gpus-file",
            str(self.gpus_file),
            "--engine",
            "stand-in",
            *args,
        )

    def containers(self) -> dict[str, Any]:
        """Service name -> container, from the engine's labels."""
        found = self.engine.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.name}"}
        )
        return {c.labels["com.docker.compose.service"]: c for c in found}

    def ids(self) -> dict[str, str]:
        return {name: c.id for name, c in self.containers().items()}

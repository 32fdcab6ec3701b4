"""The rendered compose file, read and run by a real compose tool, with no qwen-deploy involved.

Uses `docker compose` (v2) when installed, else Debian's `docker-compose` (v1.29), and runs it
the way the README tells people to: in the deployment directory, with no `-f` and no `-p`, on
the files exactly as rendered. The project name comes from COMPOSE_PROJECT_NAME in `.env` (v1
refuses a top-level `name:`). The stub that replaces vLLM is an override file compose finds on
its own (`compose.override.yaml`), so the rendered file is never edited.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.catalog import load_catalog
from deployer.deployment import DeploymentDir
from deployer.errors import DeployError
from deployer.planner import DeploymentPlan, PlanOptions, plan
from deployer.profiles import parse_profile
from deployer.render import render_files
from deployer.spec import HF_CACHE_VOLUME, vllm_args
from tests.helpers import GPU_FILES, inventory

pytestmark = pytest.mark.integration

BASE_IMAGE = "qwen-deploy/base:bookworm"  # built by scripts/build-images.sh


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


COMPOSE = _compose_command()
OVERRIDE_FILE = "compose.override.yaml"  # both compose versions read it beside compose.yaml


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plan(deployment: str) -> DeploymentPlan:
    """Three services on three GPUs: one with TP 2, two sharing a GPU (so one waits)."""
    services = {
        "big": {"model": "Qwen/Qwen3-32B-AWQ", "gpus": [0, 1], "context": 32768},
        "first": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [2], "context": 16384, "share": 2},
        "second": {"model": "Qwen/Qwen3-1.7B-FP8", "gpus": [2], "context": 16384},
    }
    for service in services.values():
        service["port"] = _free_port()
    profile = parse_profile({"name": "it", "services": services}, "<it>")
    options = PlanOptions(deployment=deployment)
    return plan(inventory("3x-rtx4090"), profile, load_catalog(), options)


def _write(result: DeploymentPlan, home: Path) -> DeploymentDir:
    directory = DeploymentDir(home / result.deployment)
    keys = {s.api_key_env: f"it-key-{s.name}-{uuid.uuid4().hex}" for s in result.services}
    directory.write_files(render_files(result, str(directory.path), keys))
    return directory


def _run(
    directory: DeploymentDir | Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`compose ARGS` typed in the directory: no -f, no -p, no --project-directory."""
    # scripts/docker-up.sh installs Debian's docker-compose; its absence is a setup bug.
    assert COMPOSE is not None, "no compose tool: run scripts/docker-up.sh"
    where = directory.path if isinstance(directory, DeploymentDir) else directory
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QWEN_DEPLOY_", "COMPOSE_")) and k != "HF_TOKEN"
    }
    return subprocess.run(
        [*COMPOSE, *args],
        cwd=where,
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
        timeout=300,
        check=False,
    )


def test_compose_reads_the_file_with_keys_from_env_and_token_from_the_shell(
    tmp_path: Path,
) -> None:
    result = _plan("it-config")
    directory = _write(result, tmp_path)
    done = _run(directory, "config", env={"HF_TOKEN": "hf_from_the_shell"})
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    keys = directory.read_env()
    for service in result.services:
        resolved = config["services"][service.name]
        assert resolved["environment"]["VLLM_API_KEY"] == keys[service.api_key_env]
        assert resolved["environment"]["HF_TOKEN"] == "hf_from_the_shell"
        assert resolved["command"] == list(vllm_args(service))
    assert config["services"]["second"]["depends_on"]["first"]["condition"] == "service_healthy"


def _shipped_renders() -> list[tuple[str, str]]:
    """(profile, inventory fixture) for every shipped profile: the first box it plans on."""
    from deployer.profiles import load_all_profiles

    boxes = sorted(p.stem for p in GPU_FILES.glob("*.json"))
    pairs = []
    for profile in load_all_profiles():
        for box in boxes:
            try:
                plan(inventory(box), profile, load_catalog(), PlanOptions())
            except DeployError:
                continue
            pairs.append((profile.name, box))
            break
        else:
            pairs.append((profile.name, ""))
    return pairs


@pytest.mark.parametrize("profile, box", _shipped_renders(), ids=lambda v: v or "none")
@pytest.mark.parametrize("engine", ["vllm", "stand-in"])
def test_every_shipped_profile_renders_a_file_compose_reads_unedited(
    tmp_path: Path, profile: str, box: str, engine: str
) -> None:
    """`qwen-deploy render`, then `docker-compose config` in that directory, nothing else."""
    from click.testing import CliRunner

    from deployer.cli.main import cli

    assert box, f"profile {profile} plans on none of the fixture boxes"
    name = f"it-{profile}-{engine}"
    args = ["--home", str(tmp_path), "-d", name, "render", "-p", profile, "--engine", engine]
    gpus = str(GPU_FILES / f"{box}.json")
    # nvfp4-8b reads its key from $VLLM_API_KEY (api_key_env)
    env = {"VLLM_API_KEY": "it-key-from-the-environment"}
    result = CliRunner().invoke(cli, [*args, "--gpus-file", gpus], env=env)
    assert result.exit_code == 0, result.output
    directory = DeploymentDir(tmp_path / name)
    assert "name" not in yaml.safe_load(directory.file("compose.yaml").read_text())
    done = _run(directory, "config")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    planned = directory.load_plan()
    # Every unit of the plan: the services and, where the profile has one, the gateway.
    assert sorted(config["services"]) == sorted(planned.unit_names())
    keys = directory.read_env()
    for service in planned.services:
        resolved = config["services"][service.name]
        assert resolved["environment"]["VLLM_API_KEY"] == keys[service.api_key_env]
        assert resolved["command"] == list(vllm_args(service))
    if planned.gateway is not None:
        gateway = config["services"]["gateway"]["environment"]
        for key in planned.gateway.keys:
            assert gateway[key.env_var] == keys[key.env_var]


def test_compose_refuses_to_start_without_the_keys(tmp_path: Path) -> None:
    directory = _write(_plan("it-nokeys"), tmp_path)
    directory.file(".env").unlink()
    done = _run(directory, "config")
    assert done.returncode != 0
    assert "QWEN_DEPLOY_API_KEY_" in done.stderr or ".env" in done.stderr


# A stand-in for `vllm serve` that reports the arguments and environment it was started with.
STUB = """
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
time.sleep(float(os.environ.get("STUB_DELAY", "0")))
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/v1/models" and self.headers.get("Authorization") != (
            "Bearer " + os.environ["VLLM_API_KEY"]
        ):
            self.send_response(401); self.end_headers(); return
        body = json.dumps({"argv": sys.argv[1:], "gpus": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
                           "hf_token": os.environ.get("HF_TOKEN")}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
HTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
"""


def _inspect(container: str) -> dict[str, Any]:
    done = subprocess.run(
        ["docker", "inspect", container], capture_output=True, text=True, check=True
    )
    data: list[dict[str, Any]] = json.loads(done.stdout)
    return data[0]


def _get(url: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[DeploymentPlan, DeploymentDir]]:
    """`compose up -d` of the rendered files, typed in the directory; only the image and
    entrypoint are swapped for the stub (an override file compose finds on its own), and the
    shared HF cache volume for a throw-away one. The directory is moved to another name first:
    the project name must come from .env, not from the directory's name."""
    result = _plan(f"it-compose-{uuid.uuid4().hex[:8]}")
    written = _write(result, tmp_path / "rendered")
    directory = DeploymentDir(tmp_path / "moved-elsewhere")
    written.path.rename(directory.path)
    override: dict[str, Any] = {
        "services": {
            s.name: {
                "image": BASE_IMAGE,
                "entrypoint": ["python3", "-c", STUB],
                "environment": {"STUB_DELAY": "6" if s.name == "first" else "0"},
                "healthcheck": {"interval": "1s"},
            }
            for s in result.services
        },
        "volumes": {HF_CACHE_VOLUME: {"name": f"{result.deployment}-hf-cache"}},
    }
    directory.file(OVERRIDE_FILE).write_text(yaml.safe_dump(override))
    try:
        up = _run(directory, "up", "-d", env={"HF_TOKEN": "hf_shell"})
        assert up.returncode == 0, up.stderr
        yield result, directory
    finally:
        _run(directory, "down", "-v", "--timeout", "1")


def test_compose_up_starts_what_the_plan_says(
    running: tuple[DeploymentPlan, DeploymentDir],
) -> None:
    result, directory = running
    keys = directory.read_env()
    deadline = time.monotonic() + 60
    for service in result.services:
        container = f"{result.deployment}-{service.name}-1"
        while _inspect(container)["State"].get("Health", {}).get("Status") != "healthy":
            assert time.monotonic() < deadline, f"{container} did not become healthy"
            time.sleep(0.5)
        url = f"http://127.0.0.1:{service.port}/v1/models"
        assert _get(url)[0] == 401
        status, seen = _get(url, keys[service.api_key_env])
        assert status == 200
        assert seen["argv"] == list(vllm_args(service))
        assert seen["hf_token"] == "hf_shell"
        labels = _inspect(container)["Config"]["Labels"]
        assert labels["com.docker.compose.project"] == result.deployment  # from .env
        host = _inspect(container)["HostConfig"]
        assert host["IpcMode"] == "host"
        assert host["RestartPolicy"]["Name"] == "always"
        assert host["DeviceRequests"][0]["DeviceIDs"] == [str(g) for g in service.gpus]

    # `second` shares GPU 2 with `first`, so compose started it only once `first` was healthy,
    # which the stub delays by STUB_DELAY seconds.
    first = _started(f"{result.deployment}-first-1")
    second = _started(f"{result.deployment}-second-1")
    assert (second - first).total_seconds() >= 6


def _started(container: str) -> datetime:
    stamp = _inspect(container)["State"]["StartedAt"]  # RFC 3339 with nanoseconds
    return datetime.fromisoformat(stamp[:19])

"""The Docker engine restarted under a running deployment. This restarts dockerd itself (a
graceful SIGTERM, then scripts/docker-up.sh starts it again), which stops and restarts every
container on the machine: it is alone in this file, runs once, and waits generously.

What must hold afterwards: the containers come back by their restart policy (`always` once
ready), the two services sharing a GPU come back one after the other thanks to the start gate
(the later one logs that it waits, and never vLLM's "No available memory for the cache blocks"
that two engines profiling one GPU at once produce), and `status` and `verify` are right again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from deployer.runtime import parse_docker_time
from tests.helpers.deployments import KEYS, Deployment

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RACE = "No available memory for the cache blocks"


def _dockerd_pid() -> int:
    found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True, check=False)
    pids = [int(p) for p in found.stdout.split()]
    if len(pids) != 1:
        pytest.fail(f"expected one dockerd process on this machine, found {pids or 'none'}")
    return pids[0]


def _wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _restart_dockerd() -> None:
    if os.geteuid() != 0:
        pytest.fail("restarting dockerd needs root (this test runs where `make test` runs)")
    pid = _dockerd_pid()
    os.kill(pid, signal.SIGTERM)  # graceful: dockerd stops its containers, then exits
    _wait_for("dockerd to exit", lambda: not Path(f"/proc/{pid}").exists(), timeout=120)
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "docker-up.sh")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "DOCKER_WAIT_SECONDS": "120"},
    )
    assert started.returncode == 0, started.stdout + started.stderr


def _first_stamp(container: Any, since: datetime, needle: str) -> datetime:
    """The engine's timestamp of the first log line since `since` containing needle."""
    raw = container.logs(since=since, timestamps=True).decode(errors="replace")
    for line in raw.splitlines():
        stamp, _, text = line.partition(" ")
        when = parse_docker_time(stamp)
        if needle in text and when is not None:
            return when
    pytest.fail(f"{container.name} logged no {needle!r} since {since}:\n{raw[-3000:]}")


def _answers(deployment: Deployment, service: str) -> bool:
    response = requests.get(
        f"http://127.0.0.1:{deployment.ports[service]}/v1/models",
        headers={"Authorization": f"Bearer {KEYS[service]}"},
        timeout=5,
    )
    return response.status_code == 200


def test_after_an_engine_restart_the_deployment_comes_back_in_order(
    deployment: Deployment, engine: Any
) -> None:
    # mini loads for a while, so micro (same GPU, starts after it) would race it without the gate.
    deployment.write_profile(mini={"environment": {"STANDIN_LOAD_SECONDS": "5"}})
    result = deployment.up()
    assert result.exit_code == 0, result.output
    before = deployment.ids()
    for container in deployment.containers().values():
        assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "always"

    restarted_at = datetime.now(timezone.utc)
    _restart_dockerd()

    def all_healthy() -> bool:
        containers = deployment.containers()
        return len(containers) == 3 and all(
            c.attrs["State"].get("Health", {}).get("Status") == "healthy"
            for c in containers.values()
        )

    _wait_for("the three containers to be healthy again", all_healthy, timeout=300)
    for service in ("medium", "mini", "micro"):
        _wait_for(f"{service} to answer", lambda s=service: _answers(deployment, s), timeout=120)
    assert deployment.ids() == before  # the same containers, restarted by the engine

    containers = deployment.containers()
    micro_logs = containers["micro"].logs(since=restarted_at).decode(errors="replace")
    mini_logs = containers["mini"].logs(since=restarted_at).decode(errors="replace")
    assert "qwen-deploy: waiting for http://mini:8000/health before starting" in micro_logs
    assert "Starting vLLM server" in micro_logs and "Starting vLLM server" in mini_logs
    assert RACE not in micro_logs and RACE not in mini_logs
    # micro began loading its model only once mini was serving (the engine's own timestamps).
    mini_serving = _first_stamp(containers["mini"], restarted_at, "Starting vLLM server")
    micro_loading = _first_stamp(containers["micro"], restarted_at, "Starting to load model")
    assert micro_loading > mini_serving

    status = deployment.cli("status", "--json")
    assert status.exit_code == 0, status.output
    rows = {r["service"]: r for r in json.loads(status.stdout)["services"]}
    assert {name: (r["state"], r["health"]) for name, r in rows.items()} == {
        name: ("running", "healthy") for name in ("medium", "mini", "micro")
    }
    verify = deployment.cli("verify")
    assert verify.exit_code == 0, verify.output

"""A profile with a `gateway:` section through the real CLI on the real engine: `up` starts the
gateway after the tiers (no GPU), verifies it, and `status`, `endpoints`, `logs`, `restart`,
`up` again and `down` treat it as one more service."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from deployer.deployment import parse_env
from tests.helpers.deployments import Deployment, free_ports

pytestmark = pytest.mark.integration


def _gateway_up(deployment: Deployment) -> int:
    (port,) = free_ports(1)
    deployment.write_profile(gateway={"port": port, "keys": {"app": {}, "ops": {"admin": True}}})
    result = deployment.up()
    assert result.exit_code == 0, result.output
    return port


def test_up_starts_the_gateway_after_the_tiers_and_verifies_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    port = _gateway_up(deployment)
    containers = deployment.containers()
    assert set(containers) == {"medium", "mini", "micro", "gateway"}
    gateway = containers["gateway"]
    assert not gateway.attrs["HostConfig"].get("DeviceRequests")  # no GPU asked for
    started = {n: c.attrs["State"]["StartedAt"] for n, c in containers.items()}
    assert started["gateway"] > max(started["medium"], started["mini"], started["micro"])

    directory = deployment.home / deployment.name
    env_file = directory / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    keys = parse_env(env_file.read_text(), str(env_file))
    app_key = keys["QWEN_DEPLOY_GATEWAY_KEY_APP"]
    compose = (directory / "compose.yaml").read_text()
    assert app_key not in compose and "test-key-mini" not in compose
    service = yaml.safe_load(compose)["services"]["gateway"]
    assert service["depends_on"] == {
        t: {"condition": "service_healthy"} for t in ("medium", "mini", "micro")
    }
    assert "deploy" not in service  # no device reservation
    # up's verification ran the gateway's checks too.
    state = json.loads((directory / "state.json").read_text())
    assert state["verify"]["gateway"]["ok"] is True

    answer = requests.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        headers={"Authorization": f"Bearer {app_key}"},
        json={"model": "MINI", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-qwen-deploy-tier"] == "mini"
    wrong = requests.get(
        f"http://127.0.0.1:{port}/v1/models",
        headers={"Authorization": "Bearer test-key-mini"},  # a tier's key is not a client's
        timeout=10,
    )
    assert wrong.status_code == 401

    status = deployment.cli("status", "--json")
    assert status.exit_code == 0, status.output
    rows = {r["service"]: r for r in json.loads(status.stdout)["services"]}
    assert rows["gateway"]["in_plan"] is True and rows["gateway"]["up_to_date"] is True, rows
    assert rows["gateway"]["port"] == port

    guide = deployment.cli("endpoints", "--json", "--show-keys")
    assert guide.exit_code == 0, guide.output
    entry = json.loads(guide.stdout)["gateway"]
    assert entry["url"] == f"http://127.0.0.1:{port}" and entry["api_key"] == app_key
    # The guide's shell examples work as printed, the key read from .env as the guide says.
    masked = deployment.cli("endpoints", "--json")  # keys masked: examples use $VARIABLES
    examples = json.loads(masked.stdout)["gateway"]["examples"]
    for name in ("curl_chat", "curl_utf8_file", "curl_models"):
        script = f"set -a; . {env_file}; set +a\n{examples[name]}"
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert {"choices", "data"} & set(json.loads(done.stdout)), (name, done.stdout)
    text = deployment.cli("endpoints")
    assert text.stdout.index("Gateway") < text.stdout.index("Tiers, directly")

    logs = deployment.cli("logs", "gateway", "--tail", "20")
    assert logs.exit_code == 0, logs.output
    assert "Uvicorn running" in logs.stdout or "Application startup complete" in logs.stdout


def test_up_again_restart_and_down_treat_the_gateway_as_a_service(
    deployment: Deployment,
) -> None:
    port = _gateway_up(deployment)
    before = deployment.containers()["gateway"]
    again = deployment.up("--no-verify")
    assert again.exit_code == 0, again.output
    assert deployment.containers()["gateway"].id == before.id  # unchanged: left alone

    restarted = deployment.cli("restart", "gateway")
    assert restarted.exit_code == 0, restarted.output
    after = deployment.containers()
    assert after["gateway"].id == before.id
    assert after["gateway"].attrs["State"]["StartedAt"] > before.attrs["State"]["StartedAt"]
    assert after["mini"].attrs["State"]["StartedAt"] < after["gateway"].attrs["State"]["StartedAt"]
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    checked = deployment.cli("verify", "gateway")
    assert checked.exit_code == 0, checked.output

    # A changed gateway section recreates the gateway only; the tiers keep running.
    tiers = {n: c.id for n, c in after.items() if n != "gateway"}
    deployment.write_profile(gateway={"port": port, "fallback": "larger"})
    changed = deployment.up("--no-verify")
    assert changed.exit_code == 0, changed.output
    now = deployment.ids()
    assert now["gateway"] != before.id
    assert {n: i for n, i in now.items() if n != "gateway"} == tiers

    # Without the section, up removes the gateway's container.
    deployment.write_profile()
    dropped = deployment.up("--no-verify")
    assert dropped.exit_code == 0, dropped.output
    assert set(deployment.containers()) == {"medium", "mini", "micro"}

    deployment.write_profile(gateway={"port": port})
    assert deployment.up("--no-verify").exit_code == 0
    down = deployment.cli("down")
    assert down.exit_code == 0, down.output
    assert deployment.containers() == {}


def test_a_gateway_port_taken_is_refused_before_anything_starts(deployment: Deployment) -> None:
    taken = deployment.ports["mini"]
    deployment.write_profile(gateway={"port": taken})
    result = deployment.up()
    assert result.exit_code != 0
    assert f"gateway.port: {taken} is already used by services.mini" in result.stderr
    assert deployment.containers() == {}

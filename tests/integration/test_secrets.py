"""API keys, the Hugging Face token, open endpoints and bind addresses on a real deployment:
keys live only in .env (0600, the user's) and the containers' environment; no command prints
them unless asked; the token never reaches a file or a label; serving without a key takes the
profile's `auth: none` and `--allow-unauthenticated`, and says so."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import pytest
import requests
import yaml

from deployer.errors import ExitCode
from tests.helpers.deployments import Deployment

pytestmark = pytest.mark.integration

TOKEN = "hf_qwenDeployTestToken0123456789"


def _env(container: Any) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


def _models(port: int, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"http://127.0.0.1:{port}/v1/models"
    return requests.get(url, headers=headers, timeout=10).status_code


def test_generated_keys_stay_in_env_and_containers(deployment: Deployment) -> None:
    generated = {"api_key": None}
    deployment.write_profile(medium=generated, mini=generated, micro=generated)
    up = deployment.up()
    assert up.exit_code == 0, up.output
    directory = deployment.home / deployment.name
    env_file = directory / ".env"
    info = env_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()
    keys = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in env_file.read_text().splitlines()
        if line.startswith("QWEN_DEPLOY_API_KEY_")
    }
    assert len(keys) == 3 and len(set(keys.values())) == 3
    assert all(len(k) >= 43 for k in keys.values())  # secrets.token_urlsafe(32)

    said = [up.output]
    for args in (
        ("plan", "--json", "-p", str(deployment.profile), "--gpus-file", str(deployment.gpus_file)),
        ("status",),
        ("status", "--json"),
        ("logs",),
        ("verify", "--json"),
        ("endpoints",),
        ("endpoints", "--format", "json"),
        (
            "up",
            "--dry-run",
            "-p",
            str(deployment.profile),
            "--gpus-file",
            str(deployment.gpus_file),
        ),
    ):
        result = deployment.cli(*args)
        assert result.exit_code == 0, (args, result.output)
        said.append(result.output)
    files = [(directory / name).read_text() for name in ("compose.yaml", "plan.json", "state.json")]
    for name, container in deployment.containers().items():
        attrs = container.attrs
        var = f"QWEN_DEPLOY_API_KEY_{name.upper()}"
        assert _env(container)["VLLM_API_KEY"] == keys[var]  # the container serves with it
        assert _models(deployment.ports[name]) == 401
        assert _models(deployment.ports[name], keys[var]) == 200
        said.append(json.dumps(attrs["Config"]["Labels"]))
        said.append(json.dumps([attrs["Config"]["Cmd"], attrs["Config"]["Entrypoint"]]))
    for key in keys.values():
        for text in said + files:
            assert key not in text

    shown = deployment.cli("endpoints", "--show-keys")
    assert shown.exit_code == 0
    assert all(key in shown.output for key in keys.values())  # only when asked


def test_hf_token_from_a_file_reaches_the_containers_and_nothing_else(
    deployment: Deployment, tmp_path: Any
) -> None:
    token_file = tmp_path / "hf-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    up = deployment.up("--hf-token-file", str(token_file))
    assert up.exit_code == 0, up.output
    assert TOKEN not in up.output
    directory = deployment.home / deployment.name
    compose = (directory / "compose.yaml").read_text()
    assert 'HF_TOKEN: "${HF_TOKEN:-}"' in compose  # compose takes it from the environment
    for name in ("compose.yaml", ".env", "plan.json"):
        assert TOKEN not in (directory / name).read_text()
    for container in deployment.containers().values():
        assert _env(container)["HF_TOKEN"] == TOKEN
        assert TOKEN not in json.dumps(container.attrs["Config"]["Labels"])
        assert TOKEN not in json.dumps(container.attrs["Config"]["Cmd"])
    # A token does not change what the containers are: without it, nothing is recreated.
    before = deployment.ids()
    again = deployment.up("--no-verify")
    assert again.exit_code == 0, again.output
    assert "(3 unchanged)" in again.stdout
    assert deployment.ids() == before


def test_serving_without_a_key_needs_the_profile_and_the_flag_and_warns(
    deployment: Deployment,
) -> None:
    deployment.write_profile(micro={"api_key": None, "auth": "none"})
    refused = deployment.up()
    assert refused.exit_code == ExitCode.PROFILE, refused.output
    assert "services.micro.auth: none would serve 127.0.0.1:" in refused.stderr
    assert "--allow-unauthenticated" in refused.stderr
    assert deployment.containers() == {}  # nothing started
    assert not (deployment.home / deployment.name / "plan.json").exists()

    up = deployment.up("--allow-unauthenticated")
    assert up.exit_code == 0, up.output
    port = deployment.ports["micro"]
    assert f"warning: micro serves 127.0.0.1:{port} WITHOUT an API key" in up.stderr
    assert f"note: micro: auth: none: 127.0.0.1:{port} serves without an API key" in up.stderr
    assert _models(port) == 200
    assert _models(deployment.ports["mini"]) == 401  # the others still need their keys
    micro = deployment.containers()["micro"]
    assert "VLLM_API_KEY" not in _env(micro)
    directory = deployment.home / deployment.name
    assert "QWEN_DEPLOY_API_KEY_MICRO" not in (directory / ".env").read_text()
    compose = yaml.safe_load((directory / "compose.yaml").read_text())
    assert "VLLM_API_KEY" not in compose["services"]["micro"]["environment"]
    assert "VLLM_API_KEY" in compose["services"]["mini"]["environment"]

    verify = deployment.cli("verify", "--json")
    assert verify.exit_code == 0, verify.output
    report = {s["service"]: s for s in json.loads(verify.stdout)["services"]}
    auth = {c["check"]: c for c in report["micro"]["checks"]}["auth"]
    assert auth["ok"] and auth["detail"].startswith("open without a key (auth: none)")
    assert all(c["ok"] and not c["skipped"] for c in report["micro"]["checks"])


def test_ports_bind_loopback_unless_the_profile_says_otherwise(deployment: Deployment) -> None:
    deployment.write_profile(micro={"bind": "0.0.0.0"})
    up = deployment.up("--no-verify")
    assert up.exit_code == 0, up.output
    assert "note: micro: port" in up.stderr and "binds every interface" in up.stderr
    for name, container in deployment.containers().items():
        [binding] = container.attrs["NetworkSettings"]["Ports"]["8000/tcp"]
        expected = "0.0.0.0" if name == "micro" else "127.0.0.1"
        assert binding == {"HostIp": expected, "HostPort": str(deployment.ports[name])}


INJECTION = 'evil"); __import__("os").system("id"); ("'


def test_endpoints_mask_short_keys_and_quote_names_in_examples(deployment: Deployment) -> None:
    """D13 and D27 on a running deployment: the shortest key shows 2 of its 8 characters, and
    a served name full of quotes is one string literal in the Python examples, not code."""
    import ast

    deployment.write_profile(mini={"api_key": "abcdefgh", "served_model_name": INJECTION})
    up = deployment.up()
    assert up.exit_code == 0, up.output
    guide = deployment.cli("endpoints", "--json")
    assert guide.exit_code == 0, guide.output
    tiers = {t["service"]: t for t in json.loads(guide.stdout)["tiers"]}
    mini = tiers["mini"]
    assert mini["api_key"] == "a…h"
    markdown = deployment.cli("endpoints").stdout
    assert "abcdefgh" not in markdown and "abcd" not in markdown
    for name in ("python_openai", "python_streaming", "python_thinking"):
        tree = ast.parse(mini["examples"][name])
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        assert not any(getattr(c.func, "id", None) == "__import__" for c in calls), name
        create = next(c for c in calls if getattr(c.func, "attr", None) == "create")
        model = next(k.value for k in create.keywords if k.arg == "model")
        assert isinstance(model, ast.Constant) and model.value == INJECTION, name
    # The name the examples send is the one the server answers to.
    models = requests.get(
        f"http://127.0.0.1:{deployment.ports['mini']}/v1/models",
        headers={"Authorization": "Bearer abcdefgh"},
        timeout=10,
    ).json()
    assert [m["id"] for m in models["data"]] == [INJECTION]

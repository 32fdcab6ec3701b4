"""`qwen-deploy gateway serve` through the real entry point, on a rendered deployment whose
tiers run as stand-in processes on free ports."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from deployer.deployment import parse_env
from deployer.profiles import PROFILES_DIR
from tests.integration.gateway_support import ROOT, TierProc, free_port, wait_http

pytestmark = pytest.mark.integration
GPUS = ROOT / "tests" / "fixtures" / "gpus" / "3x-rtx4090.json"


def cli(home: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployer.cli.main", "--home", str(home), "-d", "gwcli", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, **kwargs,  # type: ignore[call-overload]
    )  # fmt: skip


def test_gateway_serve_fronts_a_rendered_deployment(tmp_path: Path) -> None:
    profile = yaml.safe_load((PROFILES_DIR / "tri-tier.yaml").read_text())
    profile.pop("gateway", None)
    for service in profile["services"].values():
        service["port"] = free_port()
    profile_file = tmp_path / "profile.yaml"
    profile_file.write_text(yaml.safe_dump(profile))
    home = tmp_path / "home"
    rendered = cli(home, "render", "--profile", str(profile_file), "--gpus-file", str(GPUS),
                   "--engine", "stand-in")  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    env_file = home / "gwcli" / ".env"
    env = parse_env(env_file.read_text(), str(env_file))
    tiers = []
    for name, service in profile["services"].items():
        tier = TierProc(name, service["model"], service["model"], service["port"],
                        env[f"QWEN_DEPLOY_API_KEY_{name.upper()}"],
                        service.get("context", 16384), tmp_path)  # fmt: skip
        tier.start()
        tiers.append(tier)
    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    serve = subprocess.Popen(
        [sys.executable, "-m", "deployer.cli.main", "--home", str(home), "-d", "gwcli",
         "gateway", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=serve)
        env = parse_env(env_file.read_text(), str(env_file))
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        key = env["QWEN_DEPLOY_GATEWAY_KEY_DEFAULT"]
        assert "QWEN_DEPLOY_API_KEY_MINI" in env  # the tiers' keys are kept
        deadline = time.monotonic() + 10
        while requests.get(f"http://127.0.0.1:{port}/api/v1/health").json()["status"] != "healthy":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "8b", "messages": [{"role": "user", "content": "hé"}], "max_tokens": 8},
            timeout=30,
        )
        assert answer.status_code == 200 and answer.headers["x-qwen-deploy-tier"] == "mini"
    finally:
        serve.send_signal(signal.SIGINT)
        code = serve.wait(20)
        for tier in tiers:
            tier.stop()
    output = (tmp_path / "serve.log").read_text()
    assert code == 0, output
    assert "wrote a new gateway key QWEN_DEPLOY_GATEWAY_KEY_DEFAULT" in output
    assert key not in output  # the key is named, never printed


def test_gateway_serve_without_a_deployment_says_so(tmp_path: Path) -> None:
    result = cli(tmp_path, "gateway", "serve")
    assert result.returncode == 9
    assert result.stderr.startswith("error: no deployment 'gwcli'")
    assert len(result.stderr.strip().splitlines()) == 1

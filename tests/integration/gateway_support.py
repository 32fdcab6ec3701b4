"""Real processes for the gateway tests: stand-in tiers (the stand-in's own entry point, one
process per tier) and the gateway under uvicorn (`python -m deployer.gateway`), on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import requests

from deployer.gateway.config import GatewaySpec, Limits, resolve_gateway_keys
from deployer.planner import DeploymentPlan
from tests.helpers import tri_tier_plan

ROOT = Path(__file__).resolve().parents[2]
FAST = {
    "STANDIN_LOAD_SECONDS": "0",
    "STANDIN_TTFT_MS": "1",
    "STANDIN_TOKENS_PER_SECOND": "2000",
    "STANDIN_THINKING_TOKENS": "8",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, deadline_s: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {deadline_s} s")


@dataclass
class TierProc:
    """One stand-in process serving a planned tier on its own port."""

    name: str
    model: str
    served: str
    port: int
    key: str
    max_model_len: int
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, **env: str) -> None:
        self.env.update(env)
        argv = [
            sys.executable,
            "-m",
            "deployer.standin.server",
            "serve",
            self.model,
            "--served-model-name",
            self.served,
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "--api-key",
            self.key,
            "--max-model-len",
            str(self.max_model_len),
            "--reasoning-parser",
            "qwen3",
            "--disable-log-stats",
        ]
        environ = {**os.environ, **FAST, "STANDIN_LEDGER_DIR": str(self.workdir / "ledger")}
        environ.pop("NVIDIA_VISIBLE_DEVICES", None)
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 (the process owns it)
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env={**environ, **self.env}, stdout=log, stderr=log
        )
        if wait:
            wait_http(self.url + "/health", proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def metrics(self) -> dict[str, float]:
        text = requests.get(self.url + "/metrics", timeout=5).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("vllm:"):
                name, value = line.rsplit(" ", 1)
                out[name] = out.get(name, 0.0) + float(value)
        return out

    def counter(self, prefix: str) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))


@dataclass
class GatewayProc:
    plan_path: Path
    env_path: Path
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "deployer.gateway",
            "--plan",
            str(self.plan_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--upstream",
            "host",
            "--log-level",
            "warning",
        ]
        environ = {**os.environ, "QWEN_DEPLOY_ENV_FILE": str(self.env_path)}
        log = open(self.workdir / "gateway.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=log, stderr=log)
        wait_http(self.url + "/health", proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def log(self) -> str:
        return (self.workdir / "gateway.log").read_text(errors="replace")


@dataclass
class Deployment:
    plan: DeploymentPlan
    tiers: dict[str, TierProc]
    gateway: GatewayProc
    keys: dict[str, str]  # gateway key name -> secret

    def headers(self, key: str = "default") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}

    def stop(self) -> None:
        self.gateway.stop()
        for tier in self.tiers.values():
            tier.stop()


def start_deployment(
    workdir: Path,
    spec: GatewaySpec | None = None,
    tier_env: dict[str, dict[str, str]] | None = None,
    start_tiers: bool = True,
) -> Deployment:
    """The tri-tier plan on free ports, one stand-in per tier, and the gateway in front."""
    base = tri_tier_plan()
    services = tuple(replace(s, port=free_port()) for s in base.services)
    the_plan = replace(base, deployment="gwtest", services=services)
    spec = spec or GatewaySpec(
        limits=Limits(
            health_interval_s=0.3,
            first_byte_timeout_s=3.0,
            idle_timeout_s=3.0,
            keepalive_s=0.5,
            queue_timeout_s=2.0,
        )
    )
    secrets: dict[str, str] = {}
    tiers = {}
    for service in services:
        key = f"tier-key-{service.name}-0123"
        secrets[service.api_key_env] = key
        tiers[service.name] = TierProc(
            service.name,
            service.model,
            service.served_model_name,
            service.port,
            key,
            service.max_model_len,
            workdir,
            dict((tier_env or {}).get(service.name, {})),
        )
    gateway_secrets = resolve_gateway_keys(spec, {}, {})
    secrets.update(gateway_secrets)
    data: dict[str, Any] = the_plan.to_dict()
    data["gateway"] = spec.to_dict()
    plan_path = workdir / "plan.json"
    plan_path.write_text(json.dumps(data))
    env_path = workdir / ".env"
    env_path.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    env_path.chmod(0o600)
    if start_tiers:
        for tier in tiers.values():
            tier.start()
    gateway = GatewayProc(plan_path, env_path, free_port(), workdir)
    gateway.start()
    keys = {k.name: gateway_secrets[k.env_var] for k in spec.keys}
    return Deployment(the_plan, tiers, gateway, keys)


def wait_state(deployment: Deployment, tier: str, state: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        tiers = requests.get(deployment.gateway.url + "/health", timeout=5).json()["tiers"]
        if tiers[tier]["state"] == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"tier {tier} never became {state}: {tiers}")

"""`verify` against real stand-in containers over real HTTP: each check passes on a healthy
server and fails for the right reason in the matching fault mode."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from deployer.catalog import Catalog
from deployer.cli.main import cli
from deployer.deployment import ENV_FILE, PLAN_FILE, DeploymentDir, render_env
from deployer.errors import ExitCode
from deployer.planner import DeploymentPlan, ServicePlan
from deployer.spec import vllm_args
from deployer.verify import CHECKS, ServiceVerification, verify_plan, verify_service
from deployer.vllm_pin import VLLM_VERSION
from tests.helpers import tri_tier_plan
from tests.helpers.standin import Standin, StartStandin

pytestmark = pytest.mark.integration

KEY = "test-key-micro-0123"


@pytest.fixture(scope="module")
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    return tri_tier_plan(catalog)


@pytest.fixture(scope="module")
def micro(tri_tier: DeploymentPlan) -> ServicePlan:
    return tri_tier.service("micro")


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def start(
    standin: StartStandin, service: ServicePlan, env: dict[str, str] | None = None, **kw: object
) -> tuple[Standin, ServicePlan]:
    """The planned service's real `vllm serve` arguments, in a stand-in; the plan's port
    becomes the container's published port."""
    instance = standin(
        *vllm_args(service),
        env={"VLLM_API_KEY": KEY, **(env or {})},
        gpus=",".join(map(str, service.gpus)),
        **kw,
    )
    return instance, replace(service, port=instance.port)


def run(
    session: requests.Session, instance: Standin, service: ServicePlan, deadline_s: float = 60
) -> ServiceVerification:
    return verify_service(session, instance.url, service, KEY, deadline_s=deadline_s)


def failed(result: ServiceVerification) -> dict[str, str]:
    return {c.check: c.detail for c in result.checks if not c.ok}


def test_every_check_passes_on_a_healthy_standin(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro)
    result = run(session, instance, service)
    assert result.ok, failed(result)
    assert [c.check for c in result.checks] == list(CHECKS)
    assert result.check("health").metrics["version"] == VLLM_VERSION
    assert result.check("models").metrics["max_model_len"] == micro.max_model_len
    assert result.check("auth").metrics == {"no_key": 401, "wrong_key": 401}
    chat = result.check("chat").metrics
    assert chat["completion_tokens"] > 0 and chat["tokens_per_second"] > 0
    stream = result.check("stream").metrics
    assert stream["chunks"] > 1 and stream["ttft_ms"] is not None
    thinking = result.check("thinking").metrics
    assert thinking["reasoning_chars"] > 0 and thinking["content_chars"] > 0
    assert all(c.elapsed_ms > 0 for c in result.checks)


def test_no_auth_fails_the_auth_check(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro, {"STANDIN_FAULT": "no_auth"})
    result = run(session, instance, service)
    assert list(failed(result)) == ["auth"]
    assert "answered 200 with no key" in failed(result)["auth"]
    assert "open to anyone" in failed(result)["auth"]


def test_wrong_model_fails_the_models_check(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro, {"STANDIN_FAULT": "wrong_model:Qwen/Qwen3-0.6B"})
    result = run(session, instance, service)
    detail = failed(result)["models"]
    assert "serves Qwen/Qwen3-0.6B" in detail and "Qwen/Qwen3-1.7B-FP8" in detail
    assert result.check("health").ok and result.check("auth").ok


def test_a_wrong_key_in_the_env_file_fails_with_401(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro)
    result = verify_service(session, instance.url, service, "not-the-key-0000", deadline_s=30)
    assert "401" in failed(result)["models"]
    assert {"models", "chat", "stream", "thinking"} <= set(failed(result))
    assert result.check("auth").ok  # the server itself does refuse strangers


def test_a_service_without_a_key_in_the_env_file_is_not_queried(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro)
    result = verify_service(session, instance.url, service, "", deadline_s=30)
    assert result.check("health").ok and result.check("auth").ok
    for check in result.checks:
        if check.check in ("health", "auth"):
            continue
        assert check.skipped and not check.ok
        assert "QWEN_DEPLOY_API_KEY_MICRO" in check.detail


def test_broken_stream_fails_the_stream_check(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro, {"STANDIN_FAULT": "broken_stream"})
    result = run(session, instance, service)
    assert list(failed(result)) == ["stream"]
    assert "[DONE]" in failed(result)["stream"] or "broke" in failed(result)["stream"]


def test_empty_content_fails_the_chat_check(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro, {"STANDIN_FAULT": "empty_content"})
    result = run(session, instance, service)
    assert "empty content" in failed(result)["chat"]


def test_thinking_that_exhausts_max_tokens_is_explained(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(
        standin,
        micro,
        {"STANDIN_THINKING_TOKENS": "100000", "STANDIN_TOKENS_PER_SECOND": "20000"},
    )
    result = run(session, instance, service)
    assert list(failed(result)) == ["thinking"]
    detail = failed(result)["thinking"]
    assert "ran out inside the thinking block" in detail
    assert "raise max_tokens" in detail and '"enable_thinking": false' in detail
    assert result.check("thinking").metrics["finish_reason"] == "length"


def test_reasoning_not_separated_without_the_parser(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    # The plan expects a reasoning parser but the container runs without one.
    args = [a for a in vllm_args(micro) if a not in ("--reasoning-parser", "qwen3")]
    instance = standin(*args, env={"VLLM_API_KEY": KEY}, gpus="2")
    result = run(session, instance, replace(micro, port=instance.port))
    assert list(failed(result)) == ["thinking"]
    assert "not separated" in failed(result)["thinking"]


def test_slow_start_within_the_deadline_passes_after_retries(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro, {"STANDIN_LOAD_SECONDS": "4"}, wait=False)
    began = time.monotonic()
    result = run(session, instance, service, deadline_s=60)
    assert result.ok, failed(result)
    assert result.check("health").metrics["attempts"] > 1
    assert time.monotonic() - began >= 3


def test_never_healthy_fails_health_at_the_deadline(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro, {"STANDIN_FAULT": "never_healthy"})
    began = time.monotonic()
    result = run(session, instance, service, deadline_s=4)
    took = time.monotonic() - began
    assert 3.5 <= took < 10
    health = result.check("health")
    assert not health.ok and "deadline" in health.detail and "HTTP 503" in health.detail
    assert all(c.skipped and not c.ok for c in result.checks[1:])


def test_a_service_that_never_loads_does_not_starve_the_next_one(
    standin: StartStandin,
    tri_tier: DeploymentPlan,
    micro: ServicePlan,
    session: requests.Session,
) -> None:
    _, stuck = start(standin, micro, {"STANDIN_FAULT": "never_healthy"})
    _, fine = start(standin, replace(micro, name="micro2"))
    two = replace(tri_tier, services=(stuck, fine))
    keys = {stuck.api_key_env: KEY, fine.api_key_env: KEY}
    report = verify_plan(session, two, keys, deadline_s=3)
    assert not report.ok
    assert not report.service("micro").ok and report.service("micro2").ok
    assert report.summary().startswith("micro/health: HTTP 503 for")
    assert report.to_dict()["services"][1]["ok"] is True


def test_a_container_that_dies_mid_way_fails_the_later_checks(
    standin: StartStandin, micro: ServicePlan, session: requests.Session
) -> None:
    instance, service = start(standin, micro, {"STANDIN_FAULT": "die_after:1"})
    result = run(session, instance, service, deadline_s=8)
    assert result.check("chat").ok
    assert not result.check("stream").ok


# --- through the CLI --------------------------------------------------------------------------


def deployment(home: Path, tri_tier: DeploymentPlan, service: ServicePlan) -> DeploymentDir:
    # One tier alone, without the shipped profile's gateway in front of it.
    one = replace(tri_tier, services=(service,), start_waves=((service.name,),), gateway=None)
    directory = DeploymentDir.named(home, one.deployment)
    directory.path.mkdir(parents=True)
    directory.file(PLAN_FILE).write_text(json.dumps(one.to_dict()))
    directory.file(ENV_FILE).write_text(render_env({service.api_key_env: KEY}))
    return directory


def test_verify_json_through_the_cli_records_the_result(
    tmp_path: Path, standin: StartStandin, tri_tier: DeploymentPlan, micro: ServicePlan
) -> None:
    _, service = start(standin, micro)
    directory = deployment(tmp_path, tri_tier, service)
    directory.save_state({"runtime": {"kept": True}})  # other commands' state survives
    result = CliRunner().invoke(
        cli, ["--home", str(tmp_path), "verify", "MICRO", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["kind"] == "verification" and data["schema_version"] == 1
    assert data["ok"] is True
    (only,) = data["services"]
    assert only["service"] == "micro" and only["base_url"] == f"http://127.0.0.1:{service.port}"
    assert [c["check"] for c in only["checks"]] == list(CHECKS)
    assert only["checks"][4]["metrics"]["ttft_ms"] is not None
    state = directory.load_state()["verify"]["micro"]
    assert state["ok"] is True and state["failed"] == [] and state["at"] == data["started_at"]
    assert directory.load_state()["runtime"] == {"kept": True}
    assert KEY not in result.output


def test_verify_table_names_the_failed_check_and_exits_non_zero(
    tmp_path: Path, standin: StartStandin, tri_tier: DeploymentPlan, micro: ServicePlan
) -> None:
    _, service = start(standin, micro, {"STANDIN_FAULT": "no_auth"})
    directory = deployment(tmp_path, tri_tier, service)
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "verify", "--deadline", "30"])
    assert result.exit_code == ExitCode.VERIFY
    lines = result.output.splitlines()
    assert lines[0].split() == ["SERVICE", "CHECK", "RESULT", "TIME", "DETAIL"]
    auth = next(line for line in lines if line.split()[:2] == ["micro", "auth"])
    assert "FAIL" in auth and "open to anyone" in auth
    assert "1 of 6 checks failed" in result.output
    assert "error: verification failed: micro/auth: " in result.output
    assert directory.load_state()["verify"]["micro"]["failed"] == ["auth"]


def test_another_server_on_an_exited_services_port_is_named_on_one_line(
    deployment: Any, tmp_path: Path
) -> None:
    # D24: the service's container is stopped and a plain HTTP server answers on its port,
    # serving files named like vLLM's endpoints and an HTML page for POST.
    up = deployment.up("--no-verify")
    assert up.exit_code == 0, up.output
    deployment.containers()["micro"].stop(timeout=5)
    site = tmp_path / "site"
    (site / "v1").mkdir(parents=True)
    (site / "health").write_text("ok")
    (site / "v1" / "models").write_text(json.dumps({"data": [{"id": "something-else"}]}))
    port = deployment.ports["micro"]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            time.sleep(0.1)
        result = deployment.cli("verify", "micro", "--deadline", "5")
    finally:
        server.terminate()
        server.wait(10)
    assert result.exit_code == ExitCode.VERIFY, result.output
    [line] = result.stderr.strip().splitlines()  # one line: no HTML page inside it
    assert line.startswith("error: verification failed:")
    assert "<" not in line and "DOCTYPE" not in line
    assert "the container of micro is exited, so another process answers on port" in line
    assert "VLLM_API_KEY" not in line  # the container is not what answered
    assert "HTTP 501" in line  # http.server's answer to POST, by its status and title

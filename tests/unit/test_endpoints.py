"""The usage guide from real plans: tri-tier on a 3-GPU box and a single-GPU profile."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from deployer.catalog import Catalog
from deployer.cli.cmd_verify import COMMANDS
from deployer.cli.main import cli
from deployer.deployment import ENV_FILE, PLAN_FILE, render_env
from deployer.endpoints import base_url_for, client_host, endpoints_guide, mask_key, to_markdown
from deployer.errors import ExitCode
from deployer.gpus import inventory_from_dict
from deployer.planner import DeploymentPlan, plan
from deployer.profiles import load_profile

KEYS = {
    "QWEN_DEPLOY_API_KEY_MEDIUM": "test-key-medium",
    "QWEN_DEPLOY_API_KEY_MINI": "test-key-mini",
    "QWEN_DEPLOY_API_KEY_MICRO": "test-key-micro",
}


def rtx4090(index: int) -> dict[str, Any]:
    return {
        "index": index,
        "name": "NVIDIA GeForce RTX 4090",
        "memory_total_mib": 24564,
        "memory_used_mib": 410,
        "compute_capability": "8.9",
    }


@pytest.fixture(scope="module")
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    box = inventory_from_dict(
        {
            "driver_version": "550.54.15",
            "cuda_version": "12.4",
            "gpus": [rtx4090(i) for i in range(3)],
        }
    )
    return plan(box, load_profile("tri-tier"), catalog)


def tier(guide: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in guide["tiers"] if t["service"] == name)


def test_mask_key_shows_at_most_a_quarter_and_never_more_than_four_characters() -> None:
    assert mask_key("test-key-medium") == "te…m"  # 15 characters: 3 shown
    assert mask_key("12345678") == "1…8"  # the shortest key: 2 of 8 shown
    assert mask_key("k" * 43).count("k") == 4  # a generated key: 4 of 43
    for n in range(8, 257):
        key = "".join(chr(ord("a") + i % 26) for i in range(n))
        shown = len(mask_key(key)) - 1
        assert shown <= min(4, n // 4), (n, mask_key(key))
    assert mask_key("") == "(not set)"
    assert mask_key(None) == "(not set)"


def test_guide_lists_every_tier_with_url_model_context_and_masked_key(
    tri_tier: DeploymentPlan,
) -> None:
    guide = endpoints_guide(tri_tier, KEYS, show_keys=False)
    assert [t["service"] for t in guide["tiers"]] == ["medium", "mini", "micro"]
    medium = tier(guide, "medium")
    assert medium["base_url"] == "http://127.0.0.1:5002/v1"
    assert medium["model"] == "Qwen/Qwen3-32B-AWQ"
    assert medium["context_length"] == 32768
    assert medium["api_key"] == "te…m"
    assert tier(guide, "mini")["base_url"] == "http://127.0.0.1:5001/v1"
    assert tier(guide, "micro")["model"] == "Qwen/Qwen3-1.7B-FP8"
    assert tier(guide, "micro")["context_length"] == 16384
    # No full key anywhere: not in the fields, not in the examples.
    text = json.dumps(guide) + to_markdown(guide)
    for key in KEYS.values():
        assert key not in text
    assert "$QWEN_DEPLOY_API_KEY_MEDIUM" in medium["examples"]["curl_models"]


def test_show_keys_prints_keys_in_full_and_in_the_examples(tri_tier: DeploymentPlan) -> None:
    guide = endpoints_guide(tri_tier, KEYS, show_keys=True)
    mini = tier(guide, "mini")
    assert mini["api_key"] == "test-key-mini"
    assert "Authorization: Bearer test-key-mini" in mini["examples"]["curl_chat"]
    assert "api_key='test-key-mini'" in mini["examples"]["python_openai"]
    assert "test-key-mini" in to_markdown(guide)


def test_shared_gpu_advice_names_the_tiers_on_gpu_2(tri_tier: DeploymentPlan) -> None:
    guide = endpoints_guide(tri_tier, KEYS, show_keys=False)
    shared = [a for a in guide["advice"] if a.startswith("GPU 2 is shared")]
    assert len(shared) == 1
    assert "mini and micro" in shared[0] and "slow each other" in shared[0]
    assert not any(a.startswith("GPU 0") for a in guide["advice"])
    assert tier(guide, "mini")["shares_gpu_with"] == ["micro"]
    assert tier(guide, "medium")["shares_gpu_with"] == []
    assert any("backoff" in a for a in guide["advice"])
    assert any("max_tokens" in a and "enable_thinking" in a for a in guide["advice"])


def test_sampling_defaults_come_from_the_plan(tri_tier: DeploymentPlan) -> None:
    guide = endpoints_guide(tri_tier, KEYS, show_keys=False)
    sampling = tier(guide, "medium")["sampling"]
    assert sampling["server_defaults"] == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "min_p": 0.0,
    }
    assert sampling["non_thinking"]["temperature"] == 0.7


def test_markdown_has_curl_openai_streaming_and_thinking_examples(
    tri_tier: DeploymentPlan,
) -> None:
    text = to_markdown(endpoints_guide(tri_tier, KEYS, show_keys=False, env_file="/d/.env"))
    assert "curl http://127.0.0.1:5000/v1/chat/completions" in text
    assert 'client = OpenAI(base_url="http://127.0.0.1:5002/v1"' in text
    assert "stream=True" in text and "curl -N" in text
    assert '"enable_thinking": false' in text and '"enable_thinking": True' in text
    assert "| mini | `Qwen/Qwen3-8B-AWQ` | `http://127.0.0.1:5001/v1` | 32768 | `te…i` |" in text
    assert "set -a; . /d/.env; set +a" in text
    assert "## Operational advice" in text
    assert "GPU 2 is shared by mini and micro" in text


def test_curl_bodies_are_valid_json(tri_tier: DeploymentPlan) -> None:
    examples = tier(endpoints_guide(tri_tier, KEYS, show_keys=False), "mini")["examples"]
    for name in ("curl_chat", "curl_stream", "curl_thinking_on"):
        body = examples[name].split("-d '", 1)[1].rstrip("'")
        data = json.loads(body)
        assert data["model"] == "Qwen/Qwen3-8B-AWQ"
    assert json.loads(examples["curl_stream"].split("-d '", 1)[1].rstrip("'"))["stream"] is True


def test_host_override_and_wildcard_bind(tri_tier: DeploymentPlan) -> None:
    micro = tri_tier.service("micro")
    assert base_url_for(micro) == "http://127.0.0.1:5000"
    assert base_url_for(micro, "gpu-box.lan") == "http://gpu-box.lan:5000"
    assert client_host(replace(micro, bind="0.0.0.0")) == "127.0.0.1"
    assert client_host(replace(micro, bind="::1")) == "[::1]"
    guide = endpoints_guide(tri_tier, KEYS, show_keys=False, host="gpu-box.lan")
    assert tier(guide, "micro")["base_url"] == "http://gpu-box.lan:5000/v1"


def test_single_gpu_profile_has_no_shared_gpu_advice_and_a_missing_key(catalog: Catalog) -> None:
    box = inventory_from_dict({"driver_version": "x", "cuda_version": "y", "gpus": [rtx4090(0)]})
    single = plan(box, load_profile("single-gpu"), catalog)
    guide = endpoints_guide(single, {}, show_keys=False)
    assert not any("shared" in a for a in guide["advice"])
    assert guide["tiers"][0]["api_key"] is None
    assert "(not set)" in to_markdown(guide)


def write_deployment(home: Path, deployment: DeploymentPlan, keys: dict[str, str]) -> Path:
    path = home / deployment.deployment
    path.mkdir(parents=True)
    (path / PLAN_FILE).write_text(json.dumps(deployment.to_dict()))
    (path / ENV_FILE).write_text(render_env(keys))
    return path


def test_endpoints_command_prints_markdown_and_json(
    tmp_path: Path, tri_tier: DeploymentPlan
) -> None:
    path = write_deployment(tmp_path, tri_tier, KEYS)
    runner = CliRunner()
    result = runner.invoke(cli, ["--home", str(tmp_path), "endpoints"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# Endpoints of deployment `qwen3`")
    assert "te…m" in result.output and "test-key-medium" not in result.output
    assert f"set -a; . {path / ENV_FILE}; set +a" in result.output
    as_json = runner.invoke(
        cli, ["--home", str(tmp_path), "endpoints", "--format", "json", "--show-keys"]
    )
    data = json.loads(as_json.output)
    assert data["kind"] == "endpoints" and data["schema_version"] == 1
    assert tier(data, "medium")["api_key"] == "test-key-medium"
    assert tier(data, "mini")["base_url"] == "http://127.0.0.1:5001/v1"


def test_endpoints_without_a_deployment_is_a_state_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "endpoints"])
    assert result.exit_code == ExitCode.STATE
    assert "no deployment 'qwen3'" in result.output


def test_commands_have_an_example_in_their_help() -> None:
    for command in COMMANDS:
        assert "Example: qwen-deploy " in (command.help or "")


def test_open_endpoint_examples_send_no_key(tri_tier: DeploymentPlan) -> None:
    services = tuple(replace(s, auth="none") if s.name == "micro" else s for s in tri_tier.services)
    open_plan = replace(tri_tier, services=services)
    keys = {s.api_key_env: f"key-of-{s.name}-123" for s in services if s.auth != "none"}
    guide = endpoints_guide(open_plan, keys, show_keys=False)
    micro = next(t for t in guide["tiers"] if t["service"] == "micro")
    mini = next(t for t in guide["tiers"] if t["service"] == "mini")
    assert micro["auth"] == "none" and micro["api_key"] is None
    for text in micro["examples"].values():
        assert "Authorization" not in text and "QWEN_DEPLOY_API_KEY" not in text
    assert 'api_key="EMPTY"' in micro["examples"]["python_openai"]
    assert "Authorization: Bearer $QWEN_DEPLOY_API_KEY_MINI" in mini["examples"]["curl_chat"]
    markdown = to_markdown(guide)
    assert "| micro |" in markdown and "none (`auth: none`)" in markdown
    assert "`QWEN_DEPLOY_API_KEY_MICRO`" not in markdown

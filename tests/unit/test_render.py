"""Rendering: the compose file says exactly what the plan says, and keeps secrets out."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.catalog import Catalog
from deployer.deployment import DeploymentDir, parse_env, plan_from_dict
from deployer.errors import StateError
from deployer.planner import DeploymentPlan, PlanOptions, ServicePlan, plan
from deployer.profiles import load_profile, parse_profile
from deployer.render import render_compose, render_files
from deployer.spec import (
    HEALTHCHECK_TEST,
    HF_CACHE_VOLUME,
    STANDIN_LEDGER_DIR,
    STANDIN_LEDGER_VOLUME,
)
from deployer.vllm_pin import HF_CACHE_IN_CONTAINER, STANDIN_IMAGE, VLLM_IMAGE
from tests.helpers import FIXTURES, inventory

# compose v2 validates every file against this schema before anything else (compose-go,
# schema/compose-spec.json, copied unchanged from commit e70e961c3a3acebf0800b882f1afb3dbf1fb74a2).
COMPOSE_SCHEMA = json.loads((FIXTURES / "compose-spec.json").read_text())


def _plan(box: str, profile: str, catalog: Catalog, **options: Any) -> DeploymentPlan:
    return plan(inventory(box), load_profile(profile), catalog, PlanOptions(**options))


def _keys(result: DeploymentPlan) -> dict[str, str]:
    keys = {s.api_key_env: f"secret-{s.name}-0123456789abcdef" for s in result.services}
    for key in result.gateway.keys if result.gateway else ():  # the gateway's client keys
        keys[key.env_var] = f"gateway-{key.name}-0123456789abcdef"
    return keys


def _render(result: DeploymentPlan, keys: dict[str, str] | None = None) -> dict[str, str]:
    return render_files(result, "/srv/qwen-deploy/test", keys or _keys(result))


def _compose(result: DeploymentPlan) -> dict[str, Any]:
    data = yaml.safe_load(render_compose(result, "/srv/qwen-deploy/test"))
    assert isinstance(data, dict)
    return data


def _project(result: DeploymentPlan) -> str:
    """The compose project name: COMPOSE_PROJECT_NAME in .env (compose v1 refuses `name:`)."""
    assert "name" not in _compose(result)
    env = render_files(result, "/srv/qwen-deploy/test", _keys(result))[".env"]
    (value,) = [line.split("=", 1)[1] for line in env.splitlines() if line.startswith("COMPOSE_")]
    return value


def _flags(command: list[str]) -> dict[str, str]:
    """`--flag value` pairs of a `vllm serve` command (the model is the first argument)."""
    flags: dict[str, str] = {}
    position = 1
    while position < len(command):
        flag = command[position]
        assert flag.startswith("--"), f"expected a flag at {position}: {command}"
        if position + 1 < len(command) and not command[position + 1].startswith("--"):
            flags[flag] = command[position + 1]
            position += 2
        else:
            flags[flag] = ""
            position += 1
    return flags


def _assert_service_matches_plan(service: dict[str, Any], planned: ServicePlan) -> None:
    command = service["command"]
    assert all(isinstance(arg, str) for arg in command)
    assert command[0] == planned.model
    flags = _flags(command)
    assert flags["--served-model-name"] == planned.served_model_name
    assert int(flags["--tensor-parallel-size"]) == planned.tensor_parallel_size
    assert float(flags["--gpu-memory-utilization"]) == planned.gpu_memory_utilization
    assert int(flags["--max-model-len"]) == planned.max_model_len
    assert int(flags["--max-num-seqs"]) == planned.max_num_seqs
    assert flags["--reasoning-parser"] == "qwen3"
    assert flags["--port"] == "8000"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [
        {"driver": "nvidia", "device_ids": [str(g) for g in planned.gpus], "capabilities": ["gpu"]}
    ]
    assert service["ports"] == [f"{planned.bind}:{planned.port}:8000"]
    assert service["ipc"] == "host"
    assert service["restart"] == "always"
    assert f"{HF_CACHE_VOLUME}:{HF_CACHE_IN_CONTAINER}" in service["volumes"]
    health = service["healthcheck"]
    assert health["test"] == list(HEALTHCHECK_TEST)
    assert health["interval"] == "10s"
    assert health["start_period"] == f"{planned.startup_timeout_s}s"
    assert isinstance(health["retries"], int)
    labels = service["labels"]
    assert labels["io.qwen-deploy.gpus"] == ",".join(map(str, planned.gpus))
    # compose writes its own com.docker.compose.* labels and rejects ours.
    assert not [k for k in labels if k.startswith("com.docker.compose.")]


# --- tri-tier on three RTX 4090s ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    """The shipped tri-tier's tiers; its gateway's service is tested on its own below."""
    return _tiers_only(_plan("3x-rtx4090", "tri-tier", catalog))


def _tiers_only(result: DeploymentPlan) -> DeploymentPlan:
    return dataclasses.replace(result, gateway=None)


def test_tri_tier_services_carry_the_plans_numbers(tri_tier: DeploymentPlan) -> None:
    compose = _compose(tri_tier)
    assert _project(tri_tier) == "qwen3"
    assert list(compose["services"]) == ["medium", "mini", "micro"]
    for planned in tri_tier.services:
        service = compose["services"][planned.name]
        assert service["image"] == "vllm/vllm-openai:v0.33.0" == VLLM_IMAGE
        assert service["container_name"] == f"qwen3-{planned.name}-1"
        _assert_service_matches_plan(service, planned)
    medium = _flags(compose["services"]["medium"]["command"])
    assert medium["--tensor-parallel-size"] == "2"
    assert medium["--quantization"] == "awq"
    assert _flags(compose["services"]["mini"]["command"])["--quantization"] == "awq"
    assert _flags(compose["services"]["micro"]["command"])["--quantization"] == "fp8"
    assert compose["services"]["medium"]["ports"] == ["127.0.0.1:5002:8000"]
    assert compose["services"]["medium"]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"
    ] == ["0", "1"]


def test_the_shipped_tri_tier_renders_its_gateway_after_the_tiers(catalog: Catalog) -> None:
    result = _plan("3x-rtx4090", "tri-tier", catalog, engine="stand-in")
    assert result.gateway is not None and result.gateway.port == 19100
    files = _render(result)
    compose = yaml.safe_load(files["compose.yaml"])
    assert list(compose["services"]) == ["medium", "mini", "micro", "gateway"]
    gateway = compose["services"]["gateway"]
    assert gateway["image"].startswith("qwen-deploy/gateway:standin-")
    assert gateway["ports"] == ["127.0.0.1:19100:19100"]
    assert "deploy" not in gateway and "volumes" not in gateway  # no GPU, no model cache
    assert gateway["depends_on"] == {
        name: {"condition": "service_healthy"} for name in ("medium", "mini", "micro")
    }
    # Every key only as an interpolation compose must fill in; none in the file itself.
    keys = _keys(result)
    for var in ("QWEN_DEPLOY_API_KEY_MINI", "QWEN_DEPLOY_GATEWAY_KEY_DEFAULT"):
        assert gateway["environment"][var].startswith(f"${{{var}:?")
    assert not [k for k in keys.values() if k in files["compose.yaml"]]
    env = parse_env(files[".env"], ".env")
    assert env["QWEN_DEPLOY_GATEWAY_KEY_DEFAULT"] == keys["QWEN_DEPLOY_GATEWAY_KEY_DEFAULT"]
    assert env["QWEN_DEPLOY_GATEWAY_KEY_ADMIN"] == keys["QWEN_DEPLOY_GATEWAY_KEY_ADMIN"]
    # Its config travels as JSON in its environment: tiers by service name, no secrets.
    config = json.loads(gateway["environment"]["QWEN_DEPLOY_GATEWAY"].replace("$$", "$"))
    assert [t["base_url"] for t in config["tiers"]] == [
        "http://medium:8000",
        "http://mini:8000",
        "http://micro:8000",
    ]
    plan_doc = json.loads(files["plan.json"])
    assert plan_doc["gateway"]["port"] == 19100
    assert plan_from_dict(plan_doc) == result
    missing = {k: v for k, v in keys.items() if "GATEWAY" not in k}
    with pytest.raises(ValueError, match="no secret for gateway key 'default'"):
        render_files(result, "/srv/x", missing)


def test_tri_tier_micro_waits_for_a_healthy_mini(tri_tier: DeploymentPlan) -> None:
    services = _compose(tri_tier)["services"]
    assert services["micro"]["depends_on"] == {"mini": {"condition": "service_healthy"}}
    assert "depends_on" not in services["mini"]
    assert "depends_on" not in services["medium"]


def test_volumes_and_network_are_declared_with_the_names_the_runtime_uses(
    tri_tier: DeploymentPlan,
) -> None:
    compose = _compose(tri_tier)
    assert compose["volumes"] == {HF_CACHE_VOLUME: {"name": HF_CACHE_VOLUME}}
    assert compose["networks"] == {"default": {"name": "qwen3_default"}}


def test_api_keys_stay_in_env_and_compose_only_interpolates_them(tri_tier: DeploymentPlan) -> None:
    files = _render(tri_tier, {s.api_key_env: f"test-key-{s.name}" for s in tri_tier.services})
    text = files["compose.yaml"]
    for service in tri_tier.services:
        assert f"test-key-{service.name}" not in text
    assert "${QWEN_DEPLOY_API_KEY_MEDIUM:?" in text
    env = _compose(tri_tier)["services"]["medium"]["environment"]
    assert env["VLLM_API_KEY"].startswith("${QWEN_DEPLOY_API_KEY_MEDIUM:?")
    assert env["VLLM_API_KEY"].endswith("}")
    assert parse_env(files[".env"], ".env") == {
        "COMPOSE_PROJECT_NAME": "qwen3",
        "QWEN_DEPLOY_API_KEY_MEDIUM": "test-key-medium",
        "QWEN_DEPLOY_API_KEY_MINI": "test-key-mini",
        "QWEN_DEPLOY_API_KEY_MICRO": "test-key-micro",
    }
    assert files[".env"].splitlines()[1:] == [
        "COMPOSE_PROJECT_NAME=qwen3",
        "QWEN_DEPLOY_API_KEY_MEDIUM=test-key-medium",
        "QWEN_DEPLOY_API_KEY_MICRO=test-key-micro",
        "QWEN_DEPLOY_API_KEY_MINI=test-key-mini",
    ]


def test_hf_token_comes_from_the_environment_never_from_the_file(
    tri_tier: DeploymentPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_write_me")
    files = _render(tri_tier)
    assert "hf_do_not_write_me" not in "".join(files.values())
    assert "HF_TOKEN" not in files[".env"]
    for service in _compose(tri_tier)["services"].values():
        assert service["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}"


def test_generation_override_is_json_that_survives_yaml(tri_tier: DeploymentPlan) -> None:
    for service in _compose(tri_tier)["services"].values():
        override = _flags(service["command"])["--override-generation-config"]
        assert json.loads(override) == {
            "temperature": 0.6,
            "top_p": 0.95,
            "top_k": 20,
            "min_p": 0.0,
        }


def test_header_summarises_the_plan_and_points_at_the_profile(tri_tier: DeploymentPlan) -> None:
    text = render_compose(tri_tier, "/srv/qwen-deploy/test")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "profile tri-tier" in header[0]
    assert any("Edit the profile, not this file" in line for line in header)
    medium = next(line for line in header if line.startswith("# medium:"))
    planned = tri_tier.service("medium")
    for fact in (
        "GPU 0,1",
        f"gpu-memory-utilization {planned.gpu_memory_utilization:g}",
        f"context {planned.max_model_len}",
        f"KV cache {planned.kv_cache_tokens} tokens",
    ):
        assert fact in medium


def test_rendering_is_deterministic(tri_tier: DeploymentPlan) -> None:
    assert _render(tri_tier) == _render(tri_tier)


def test_plan_json_loads_back_to_the_same_plan(tri_tier: DeploymentPlan) -> None:
    assert plan_from_dict(json.loads(_render(tri_tier)["plan.json"])) == tri_tier


def test_a_missing_or_unsafe_key_is_refused(tri_tier: DeploymentPlan) -> None:
    keys = _keys(tri_tier)
    del keys["QWEN_DEPLOY_API_KEY_MINI"]
    with pytest.raises(ValueError, match="mini"):
        render_files(tri_tier, "/srv/x", keys)
    keys = {**_keys(tri_tier), "QWEN_DEPLOY_API_KEY_MINI": "abcdefgh\nHF_TOKEN=stolen"}
    with pytest.raises(ValueError, match="QWEN_DEPLOY_API_KEY_MINI"):
        render_files(tri_tier, "/srv/x", keys)


# --- other profiles ---------------------------------------------------------------------------


def test_nvfp4_8b_has_the_fixed_settings_of_the_hand_written_file(catalog: Catalog) -> None:
    result = _plan("1x-rtx5090", "nvfp4-8b", catalog)
    service = _compose(result)["services"]["vllm"]
    _assert_service_matches_plan(service, result.services[0])
    command = service["command"]
    assert command[0] == "RedHatAI/Qwen3-8B-NVFP4"
    joined = " ".join(command)
    assert "--gpu-memory-utilization 0.7 --max-model-len 8192 --max-num-seqs 64" in joined
    assert _flags(command)["--quantization"] == "compressed-tensors"
    assert service["ports"] == ["127.0.0.1:8000:8000"]


def test_eight_gpu_spreads_tensor_parallel_services(catalog: Catalog) -> None:
    result = _plan("8x-h100", "eight-gpu", catalog)
    services = _compose(result)["services"]
    for planned in result.services:
        _assert_service_matches_plan(services[planned.name], planned)
        assert _flags(services[planned.name]["command"])["--quantization"] == "fp8"
    large = services["large"]
    assert _flags(large["command"])["--tensor-parallel-size"] == "4"
    assert large["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [
        "0", "1", "2", "3"
    ]  # fmt: skip
    assert large["healthcheck"]["start_period"] == "3600s"
    assert services["micro"]["depends_on"] == {"mini": {"condition": "service_healthy"}}


def test_yarn_context_renders_hf_overrides_as_json(catalog: Catalog) -> None:
    profile = parse_profile(
        {
            "name": "long",
            "services": {
                "long": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5010, "context": 65536}
            },
        },
        "<long>",
    )
    result = plan(inventory("8x-h100"), profile, catalog)
    assert result.services[0].yarn_factor
    flags = _flags(_compose(result)["services"]["long"]["command"])
    assert flags["--max-model-len"] == "65536"
    overrides = json.loads(flags["--hf-overrides"])
    assert overrides["max_position_embeddings"] == 65536
    assert overrides["rope_parameters"] == {
        "rope_type": "yarn",
        "factor": 2.0,
        "original_max_position_embeddings": 32768,
        "rope_theta": 1000000,
    }


def test_stand_in_engine_uses_its_image_and_declares_the_ledger(catalog: Catalog) -> None:
    result = _plan("3x-rtx4090", "tri-tier", catalog, engine="stand-in", deployment="demo")
    result = _tiers_only(result)
    compose = _compose(result)
    assert _project(result) == "demo"
    assert compose["volumes"][STANDIN_LEDGER_VOLUME] == {"name": STANDIN_LEDGER_VOLUME}
    for service in compose["services"].values():
        assert service["image"] == STANDIN_IMAGE
        assert service["environment"]["STANDIN_LEDGER_DIR"] == STANDIN_LEDGER_DIR
        assert f"{STANDIN_LEDGER_VOLUME}:{STANDIN_LEDGER_DIR}" in service["volumes"]
        assert service["labels"]["io.qwen-deploy.engine"] == "stand-in"


def test_awkward_strings_reach_the_container_unchanged(catalog: Catalog) -> None:
    """Profile strings with `$`, quotes, YAML words and non-ASCII text survive YAML and compose
    interpolation (compose turns `$$` into `$`)."""
    awkward = ["--chat-template", '$HOME/it\'s "quoted" {x: [1]}\n# not a comment', "--tokenizer"]
    awkward.append("ünï")
    profile = parse_profile(
        {
            "name": "odd",
            "services": {
                "odd": {
                    "model": "Qwen/Qwen3-1.7B-FP8",
                    "gpus": [0],
                    "port": 5000,
                    "extra_args": awkward,
                    "environment": {"ON": "yes", "VLLM_LOGGING_LEVEL": "${NOT_INTERPOLATED}"},
                }
            },
        },
        "<odd>",
    )
    result = plan(inventory("3x-rtx4090"), profile, catalog)
    service = _compose(result)["services"]["odd"]
    assert service["command"][-3].startswith("$$HOME/")
    unescaped = [arg.replace("$$", "$") for arg in service["command"]]
    assert unescaped[-len(awkward) :] == awkward
    env = service["environment"]
    assert env["ON"] == "yes"
    assert env["VLLM_LOGGING_LEVEL"] == "$${NOT_INTERPOLATED}"


@pytest.mark.parametrize(
    "box, profile, engine",
    [
        ("3x-rtx4090", "tri-tier", "vllm"),
        ("3x-rtx4090", "tri-tier", "stand-in"),
        ("1x-rtx5090", "nvfp4-8b", "vllm"),
        ("8x-h100", "eight-gpu", "vllm"),
        ("2x-a100-40gb", "dual-gpu", "vllm"),
        ("1x-l4", "single-gpu", "vllm"),
    ],
)
def test_compose_file_is_valid_for_compose_v2(
    catalog: Catalog, box: str, profile: str, engine: str
) -> None:
    import jsonschema  # a dev dependency: see pyproject.toml

    compose = _compose(_plan(box, profile, catalog, engine=engine))
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft202012Validator(COMPOSE_SCHEMA).iter_errors(compose)
    ]
    assert errors == []


# --- the deployment directory -------------------------------------------------------------------


def test_write_files_round_trip(tri_tier: DeploymentPlan, tmp_path: Path) -> None:
    directory = DeploymentDir(tmp_path / "qwen3")
    files = render_files(tri_tier, str(directory.path), _keys(tri_tier))
    directory.write_files(files)
    assert stat.S_IMODE(os.stat(directory.file(".env")).st_mode) == 0o600
    assert directory.load_plan() == tri_tier
    assert directory.read_env() == _keys(tri_tier)
    assert (directory.path / "compose.yaml").read_text() == files["compose.yaml"]


def test_a_failed_write_leaves_complete_files(
    tri_tier: DeploymentPlan, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = DeploymentDir(tmp_path / "qwen3")
    old = render_files(tri_tier, str(directory.path), _keys(tri_tier))
    directory.write_files(old)
    new_plan = _plan("8x-h100", "tri-tier", catalog)
    new = render_files(
        new_plan, str(directory.path), {k: v + "-new" for k, v in _keys(new_plan).items()}
    )
    assert all(new[name] != old[name] for name in old)

    real_replace = os.replace
    calls: list[str] = []

    def replace_failing_second(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_second)
    with pytest.raises(StateError, match="No space left on device"):
        directory.write_files(new)
    monkeypatch.undo()

    # The files are replaced together or not at all: the first one is back to its old version.
    names = list(new)
    on_disk = {name: directory.file(name).read_text() for name in names}
    assert on_disk == {n: old[n] for n in names}
    assert sorted(p.name for p in directory.path.iterdir()) == sorted(names)  # no temp files
    assert stat.S_IMODE(os.stat(directory.file(".env")).st_mode) == 0o600
    assert directory.load_plan() == tri_tier


def test_render_deployment_writes_the_files_and_says_which_keys_it_made(
    catalog: Catalog, tmp_path: Path
) -> None:
    from deployer.render import render_deployment

    data = yaml.safe_load(Path(load_profile("tri-tier").source).read_text())
    for service in data["services"].values():
        service.pop("api_key")  # keys generated on the first render
    profile = parse_profile(data, "<generated-keys>")
    result = plan(inventory("3x-rtx4090"), profile, catalog, PlanOptions())
    directory = DeploymentDir(tmp_path / "qwen3")
    first = render_deployment(directory, result, profile, {})
    assert first.files == (".env", "compose.yaml", "plan.json")
    assert first.generated_keys == ("medium", "mini", "micro")
    assert first.warnings == result.warnings
    assert directory.load_plan() == result
    keys = directory.read_env()
    again = render_deployment(directory, result, profile, {})
    assert again.generated_keys == () and directory.read_env() == keys  # kept, not replaced

"""Profile loading: the shipped profiles load, and bad ones name the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployer.errors import ProfileError
from deployer.profiles import load_all_profiles, load_profile, load_profile_file, parse_profile

TRI_TIER = {
    "medium": ("Qwen/Qwen3-32B-AWQ", (0, 1), 5002, "test-key-medium"),
    "mini": ("Qwen/Qwen3-8B-AWQ", (2,), 5001, "test-key-mini"),
    "micro": ("Qwen/Qwen3-1.7B-FP8", (2,), 5000, "test-key-micro"),
}


def test_tri_tier_is_the_reference_deployment() -> None:
    profile = load_profile("tri-tier")
    assert {s.name: (s.model, s.gpus, s.port, s.api_key) for s in profile.services} == TRI_TIER
    for service in profile.services:
        assert service.generation.as_dict() == {
            "temperature": 0.6,
            "top_p": 0.95,
            "top_k": 20,
            "min_p": 0.0,
        }
        assert service.bind == "127.0.0.1"
    assert profile.service("MEDIUM").name == "medium"  # aliases resolve
    assert profile.gpus_needed == 3


def test_shipped_profiles_cover_one_two_three_and_eight_gpus() -> None:
    needed = {p.name: p.gpus_needed for p in load_all_profiles()}
    assert {"tri-tier", "nvfp4-8b"} <= needed.keys()
    assert {1, 2, 3, 8} <= set(needed.values())


def test_nvfp4_profile_keeps_its_fixed_settings() -> None:
    (service,) = load_profile("nvfp4-8b").services
    assert service.model == "RedHatAI/Qwen3-8B-NVFP4"
    assert (
        service.port,
        service.context,
        service.gpu_memory_utilization,
        service.max_num_seqs,
    ) == (
        8000,
        8192,
        0.7,
        64,
    )


def _bad(services: dict, **top: object) -> str:
    with pytest.raises(ProfileError) as err:
        parse_profile({"services": services, **top}, "bad.yaml")
    return str(err.value)


GOOD = {"model": "Qwen/Qwen3-8B-AWQ", "port": 5001, "gpus": [0]}


@pytest.mark.parametrize(
    "services, top, expected",
    [
        (
            {"a": {**GOOD, "contxt": 8192}},
            {},
            "bad.yaml: services.a: unknown key 'contxt' (did you mean 'context'?)",
        ),
        (
            {"a": GOOD, "b": {**GOOD, "gpus": [1]}},
            {},
            "services.b.port: 5001 is already used by services.a",
        ),
        (
            {"a": {**GOOD, "port": 70000}},
            {},
            "services.a.port: expected an integer from 1 to 65535",
        ),
        ({"a": {**GOOD, "gpus": [0, 0]}}, {}, "services.a.gpus: a GPU is listed twice"),
        ({"a": {**GOOD, "gpus": "all"}}, {}, "services.a.gpus: expected 'auto'"),
        (
            {"a": {**GOOD, "gpu_memory_utilization": 1.2}},
            {},
            "gpu_memory_utilization: expected a number above 0 and at most 1",
        ),
        ({"a": {**GOOD, "kv_cache_dtype": "int3"}}, {}, "kv_cache_dtype: 'int3' is not one of"),
        (
            {"a": {**GOOD, "api_key": "has space key"}},
            {},
            "services.a.api_key: keys are 8-256 characters",
        ),
        ({"a": {**GOOD, "api_key": "abc$def\nX=1"}}, {}, "services.a.api_key"),
        (
            {"a": {**GOOD, "api_key": "k" * 10, "api_key_env": "K"}},
            {},
            "set api_key or api_key_env, not both",
        ),
        (
            {"a": {**GOOD, "tensor_parallel_size": 2}},
            {},
            "tensor_parallel_size: 2 but the service has 1 GPU(s)",
        ),
        ({"A b": GOOD}, {}, "services.A b: service names are lower-case"),
        ({"a": {"port": 5001}}, {}, "services.a: missing 'model'"),
        (
            {"a": {**GOOD, "environment": {"VLLM_API_KEY": "x"}}},
            {},
            "keys and tokens do not belong in a profile",
        ),
        ({"a": {**GOOD, "bind": "everywhere"}}, {}, "services.a.bind: expected an IPv4 address"),
        (
            {"a": GOOD},
            {"servcies": {}},
            "bad.yaml: unknown key 'servcies' (did you mean 'services'?)",
        ),
        ({}, {}, "'services' must map service names"),
    ],
)
def test_bad_profiles_are_rejected_with_file_key_and_expectation(
    services: dict, top: dict, expected: str
) -> None:
    assert expected in _bad(services, **top)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("services:\n  a: {model: x\n  b: 1\n")
    with pytest.raises(ProfileError, match=r"broken.yaml: not valid YAML \(line \d+"):
        load_profile_file(path)


def test_unknown_profile_name_suggests_the_closest() -> None:
    with pytest.raises(ProfileError, match="did you mean 'tri-tier'"):
        load_profile("tri-teir")


def test_defaults_apply_to_every_service_and_services_override_them() -> None:
    data = {
        "defaults": {"generation": {"temperature": 0.7, "top_p": 0.8}, "bind": "0.0.0.0"},
        "services": {
            "a": GOOD,
            "b": {**GOOD, "port": 5002, "gpus": [1], "generation": {"top_k": 40}},
        },
    }
    profile = parse_profile(data, "d.yaml")
    a, b = profile.services
    assert (a.generation.temperature, a.generation.top_p, a.generation.top_k) == (0.7, 0.8, 20)
    assert (b.generation.temperature, b.generation.top_k) == (0.7, 40)
    assert a.bind == b.bind == "0.0.0.0"


def test_profile_can_define_its_own_model(tmp_path: Path) -> None:
    data = yaml.safe_load(
        """
models:
  families:
    MyQwen:
      layers: 28
      attention_heads: 16
      kv_heads: 8
      head_dim: 128
      hidden_size: 1024
      intermediate_size: 3072
      params_b: 0.6
      checkpoints:
        - {id: me/my-qwen, quantization: bf16, weights_gb: 1.2}
services:
  tiny: {model: me/my-qwen, port: 5009, gpus: [0]}
"""
    )
    profile = parse_profile(data, "mine.yaml")
    assert profile.models["me/my-qwen"].family.layers == 28


# --- extra_args against vLLM 0.33's option table (D5, D9, D26) ---------------------------------


def test_extra_args_are_checked_against_vllms_option_table() -> None:
    from deployer.vllm_options import check_extra_args, serve_options

    options = serve_options()
    assert len(options) > 400 and options["-tp"].canonical == "--tensor-parallel-size"
    allowed = (
        ["--enable-prefix-caching"],
        ["--max-loras", "2", "--seed=-1"],
        ["--no-enable-prefix-caching"],
        ["--allowed-media-domains", "a.example", "b.example", "--max-logprobs", "5"],
        ["--chat-template", "{{ messages }}\n"],
    )
    for args in allowed:
        assert check_extra_args(list(args), "x") is None, args
    refused = {
        ("--api-key", "k"): "would write a secret",
        ("--api_key=k",): "would write a secret",
        ("--hf-token", "hf_x"): "would write a secret",
        ("--max-model-len", "4096"): "set by the plan; use the profile's context",
        ("--max_model_len=4096",): "set by the plan",
        ("-tp", "2"): "set by the plan; use the profile's gpus / gpu_count",
        ("--port", "9999"): "use the profile's port",
        ("--hf-overrides.rope_theta", "1"): "set by the plan",
        ("--no-enforce-eager",): "use the profile's enforce_eager",
        ("--rope-scaling", "{}"): "is not an option of `vllm serve` 0.33",
        ("--max-lora", "2"): "did you mean --max-loras?",
        ("--max-loras",): "--max-loras needs a value",
        ("--enable-prefix-caching", "yes"): "takes no value",
        ("Qwen/Qwen3-8B",): "is not an option",
        ("--seed", "1\x00"): "control characters",
    }
    for args, problem in refused.items():
        found = check_extra_args(list(args), "x")
        assert found is not None and problem in found, (args, found)
    assert "at most 64" in (check_extra_args(["--enable-prefix-caching"] * 65, "x") or "")

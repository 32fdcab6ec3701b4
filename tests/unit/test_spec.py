"""Container specs: the one description of each container that render and runtime share."""

from __future__ import annotations

import json

from deployer.catalog import Catalog
from deployer.planner import PlanOptions, plan
from deployer.profiles import load_profile, parse_profile
from deployer.spec import START_GATE, container_specs, vllm_args
from deployer.vllm_pin import STANDIN_ENTRYPOINT, VLLM_ENTRYPOINT
from tests.helpers import inventory


def _arg(args: tuple[str, ...], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_yarn_overrides_keep_qwen3_rope_theta(catalog: Catalog) -> None:
    profile = parse_profile(
        {"services": {"moe": {"model": "Qwen/Qwen3-30B-A3B-FP8", "gpus": [0], "port": 5003,
                              "context": 65536}}},
        "y.yaml",
    )  # fmt: skip
    (service,) = plan(inventory("8x-h100"), profile, catalog).services
    overrides = json.loads(_arg(vllm_args(service), "--hf-overrides"))
    assert overrides["max_position_embeddings"] == 65536
    assert overrides["rope_parameters"] == {
        "rope_type": "yarn",
        "factor": 2.0,
        "original_max_position_embeddings": 32768,
        "rope_theta": 1000000,
    }


def test_only_co_tenants_that_start_later_get_the_start_gate(catalog: Catalog) -> None:
    for engine, image_entrypoint in (("vllm", VLLM_ENTRYPOINT), ("stand-in", STANDIN_ENTRYPOINT)):
        result = plan(
            inventory("3x-rtx4090"), load_profile("tri-tier"), catalog, PlanOptions(engine=engine)
        )
        specs = {s.service: s for s in container_specs(result, "/d")}
        assert specs["medium"].entrypoint is None and specs["mini"].entrypoint is None
        gate = specs["micro"].entrypoint
        assert gate is not None
        assert gate[:3] == ("python3", "-c", START_GATE)
        assert gate[3] == "http://mini:8000/health"
        assert gate[4:] == image_entrypoint


def test_config_hash_ignores_hf_token_but_not_the_api_key(catalog: Catalog) -> None:
    result = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    spec = container_specs(result, "/d")[0]
    var = result.services[0].api_key_env
    base = spec.config_hash({var: "key-one-123"})
    assert spec.config_hash({var: "key-one-123", "HF_TOKEN": "hf_x"}) == base
    assert spec.config_hash({var: "key-two-456"}) != base


def test_every_flag_the_plan_sets_is_refused_in_extra_args(catalog: Catalog) -> None:
    """D9: extra_args may not override what vllm_args sets; a flag added there must be added
    to vllm_options.PLANNED_FLAGS too, or the plan and the container could disagree."""
    from deployer.vllm_options import PLANNED_FLAGS, check_extra_args, serve_options

    profile = parse_profile(
        {
            "services": {
                "a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5000, "context": 65536,
                      "enforce_eager": True},
            }
        },
        "<all-flags>",
    )  # fmt: skip
    service = plan(inventory("3x-rtx4090"), profile, catalog, PlanOptions()).services[0]
    flags = [a for a in vllm_args(service) if a.startswith("--")]
    assert "--hf-overrides" in flags and "--enforce-eager" in flags  # YaRN and eager: all of them
    for flag in flags:
        assert serve_options()[flag].canonical in PLANNED_FLAGS, flag
        assert "set by the plan" in (check_extra_args([flag, "1"], "x") or ""), flag

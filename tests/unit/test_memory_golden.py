"""The memory model against what vLLM printed on real GPUs (tests/fixtures/vllm_startups.json,
each case with its public source): planned with the same GPU, model, TP, fraction, context and
batch settings, the "GPU KV cache size" lands within 5 % for dense models and 10 % for MoE."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deployer.catalog import Catalog
from deployer.gpus import GIB, inventory_from_dict
from deployer.memory_model import Accounting, need, requested_bytes
from deployer.planner import PlanOptions, plan
from deployer.profiles import parse_profile
from tests.helpers import FIXTURES

CASES: list[dict[str, Any]] = json.loads((FIXTURES / "vllm_startups.json").read_text())["cases"]
PLANNED = [c for c in CASES if c["plan_as"]]
TOLERANCE = {"dense": 0.05, "moe": 0.10}


def _inventory(case: dict[str, Any]) -> Any:
    gpu = case["plan_as"]["gpu"]
    gpus = [{**gpu, "index": i, "uuid": f"GPU-{i}"} for i in range(case["tensor_parallel_size"])]
    return inventory_from_dict({"gpus": gpus}, f"case {case['case']}")


def _plan_dense(case: dict[str, Any], catalog: Catalog) -> Any:
    how = case["plan_as"]
    service = {
        "model": how["model"],
        "gpus": list(range(case["tensor_parallel_size"])),
        "port": 8000,
        "context": case["max_model_len"],
        "gpu_memory_utilization": case["gpu_memory_utilization"],
        "max_num_seqs": how["max_num_seqs"],
        "max_num_batched_tokens": how["max_num_batched_tokens"],
        "kv_cache_dtype": how["kv_cache_dtype"],
    }
    profile = parse_profile({"name": "golden", "services": {"a": service}}, "<golden>")
    options = PlanOptions(accounting=Accounting(**how["accounting"]))
    return plan(_inventory(case), profile, catalog, options).services[0]


def test_the_cases_keep_their_sources_and_cover_dense_and_moe() -> None:
    assert all(c["source"] for c in CASES)
    assert {c["kind"] for c in PLANNED} == {"dense", "moe"}
    assert len(PLANNED) >= 5
    # Every catalog model among the public cases is planned, the others say why not.
    assert all(c["why"] for c in CASES)


@pytest.mark.parametrize(
    "case", [c for c in PLANNED if c["kind"] == "dense"], ids=lambda c: str(c["case"])
)
def test_dense_kv_cache_size_within_5_percent(case: dict[str, Any], catalog: Catalog) -> None:
    service = _plan_dense(case, catalog)
    printed = case["printed"]["kv_cache_tokens"]
    pair = [c for c in PLANNED if c["plan_as"] == case["plan_as"]]
    if len(pair) > 1:
        # One configuration, two boots, two figures: the plan lies between them, +-5 %.
        low = min(c["printed"]["kv_cache_tokens"] for c in pair)
        high = max(c["printed"]["kv_cache_tokens"] for c in pair)
        assert low * 0.95 <= service.kv_cache_tokens <= high * 1.05, (low, high)
    else:
        assert service.kv_cache_tokens == pytest.approx(printed, rel=TOLERANCE["dense"])
    # The weights vLLM printed are the catalog's, to within the catalog's stated 5 %.
    loading = case["printed"]["model_loading_gib"]
    assert service.memory.weights / GIB == pytest.approx(loading, rel=0.05)


@pytest.mark.parametrize(
    "case", [c for c in PLANNED if c["kind"] == "moe"], ids=lambda c: str(c["case"])
)
def test_moe_kv_cache_size_within_10_percent(case: dict[str, Any], catalog: Catalog) -> None:
    how = case["plan_as"]
    gpu = _inventory(case).gpus[0]
    ckpt = catalog.get(how["model"])
    terms = need(
        ckpt,
        case["tensor_parallel_size"],
        how["kv_cache_dtype"],
        how["max_num_seqs"],
        how["max_num_batched_tokens"],
        how["enforce_eager"],
        gpu.capability,
        Accounting(**how["accounting"]),
        expert_parallel=how["expert_parallel"],
    )
    terms = terms.with_weights(int(how["weights_gib_from_log"] * GIB))
    kv = requested_bytes(gpu, case["gpu_memory_utilization"]) - terms.fixed
    printed = case["printed"]
    assert terms.tokens_in(kv) == pytest.approx(printed["kv_cache_tokens"], rel=TOLERANCE["moe"])
    # The MoE activation term is the one the public log measured, to within 10 %.
    assert terms.activation_peak / GIB == pytest.approx(printed["activation_peak_gib"], rel=0.10)
    assert kv / GIB == pytest.approx(printed["available_kv_cache_gib"], rel=TOLERANCE["moe"])

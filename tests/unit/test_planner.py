"""The planner against realistic boxes: numbers must match vLLM's own accounting."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from deployer.catalog import Catalog
from deployer.errors import PlanError, ProfileError
from deployer.gpus import GIB, MIB
from deployer.memory_model import (
    KV_HEADROOM_BYTES,
    cuda_free_bytes,
    cuda_total_bytes,
    process_allowance,
    requested_bytes,
)
from deployer.planner import (
    PlanOptions,
    choose_profile,
    plan,
    start_room_bytes,
    usable_room_bytes,
)
from deployer.profiles import load_all_profiles, load_profile, parse_profile
from deployer.vllm_pin import KV_BLOCK_SIZE, STANDIN_IMAGE, VLLM_IMAGE
from tests.helpers import GPU_FILES, inventory


def _profile(services: dict, name: str = "test") -> object:
    return parse_profile({"name": name, "services": services}, f"<{name}>")


def _gpu_sums(result) -> dict[int, float]:
    sums: dict[int, float] = {}
    for service in result.services:
        for g in service.gpus:
            sums[g] = sums.get(g, 0.0) + service.gpu_memory_utilization
    return sums


def test_tri_tier_on_three_4090s_matches_the_reference_placement(catalog: Catalog) -> None:
    result = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    by_name = {s.name: s for s in result.services}
    assert by_name["medium"].gpus == (0, 1)
    assert by_name["medium"].tensor_parallel_size == 2
    assert by_name["medium"].model == "Qwen/Qwen3-32B-AWQ"
    assert (by_name["mini"].gpus, by_name["micro"].gpus) == ((2,), (2,))
    assert {s.name: s.port for s in result.services} == {
        "medium": 5002,
        "mini": 5001,
        "micro": 5000,
    }
    assert result.image == VLLM_IMAGE
    # Co-tenants start one after another; medium shares no GPU and starts at once.
    assert by_name["micro"].start_after == ("mini",)
    assert result.start_waves == (("medium", "mini"), ("micro",))


@pytest.mark.parametrize(
    "box, profile",
    [
        ("3x-rtx4090", "tri-tier"),
        ("8x-h100", "eight-gpu"),
        ("8x-h100", "tri-tier"),
        ("1x-rtx5090", "nvfp4-8b"),
        ("1x-t4", "single-gpu"),
        ("2x-a100-40gb", "dual-gpu"),
        ("1x-rtx4090-half-used", "single-gpu"),
        ("1x-l4", "nvfp4-8b"),
    ],
)
def test_plans_never_ask_for_more_than_is_free(catalog: Catalog, box: str, profile: str) -> None:
    inv = inventory(box)
    result = plan(inv, load_profile(profile), catalog)
    for index, total_fraction in _gpu_sums(result).items():
        gpu = inv.by_index(index)
        tenants = [s for s in result.services if index in s.gpus]
        # vLLM asks ceil(fraction x cudaMemGetInfo total) (memory model v2: not NVML's total).
        asked = sum(requested_bytes(gpu, s.gpu_memory_utilization) for s in tenants)
        # v2: the margin is per process (CUDA context, cuBLAS, NCCL for TP > 1), not
        # max(768 MiB, 3 %) once per GPU; fixed fractions may go below it with a warning.
        margin = sum(process_allowance(s.tensor_parallel_size) for s in tenants)
        if all(s.utilization_planned for s in tenants):
            assert asked + margin <= cuda_free_bytes(gpu), (index, total_fraction)
        else:
            assert asked <= cuda_free_bytes(gpu), (index, total_fraction)
    for s in result.services:
        # The KV cache holds at least one full-context request plus vLLM's null block.
        assert s.kv_cache_tokens >= s.max_model_len + KV_BLOCK_SIZE
        assert s.memory.kv_cache == s.memory.budget - (
            s.memory.weights
            + s.memory.activation_peak
            + s.memory.non_torch
            + s.memory.cuda_graphs
            + s.memory.sampler_state  # v2: Model Runner V2's penalties buffer
        )
        assert s.max_concurrency == round(s.kv_cache_tokens / s.max_model_len, 2)


def test_kv_tokens_follow_vllms_per_token_formula(catalog: Catalog) -> None:
    result = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    medium = result.service("medium")
    # Qwen3-32B: 64 layers x (8 KV heads / TP 2) x 128 head_dim x 2 (K,V) x 2 bytes.
    per_token = 2 * 64 * (8 // 2) * 128 * 2
    assert per_token == 131072
    expected = medium.memory.kv_cache // per_token // KV_BLOCK_SIZE * KV_BLOCK_SIZE
    assert medium.kv_cache_tokens == expected
    # Weights are split across the TP group: 19.3 GB / 2.
    assert medium.memory.weights == math.ceil(19.3e9 / 2)


def test_fp8_kv_cache_doubles_capacity(catalog: Catalog) -> None:
    services = {"a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001, "context": 32768}}
    base = plan(inventory("1x-l4"), _profile(services), catalog).services[0]
    services["a"]["kv_cache_dtype"] = "fp8"
    fp8 = plan(inventory("1x-l4"), _profile(services), catalog).services[0]
    assert fp8.gpu_memory_utilization == base.gpu_memory_utilization
    assert fp8.kv_cache_tokens == pytest.approx(2 * base.kv_cache_tokens, rel=0.01)


def test_shared_gpu_is_split_by_share(catalog: Catalog) -> None:
    result = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    mini, micro = result.service("mini"), result.service("micro")
    assert mini.gpu_memory_utilization > micro.gpu_memory_utilization
    gpu = inventory("3x-rtx4090").by_index(2)
    # v2: two processes on GPU 2, each with its own CUDA context allowance, and fractions of
    # the CUDA total (NVML total minus reserved memory).
    usable = usable_room_bytes(gpu, 2)
    assert usable == cuda_free_bytes(gpu) - 2 * process_allowance(1)
    together = (mini.gpu_memory_utilization + micro.gpu_memory_utilization) * cuda_total_bytes(gpu)
    # The spare memory is handed out, not left idle (to within the 0.001 rounding per service).
    assert usable - 2 * 0.001 * cuda_total_bytes(gpu) <= together <= usable


def test_foreign_process_memory_is_respected(catalog: Catalog) -> None:
    half = inventory("1x-rtx4090-half-used")
    result = plan(half, load_profile("single-gpu"), catalog)
    service = result.services[0]
    gpu = half.gpus[0]
    assert service.gpu_memory_utilization * gpu.total_bytes < gpu.free_bytes
    # The same profile on an empty 4090 gets a much larger fraction.
    empty = replace(gpu, memory_used_mib=410, processes=())
    bigger = plan(replace(half, gpus=(empty,)), load_profile("single-gpu"), catalog).services[0]
    assert bigger.gpu_memory_utilization - service.gpu_memory_utilization > 0.4


def test_context_max_takes_what_fits(catalog: Catalog) -> None:
    services = {"a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001, "context": "max"}}
    result = plan(inventory("1x-rtx4090-half-used"), _profile(services), catalog).services[0]
    assert 4096 <= result.max_model_len <= 32768
    assert result.max_model_len % 256 == 0
    assert result.kv_cache_tokens >= result.max_model_len


def test_nvfp4_profile_keeps_the_reference_settings(catalog: Catalog) -> None:
    service = plan(inventory("1x-rtx5090"), load_profile("nvfp4-8b"), catalog).services[0]
    assert service.model == "RedHatAI/Qwen3-8B-NVFP4"
    assert (service.port, service.max_model_len, service.max_num_seqs) == (8000, 8192, 64)
    assert service.gpu_memory_utilization == 0.7
    assert not service.utilization_planned
    assert service.kernel_note is None  # Blackwell runs NVFP4 natively


@pytest.mark.parametrize(
    "box, model, note",
    [
        ("1x-l4", "RedHatAI/Qwen3-8B-NVFP4", "weight-only FP4 Marlin"),
        ("2x-a100-40gb", "Qwen/Qwen3-1.7B-FP8", "weight-only FP8 Marlin"),
        ("1x-t4", "Qwen/Qwen3-1.7B-FP8", "weight-only FP8 Marlin"),
        ("1x-l4", "Qwen/Qwen3-1.7B-FP8", None),
        ("8x-h100", "Qwen/Qwen3-8B-AWQ", None),
    ],
)
def test_plan_says_when_a_fallback_kernel_runs(
    catalog: Catalog, box: str, model: str, note: str | None
) -> None:
    services = {"a": {"model": model, "gpus": [0], "port": 5001, "context": 8192}}
    result = plan(inventory(box), _profile(services), catalog)
    service = result.services[0]
    if note is None:
        assert service.kernel_note is None
        assert not any("Marlin" in w for w in result.warnings)
    else:
        assert note in (service.kernel_note or "")
        assert any(note in w for w in result.warnings)


@pytest.mark.parametrize(
    "model", ["Qwen/Qwen3-8B-AWQ", "Qwen/Qwen3-1.7B-FP8", "RedHatAI/Qwen3-8B-NVFP4"]
)
def test_v100_refuses_awq_fp8_and_nvfp4_with_a_working_alternative(
    catalog: Catalog, model: str
) -> None:
    services = {"a": {"model": model, "gpus": [0], "port": 5001, "context": 8192}}
    with pytest.raises(PlanError) as err:
        plan(inventory("1x-v100"), _profile(services), catalog)
    text = str(err.value)
    assert "compute capability 7.5 or newer" in text and "is 7.0" in text
    # The suggested BF16 checkpoint of the same family really plans on the V100.
    suggestion = text.split("use ")[1].split(",")[0].split(" or ")[0]
    services["a"]["model"] = suggestion
    assert plan(inventory("1x-v100"), _profile(services), catalog).services[0].model == suggestion


def test_too_little_memory_fails_with_numbers_and_checked_fixes(catalog: Catalog) -> None:
    services = {"a": {"model": "Qwen/Qwen3-8B", "gpus": [0], "port": 5001, "context": 32768}}
    with pytest.raises(PlanError) as err:
        plan(inventory("1x-rtx4090-half-used"), _profile(services), catalog)
    message = str(err.value)
    assert "does not fit on GPU 0" in message
    assert "GiB" in message and "weights" in message
    # Each suggested model fix must itself plan successfully.
    fixes = [p.split("model: ")[1].rstrip(")") for p in message.split("; ") if "model: " in p]
    assert fixes, message
    for fix in fixes:
        model, _, context = fix.partition(" with context: ")
        services["a"]["model"] = model
        services["a"]["context"] = int(context) if context else 32768
        assert plan(inventory("1x-rtx4090-half-used"), _profile(services), catalog).services


def test_suggested_context_fix_plans(catalog: Catalog) -> None:
    services = {
        "a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001, "context": 131072},
    }
    with pytest.raises(PlanError) as err:
        plan(inventory("1x-rtx4090-half-used"), _profile(services), catalog)
    message = str(err.value)
    context = int(message.split("context: ")[1].split(";")[0].split(")")[0])
    assert 1024 <= context < 131072
    services["a"]["context"] = context
    assert plan(inventory("1x-rtx4090-half-used"), _profile(services), catalog).services


def test_fixed_utilization_too_small_for_context_is_refused_like_vllm(catalog: Catalog) -> None:
    services = {
        "a": {
            "model": "Qwen/Qwen3-8B-AWQ",
            "gpus": [0],
            "port": 8000,
            "context": 32768,
            "gpu_memory_utilization": 0.35,
        }
    }
    with pytest.raises(PlanError, match="estimated maximum model length"):
        plan(inventory("1x-l4"), _profile(services), catalog)


def test_context_beyond_native_uses_yarn_and_beyond_yarn_is_refused(catalog: Catalog) -> None:
    services = {"a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001, "context": 65536}}
    service = plan(inventory("8x-h100"), _profile(services), catalog).services[0]
    assert service.yarn_factor == 2.0
    assert service.max_model_len == 65536
    services["a"]["context"] = 262144
    with pytest.raises(ProfileError, match="131072 with YaRN"):
        plan(inventory("8x-h100"), _profile(services), catalog)


def test_gpu_index_out_of_range_names_the_file_and_key(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as err:
        plan(inventory("2x-a100-40gb"), load_profile("tri-tier"), catalog)
    assert "tri-tier.yaml: services.mini.gpus[0]: GPU 2 does not exist" in str(err.value)


def test_tp_must_divide_attention_heads(catalog: Catalog) -> None:
    services = {"a": {"model": "Qwen/Qwen3-14B-AWQ", "gpus": [0, 1, 2], "port": 5001}}
    with pytest.raises(PlanError, match="does not divide"):
        plan(inventory("8x-h100"), _profile(services), catalog)


def test_auto_placement_prefers_empty_gpus(catalog: Catalog) -> None:
    services = {
        "a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001},
        "b": {"model": "Qwen/Qwen3-4B-AWQ", "gpus": "auto", "port": 5002},
        "c": {"model": "Qwen/Qwen3-32B-AWQ", "gpus": "auto", "gpu_count": 2, "port": 5003},
    }
    result = plan(inventory("8x-h100"), _profile(services), catalog)
    gpus = [set(s.gpus) for s in result.services]
    assert gpus[0] == {0}
    assert not (gpus[1] & gpus[0]) and not (gpus[2] & (gpus[0] | gpus[1]))
    assert len(gpus[2]) == 2
    assert result.start_waves == (("a", "b", "c"),)


def test_stand_in_engine_uses_the_stand_in_image(catalog: Catalog) -> None:
    result = plan(
        inventory("3x-rtx4090"),
        load_profile("tri-tier"),
        catalog,
        PlanOptions(deployment="demo", engine="stand-in"),
    )
    assert result.image == STANDIN_IMAGE
    assert result.deployment == "demo"


@pytest.mark.parametrize(
    "box, expected",
    [
        ("3x-rtx4090", "tri-tier"),
        ("8x-h100", "eight-gpu"),
        ("1x-rtx5090", "nvfp4-8b"),
        ("1x-l4", "single-gpu"),
        ("1x-t4", "single-gpu"),
        ("2x-a100-40gb", "dual-gpu"),
    ],
)
def test_profile_auto_picks_the_best_fit_and_says_why(
    catalog: Catalog, box: str, expected: str
) -> None:
    choice = choose_profile(inventory(box), load_all_profiles(), catalog)
    assert choice.plan.profile == expected
    assert choice.reasons[0] == f"chose {expected}"
    assert any("needs 8 GPUs" in r for r in choice.reasons) or box == "8x-h100"


def test_profile_auto_on_v100_explains_every_refusal(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as err:
        choose_profile(inventory("1x-v100"), load_all_profiles(), catalog)
    assert "no profile fits" in str(err.value)
    assert "compute capability 7.5 or newer" in str(err.value)


def test_plan_is_pure_and_deterministic(catalog: Catalog) -> None:
    inv = inventory("8x-h100")
    first = plan(inv, load_profile("eight-gpu"), catalog)
    assert plan(inv, load_profile("eight-gpu"), catalog) == first
    data = first.to_dict()
    for service in data["services"]:
        for key in ("name", "model", "gpus", "tensor_parallel_size", "gpu_memory_utilization",
                    "max_model_len", "max_num_seqs", "port", "kv_cache_tokens"):  # fmt: skip
            assert key in service
    assert "api_key" not in str(data).replace("api_key_source", "").replace("api_key_env", "")


def test_memory_breakdown_is_reported_in_gib(catalog: Catalog) -> None:
    service = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog).service("medium")
    gib = service.memory.as_gib()
    assert gib["weights"] == round(math.ceil(19.3e9 / 2) / GIB, 2)
    assert gib["budget"] <= 24564 * MIB / GIB


# --- memory model v2 (issue 11) -----------------------------------------------------------------

# Every shipped profile on every fixture, before and after v2: None = it plans; else a phrase of
# the refusal. The one changed line says why.
OUTCOMES: dict[str, dict[str, str | None]] = {
    "1x-l4": {"nvfp4-8b": None, "single-gpu": None},
    "1x-l40s": {"nvfp4-8b": None, "single-gpu": None},
    "1x-rtx-a5000": {"nvfp4-8b": None, "single-gpu": None},
    # nvfp4-8b fixes gpu_memory_utilization 0.7: refused before as "does not fit", now with
    # vLLM's own reason (free memory below the fixed fraction) since only vLLM's rule applies.
    "1x-rtx4090-half-used": {"nvfp4-8b": "vLLM would refuse to start", "single-gpu": None},
    "1x-rtx5090": {"nvfp4-8b": None, "single-gpu": None},
    "1x-t4": {"nvfp4-8b": None, "single-gpu": None},
    "1x-v100": {"nvfp4-8b": "is NVFP4, which vLLM", "single-gpu": "is AWQ, which vLLM"},
    "2x-a100-40gb": {"dual-gpu": None, "nvfp4-8b": None, "single-gpu": None},
    "3x-rtx4090": {"dual-gpu": None, "nvfp4-8b": None, "single-gpu": None, "tri-tier": None},
    "8x-h100": {
        "dual-gpu": None,
        "eight-gpu": None,
        "nvfp4-8b": None,
        "single-gpu": None,
        "tri-tier": None,
    },
}


def test_the_outcome_table_covers_every_fixture() -> None:
    assert set(OUTCOMES) == {p.stem for p in GPU_FILES.glob("*.json")}


@pytest.mark.parametrize("box", sorted(OUTCOMES))
def test_every_shipped_profile_plans_or_refuses_as_before(catalog: Catalog, box: str) -> None:
    for profile in load_all_profiles():
        expected = OUTCOMES[box].get(profile.name, "does not exist; this box has GPUs")
        try:
            result = plan(inventory(box), profile, catalog)
        except (PlanError, ProfileError) as exc:
            assert expected is not None, (box, profile.name, exc.message)
            assert expected in exc.message, (box, profile.name, exc.message)
            continue
        assert expected is None, (box, profile.name)
        assert all(s.kv_cache_tokens >= s.max_model_len for s in result.services)


@pytest.mark.parametrize(
    "box, model, fraction",
    [
        # Both started in vLLM (the two false refusals of the v1 model).
        ("1x-l40s", "Qwen/Qwen3-14B-AWQ", 0.95),
        ("1x-rtx-a5000", "Qwen/Qwen3-8B", 0.9764),
    ],
)
def test_fixed_fractions_vllm_runs_with_are_accepted(
    catalog: Catalog, box: str, model: str, fraction: float
) -> None:
    services = {
        "a": {"model": model, "gpus": [0], "port": 5001, "gpu_memory_utilization": fraction}
    }
    result = plan(inventory(box), _profile(services), catalog)
    service = result.services[0]
    assert service.gpu_memory_utilization == fraction and not service.utilization_planned
    gpu = inventory(box).gpus[0]
    # vLLM's own start check holds: the fraction of the CUDA total is free.
    assert requested_bytes(gpu, fraction) <= cuda_free_bytes(gpu)
    if box == "1x-rtx-a5000":
        # 0.55 GiB left beside it is less than the per-process allowance: said, not refused.
        assert any("is less than the" in w and "vLLM starts only if" in w for w in result.warnings)


def test_fixed_fraction_above_free_memory_is_refused_with_vllms_numbers(catalog: Catalog) -> None:
    services = {"a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001,
                      "gpu_memory_utilization": 0.6}}  # fmt: skip
    with pytest.raises(PlanError) as err:
        plan(inventory("1x-rtx4090-half-used"), _profile(services), catalog)
    message = str(err.value)
    assert "GPU 0 (NVIDIA GeForce RTX 4090) has 11.59/23.64 GiB free" in message
    assert "a 0.6 (14.2 GiB)" in message and "vLLM would refuse to start" in message


def test_budget_uses_the_cuda_total_not_nvmls(catalog: Catalog) -> None:
    service = plan(inventory("1x-l40s"), _profile(
        {"a": {"model": "Qwen/Qwen3-14B", "gpus": [0], "port": 5001, "gpu_memory_utilization": 0.9}}
    ), catalog).services[0]  # fmt: skip
    # vLLM printed "Desired GPU memory utilization is (0.9, 39.98 GiB)" on an L40S.
    assert round(service.memory.budget / GIB, 2) == 39.98
    assert round(service.memory.cuda_total / GIB, 2) == 44.42


def test_an_inventorys_reserved_memory_overrides_the_default(catalog: Catalog) -> None:
    box = inventory("1x-l4")
    services = {"a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001, "context": 8192}}
    default = plan(box, _profile(services), catalog).services[0]
    more = replace(box, gpus=(replace(box.gpus[0], memory_reserved_mib=1455),))
    reserved = plan(more, _profile(services), catalog).services[0]
    assert reserved.memory.cuda_total == default.memory.cuda_total - 1000 * MIB


def test_the_one_request_check_counts_the_null_block(catalog: Catalog) -> None:
    # A fixed fraction whose KV cache holds exactly cdiv(L, 16) blocks: vLLM refuses (it keeps
    # one null block), so the planner must too, and name vLLM's estimate (blocks - 1) x 16.
    services = {"a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001, "context": 32768}}
    auto = plan(inventory("1x-l4"), _profile(services), catalog).services[0]
    per_block = 16 * 2 * 36 * 8 * 128 * 2
    fixed_part = auto.memory.budget - auto.memory.kv_cache
    cuda_total = auto.memory.cuda_total
    exact = fixed_part + 2048 * per_block  # 2048 blocks = 32768 tokens, no null block
    fraction = math.floor(exact / cuda_total * 1e4) / 1e4
    services["a"]["gpu_memory_utilization"] = fraction
    with pytest.raises(PlanError, match="vLLM would refuse to start: estimated maximum model"):
        plan(inventory("1x-l4"), _profile(services), catalog)


def test_context_max_keeps_the_stated_headroom(catalog: Catalog) -> None:
    result = plan(inventory("1x-rtx4090-half-used"), load_profile("single-gpu"), catalog)
    service = result.services[0]
    spare = service.memory.kv_cache - (service.max_model_len // KV_BLOCK_SIZE + 1) * (
        KV_BLOCK_SIZE * 2 * 36 * 8 * 128 * 2
    )
    # v1 kept 2 blocks (4.5 MiB) beyond the request here; v2 keeps the headroom.
    assert spare >= KV_HEADROOM_BYTES


def test_every_co_tenant_brings_its_own_cuda_context(catalog: Catalog) -> None:
    def asked_on_gpu2(services: dict) -> int:
        result = plan(inventory("3x-rtx4090"), _profile(services), catalog)
        gpu = inventory("3x-rtx4090").by_index(2)
        return sum(requested_bytes(gpu, s.gpu_memory_utilization) for s in result.services)

    one = {"a": {"model": "Qwen/Qwen3-1.7B-FP8", "gpus": [2], "port": 5001}}
    two = {**one, "b": {"model": "Qwen/Qwen3-1.7B-FP8", "gpus": [2], "port": 5002}}
    # Two processes leave one more allowance free (to the 0.001 rounding per service).
    gap = asked_on_gpu2(one) - asked_on_gpu2(two)
    assert gap == pytest.approx(process_allowance(1), abs=3 * 0.001 * 24564 * MIB)


def test_tp_above_one_keeps_nccl_outside_the_budget(catalog: Catalog) -> None:
    medium = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog).service("medium")
    # v1 charged 512 MiB of NCCL inside the budget; vLLM sets NCCL up before its snapshot.
    assert medium.memory.non_torch < 256 * MIB
    gpu = inventory("3x-rtx4090").by_index(0)
    assert requested_bytes(gpu, medium.gpu_memory_utilization) + process_allowance(2) <= (
        cuda_free_bytes(gpu)
    )


def test_max_num_batched_tokens_drives_activation_and_graphs(catalog: Catalog) -> None:
    base = {"model": "Qwen/Qwen3-30B-A3B-FP8", "gpus": [0], "port": 5001, "context": 8192}
    small = plan(inventory("8x-h100"), _profile({"a": {**base, "max_num_batched_tokens": 2048}}),
                 catalog).services[0]  # fmt: skip
    large = plan(inventory("8x-h100"), _profile({"a": base}), catalog).services[0]
    assert (small.max_num_batched_tokens, large.max_num_batched_tokens) == (2048, 8192)
    # The MoE forward pass at 8192 tokens outgrows the sampler warm-up: 4x the workspaces.
    assert large.memory.activation_peak > small.memory.activation_peak
    assert large.kv_cache_tokens < small.kv_cache_tokens


def test_max_num_batched_tokens_below_max_num_seqs_is_refused(catalog: Catalog) -> None:
    services = {"a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001,
                      "max_num_seqs": 64, "max_num_batched_tokens": 32}}  # fmt: skip
    with pytest.raises(ProfileError, match="max_num_batched_tokens: 32 is less than max_num_seqs"):
        plan(inventory("1x-l4"), _profile(services), catalog)


def test_moe_graphs_and_activation_are_larger_than_dense(catalog: Catalog) -> None:
    result = plan(inventory("8x-h100"), load_profile("eight-gpu"), catalog)
    moe, mini = result.service("moe"), result.service("mini")
    assert moe.memory.cuda_graphs > 2 * mini.memory.cuda_graphs  # 3.3x per layer, public logs
    assert moe.memory.activation_peak > mini.memory.activation_peak


# --- tensor parallel sizes vLLM refuses (D8) ----------------------------------------------------


@pytest.mark.parametrize(
    "model, gpus, problem, works",
    [
        ("Qwen/Qwen3-14B", 5, "8 KV heads", "use 1, 2, 4 or 8 GPU(s)"),
        ("Qwen/Qwen3-4B-AWQ", 8, "AWQ group of 128", "use 1, 2 or 4 GPU(s)"),
        ("Qwen/Qwen3-4B-FP8", 8, "FP8 weight block of 128", "use 1, 2 or 4 GPU(s)"),
        ("Qwen/Qwen3-30B-A3B-FP8", 4, "moe_intermediate_size 768 into 192", "use 1 or 2 GPU(s)"),
        (
            "Qwen/Qwen3-235B-A22B-FP8",
            8,
            "moe_intermediate_size 1536 into 192",
            "use 1, 2 or 4 GPU(s)",
        ),
    ],
)
def test_tp_sizes_vllm_refuses_are_refused_with_sizes_that_work(
    catalog: Catalog, model: str, gpus: int, problem: str, works: str
) -> None:
    services = {"a": {"model": model, "gpus": list(range(gpus)), "port": 6100}}
    with pytest.raises(PlanError) as err:
        plan(inventory("8x-h100"), _profile(services), catalog)
    assert f"tensor parallel size {gpus}" in err.value.message and problem in err.value.message
    assert works in (err.value.hint or ""), err.value.hint
    # The first size named really plans (memory permitting: on an 80 GB card these do).
    size = int((err.value.hint or "").split("use ")[1].split(" ")[0].rstrip(","))
    if size > 1 or "235B" not in model:
        services["a"]["gpus"] = list(range(size))
        assert plan(inventory("8x-h100"), _profile(services), catalog).services


# --- gpus: auto placement (D23) -----------------------------------------------------------------


def test_auto_placement_spreads_by_planned_room(catalog: Catalog) -> None:
    services = {f"s{i}": {"model": "Qwen/Qwen3-0.6B", "gpus": "auto", "port": 6000 + i,
                          "context": 8192} for i in range(6)}  # fmt: skip
    result = plan(inventory("3x-rtx4090"), _profile(services), catalog)
    per_gpu = [len(result.services_on(i)) for i in range(3)]
    assert per_gpu == [2, 2, 2]  # v1 put 4 on GPU 0 (ranked by static free memory)
    assert len(result.start_waves) == 2


def test_auto_placement_skips_mig_gpus_when_whole_ones_exist(catalog: Catalog) -> None:
    box = inventory("3x-rtx4090")
    mig = replace(box, gpus=(replace(box.gpus[0], mig_enabled=True), *box.gpus[1:]))
    service = plan(mig, load_profile("single-gpu"), catalog).services[0]
    assert service.gpus != (0,)
    only_mig = replace(box, gpus=(replace(box.gpus[0], mig_enabled=True),))
    with pytest.raises(PlanError, match="has MIG enabled"):
        plan(only_mig, load_profile("single-gpu"), catalog)


def test_fixes_for_many_services_apply_together(catalog: Catalog) -> None:
    services = {f"s{i}": {"model": "Qwen/Qwen3-0.6B", "gpus": "auto", "port": 6000 + i,
                          "context": 8192} for i in range(50)}  # fmt: skip
    with pytest.raises(PlanError) as err:
        plan(inventory("3x-rtx4090"), _profile(services), catalog)
    message, hint = err.value.message, err.value.hint or ""
    assert "17 vLLM process(es)" in message  # 50 spread 17/17/16 by planned room
    assert "and 11 more services" in message and len(message) < 1200
    # No "sN: gpus: [k]" fix that counts room another fix already took: the other GPUs are
    # full as planned, so no move is offered; the list is bounded.
    assert "gpus: [" not in hint
    assert hint.count(";") <= 8


def test_the_moves_offered_together_all_apply(catalog: Catalog) -> None:
    services: dict[str, dict] = {
        f"s{i}": {"model": "Qwen/Qwen3-0.6B", "gpus": [0], "port": 6000 + i, "context": 8192}
        for i in range(12)
    }
    with pytest.raises(PlanError) as err:
        plan(inventory("3x-rtx4090"), _profile(services), catalog)
    moves = (err.value.hint or "").removeprefix("fixes: ").split(";")[0].split(" with ")
    assert len(moves) > 1 and all(": gpus: [" in m for m in moves)
    for move in moves:
        name, _, gpus = move.partition(": gpus: ")
        services[name]["gpus"] = [int(gpus.strip("[]"))]
    result = plan(inventory("3x-rtx4090"), _profile(services), catalog)  # all of them at once
    assert {len(result.services_on(i)) for i in range(3)} <= set(range(1, 12))


def test_start_room_applies_vllms_rule_to_fixed_fractions_only(catalog: Catalog) -> None:
    box = inventory("1x-rtx-a5000")
    fixed = {"a": {"model": "Qwen/Qwen3-8B", "gpus": [0], "port": 5001,
                   "gpu_memory_utilization": 0.9764}}  # fmt: skip
    service = plan(box, _profile(fixed), catalog).services[0]
    gpu = box.gpus[0]
    # The plan warned about the thin headroom; `up`'s pre-start check must not refuse it.
    assert start_room_bytes(gpu, service) == cuda_free_bytes(gpu)
    assert requested_bytes(gpu, service.gpu_memory_utilization) <= start_room_bytes(gpu, service)
    auto = plan(box, load_profile("single-gpu"), catalog).services[0]
    assert start_room_bytes(gpu, auto) == cuda_free_bytes(gpu) - process_allowance(1)
    assert requested_bytes(gpu, auto.gpu_memory_utilization) <= start_room_bytes(gpu, auto)

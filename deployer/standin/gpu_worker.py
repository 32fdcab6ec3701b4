"""The start-up memory arithmetic of vLLM's GPU worker and KV-cache planning."""

from __future__ import annotations

import math
from dataclasses import dataclass

MiB = 1 << 20


GiB = 1 << 30


BLOCK_SIZE = 16


DEFAULT_GPU_TOTAL_MIB = 24564  # a GPU id missing from STANDIN_GPU_TOTAL_MIB


NO_GPU_TOTAL_MIB = 81559  # the arithmetic without visible GPUs (an H100 80GB)


def format_gib(num_bytes: int | float) -> str:
    """vllm/utils/mem_utils.py::format_gib: str(round(b / GiB, 2))."""
    return f"{round(num_bytes / GiB, 2)}"


def requested_bytes(total_bytes: int, utilization: float) -> int:
    """vllm/v1/worker/utils.py::request_memory: ceil(total x gpu_memory_utilization)."""
    return math.ceil(total_bytes * utilization)


def free_memory_error(local_index: int, total: int, free: int, utilization: float) -> str | None:
    """The startup check: the ValueError text when free < requested, else None."""
    requested = requested_bytes(total, utilization)
    if free >= requested:
        return None
    return (
        f"ValueError: Free memory on device cuda:{local_index} ({format_gib(free)}/"
        f"{format_gib(total)} GiB) on startup is less than desired GPU memory utilization "
        f"({utilization}, {format_gib(requested)} GiB). Decrease GPU memory utilization or "
        "reduce GPU memory used by other processes."
    )


@dataclass(frozen=True)
class KvCachePlan:
    """Profiling's outcome: KV bytes and tokens, the (auto-fitted) max_model_len, or an error."""

    available: int
    tokens: int
    max_model_len: int
    error: str | None


NO_CACHE_MEMORY = (
    "ValueError: No available memory for the cache blocks. Try increasing "
    "`gpu_memory_utilization` when initializing the engine (this flag also controls CPU "
    "memory reservation on the CPU backend, despite its name). See https://docs.vllm.ai/en/"
    "latest/configuration/conserving_memory/ for more details."
)


def plan_kv_cache(
    available: int,
    per_token: int,
    max_model_len: int,
    *,
    auto_len: bool = False,
    kv_cache_memory_bytes: int | None = None,
) -> KvCachePlan:
    """vllm/v1/core/kv_cache_planning.py::_check_enough_kv_cache_memory, in whole blocks."""
    if kv_cache_memory_bytes:
        available = int(kv_cache_memory_bytes)
    if available <= 0:
        return KvCachePlan(available, 0, max_model_len, NO_CACHE_MEMORY)
    tokens = available // per_token // BLOCK_SIZE * BLOCK_SIZE
    if auto_len:
        max_model_len = max(BLOCK_SIZE, min(max_model_len, tokens))
    needed = math.ceil(max_model_len / BLOCK_SIZE) * BLOCK_SIZE * per_token
    if needed <= available:
        return KvCachePlan(available, tokens, max_model_len, None)
    hint = (
        f"Based on the available memory, the estimated maximum model length is {tokens}. "
        if tokens > 0
        else ""
    )
    return KvCachePlan(
        available,
        tokens,
        max_model_len,
        f"ValueError: To serve at least one request with the model's max seq len "
        f"({max_model_len}), ({format_gib(needed)} GiB KV cache is needed, which is larger than "
        f"the available KV cache memory ({format_gib(available)} GiB). {hint}Try increasing "
        "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or "
        "decreasing `max_model_len` when initializing the engine. See https://docs.vllm.ai/en/"
        "latest/configuration/conserving_memory/ for more details.",
    )

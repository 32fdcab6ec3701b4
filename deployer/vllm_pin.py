"""Facts about the one vLLM release qwen-deploy pins, read from that release's source.

Everything the planner and renderer assume about vLLM lives here, so moving the pin means
re-checking this file (see `../shared/notes/vllm-facts.md` sections 2-4 for the sources).
"""

from __future__ import annotations

from dataclasses import dataclass

VLLM_VERSION = "0.33.0"
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
STANDIN_IMAGE = f"qwen-deploy/vllm-standin:{VLLM_VERSION}"
CONTAINER_PORT = 8000
# The images' own entrypoints; the container command is the `vllm serve` arguments.
VLLM_ENTRYPOINT = ("vllm", "serve")
STANDIN_ENTRYPOINT = ("python3", "/opt/standin/server.py", "serve")
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"

# gpu_memory_utilization (vllm/config/cache.py: gt=0, le=1): since v0.21 CUDA-graph memory is
# profiled and counted inside the fraction (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1 by
# default), so the planner's budget includes it.
KV_BLOCK_SIZE = 16  # CacheConfig.DEFAULT_BLOCK_SIZE
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")  # the ones the planner may emit


@dataclass(frozen=True)
class QuantizationSupport:
    """What a checkpoint's quantization needs from the GPU (capability = major*10+minor)."""

    name: str
    min_capability: int
    native_capability: int  # at or above: full-speed kernels
    fallback: str  # what vLLM runs between min and native
    weight_bytes_note: str
    native_capabilities: tuple[int, ...] = ()  # when native is a set, not a threshold


QUANTIZATIONS: dict[str, QuantizationSupport] = {
    # vLLM casts bfloat16 to float16 on GPUs without bf16 (cc < 8.0) with a warning.
    "bf16": QuantizationSupport("bf16", 70, 80, "float16 (no bfloat16 on this GPU)", "2 B/param"),
    # auto_awq.py (0.33): min 75, Marlin kernels from 7.5 up.
    "awq": QuantizationSupport("awq", 75, 75, "", "4-bit + group scales"),
    # fp8.py: W8A8 needs 8.9 (Ada/Hopper/Blackwell); 7.5-8.6 run weight-only FP8 Marlin.
    "fp8": QuantizationSupport(
        "fp8", 75, 89, "weight-only FP8 Marlin kernel (no FP8 compute)", "1 B/param"
    ),
    # compressed-tensors W4A4 NVFP4: native on Blackwell only; else weight-only FP4 Marlin.
    "nvfp4": QuantizationSupport(
        "nvfp4",
        75,
        100,
        "weight-only FP4 Marlin kernel (no FP4 compute)",
        "4-bit + fp8 scales",
        native_capabilities=(100, 103, 110, 120, 121),
    ),
}

# Value for --quantization per checkpoint kind; None lets vLLM read quantization_config.
QUANTIZATION_FLAG: dict[str, str | None] = {
    "bf16": None,
    "awq": "awq",
    "fp8": "fp8",
    "nvfp4": "compressed-tensors",
}


def kernel_note(quantization: str, capability: int) -> str | None:
    """None when the GPU runs the quantization natively, else the fallback vLLM will use."""
    support = QUANTIZATIONS[quantization]
    if support.native_capabilities:
        native = capability in support.native_capabilities or capability >= max(
            support.native_capabilities
        )
    else:
        native = capability >= support.native_capability
    return None if native else support.fallback


def batch_defaults(gpu_name: str, memory_total_mib: int) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM picks for the OpenAI server on this GPU."""
    gib = memory_total_mib / 1024
    if gib >= 160:
        return 1024, 16384
    if gib >= 70 and "A100" not in gpu_name:
        return 1024, 8192
    return 256, 2048

"""The start-up memory arithmetic of vLLM 0.33's GPU worker and KV-cache planning.

Per GPU, as vllm/v1/worker/gpu_worker.py and vllm/utils/mem_utils.py account it:

    total     = cudaMemGetInfo's total = NVML total - NVML reserved
    requested = ceil(gpu_memory_utilization x total); start-up fails unless the free memory
                at the snapshot (after the process's own CUDA context) is at least that
    KV        = requested - consumed (weights + non-torch + the sampler's penalties state)
                - activation peak (max of the forward pass and the sampler warm-up, which run
                one after the other) - CUDA-graph estimate

then whole 16-token blocks, one of them vLLM's null block. Terms marked [estimate] are the
shared notes' estimates from vLLM's source and public logs, not measured on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .model_info import ModelInfo

MiB = 1 << 20
GiB = 1 << 30
BLOCK_SIZE = 16
NULL_BLOCKS = 1  # BlockPool keeps one block back (v1/core/kv_cache_planning.py)
DEFAULT_GPU_TOTAL_MIB = 24564  # a GPU id missing from STANDIN_GPU_TOTAL_MIB
NO_GPU_TOTAL_MIB = 81559  # the arithmetic without visible GPUs (an H100 80GB)

# [estimate] Model Runner V2's sampler warm-up holds bf16 logits, an fp32 copy, masked logits
# and probs: 14 bytes per logit over min(max_num_seqs, max_num_batched_tokens) rows (FlashInfer
# path, compute capability >= 8.0, which the stand-in assumes).
SAMPLER_BYTES_PER_LOGIT = 14
# [estimate] non-torch memory that grows after the snapshot (kernels loaded on first use).
NON_TORCH_BYTES = 150 * MiB
NON_TORCH_TP_BYTES = 215 * MiB
# [estimate, public logs] CUDA-graph memory per captured size per layer: 0.52 GiB for Qwen3-8B
# at 256 sequences; 3.45 GiB per GPU for Qwen3-235B-FP8 (MoE).
GRAPH_BYTES_PER_SIZE_LAYER = 176 * 1024
GRAPH_BYTES_PER_SIZE_LAYER_MOE = 574 * 1024
# [estimate, one public log] fused-MoE workspaces: 5.27x the three bf16 expert caches.
MOE_FORWARD_FACTOR = 5.27
MAX_CAPTURE_SIZE = 512  # config/vllm.py::_set_cudagraph_sizes
REDUNDANCY_BUFFER_BYTES = 150 * MiB  # gpu_worker.py: the --kv-cache-memory suggestion keeps it


def batch_defaults(cuda_total: int) -> tuple[int, int]:
    """EngineArgs.get_batch_defaults for the OpenAI server: (max_num_seqs,
    max_num_batched_tokens) by the GPU's (CUDA) total memory."""
    if cuda_total >= 160 * GiB:
        return 1024, 16384
    if cuda_total >= 70 * GiB:
        return 1024, 8192
    return 256, 2048


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
    """Profiling's outcome: KV bytes, blocks (the null block among them), the (auto-fitted)
    max_model_len, or an error."""

    available: int
    blocks: int
    max_model_len: int
    error: str | None
    block_bytes: int = 0

    @property
    def tokens(self) -> int:
        """Whole blocks x 16 (what "GPU KV cache size" shows for a max_model_len that is a
        multiple of 16)."""
        return self.blocks * BLOCK_SIZE

    def capacity(self) -> tuple[int, float]:
        """v1/core/kv_cache_utils.py: (GPU KV cache size, maximum concurrency) for
        max_model_len: concurrency = blocks / cdiv(max_model_len, 16), size = concurrency x
        max_model_len."""
        concurrency = self.blocks / math.ceil(self.max_model_len / BLOCK_SIZE)
        return int(concurrency * self.max_model_len), concurrency


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
    """vllm/v1/core/kv_cache_planning.py: blocks, then the one-request check with the null
    block taken out first (_check_enough_kv_cache_memory)."""
    if kv_cache_memory_bytes:
        available = int(kv_cache_memory_bytes)
    block = per_token * BLOCK_SIZE
    if available <= 0:
        return KvCachePlan(available, 0, max_model_len, NO_CACHE_MEMORY, block)
    blocks = available // block
    usable = available - NULL_BLOCKS * block
    longest = max(0, blocks - NULL_BLOCKS) * BLOCK_SIZE
    if auto_len:
        max_model_len = max(BLOCK_SIZE, min(max_model_len, longest))
    needed = math.ceil(max_model_len / BLOCK_SIZE) * block
    if needed <= usable:
        return KvCachePlan(available, blocks, max_model_len, None, block)
    hint = (
        f"Based on the available memory, the estimated maximum model length is {longest}. "
        if longest > 0
        else ""
    )
    return KvCachePlan(
        available,
        blocks,
        max_model_len,
        f"ValueError: To serve at least one request with the model's max seq len "
        f"({max_model_len}), ({format_gib(needed)} GiB KV cache is needed, which is larger than "
        f"the available KV cache memory ({format_gib(usable)} GiB). {hint}Try increasing "
        "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or "
        "decreasing `max_model_len` when initializing the engine. See https://docs.vllm.ai/en/"
        "latest/configuration/conserving_memory/ for more details.",
        block,
    )


@dataclass(frozen=True)
class GpuMemory:
    """One GPU as vLLM's CUDA calls see it (bytes)."""

    nvml_total: int
    reserved: int = 0  # NVML's reserved memory: not in cudaMemGetInfo's total
    foreign: int = 0  # used by other processes (NVML's `used`)

    @property
    def total(self) -> int:
        """cudaMemGetInfo's total, which gpu_memory_utilization multiplies."""
        return self.nvml_total - self.reserved

    def free(self, held_by_others: int, own_context: int) -> int:
        """Free memory at vLLM's snapshot, taken after this process's CUDA context."""
        free = min(self.nvml_total - self.foreign, self.total) - held_by_others - own_context
        return max(0, free)


@dataclass(frozen=True)
class MemoryProfile:
    """What one GPU of the instance spends before its KV cache (bytes)."""

    weights: int
    non_torch: int
    sampler_state: int  # V2's PenaltiesState: allocated after the snapshot, kept
    activation_peak: int
    cuda_graphs: int

    @property
    def consumed(self) -> int:
        """ "consumed memory (weights + non-torch)" in vLLM's calibration line."""
        return self.weights + self.non_torch + self.sampler_state

    @property
    def non_kv(self) -> int:
        return self.consumed + self.activation_peak + self.cuda_graphs


def capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> tuple[int, int]:
    """(PIECEWISE, FULL) CUDA-graph sizes: [1, 2, 4] + 8..248 step 8 + 256..512 step 16, up to
    min(2 x max_num_seqs, 512, max_num_batched_tokens); FULL ones only up to max_num_seqs."""
    largest = min(2 * max_num_seqs, MAX_CAPTURE_SIZE, max_num_batched_tokens)
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, MAX_CAPTURE_SIZE + 1, 16)]
    piecewise = sum(1 for size in sizes if size <= largest)
    full = sum(1 for size in sizes if size <= min(largest, max_num_seqs))
    return piecewise, full


def memory_profile(
    shape: ModelInfo,
    weights: int,
    tp: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    enforce_eager: bool,
) -> MemoryProfile:
    """Every non-KV term on one GPU, shaped as Model Runner V2's profile run makes them."""
    batched, vocab = max_num_batched_tokens, shape.vocab_size
    if shape.experts_per_token:  # fused-MoE: per-token expert caches of the chosen experts
        caches = (
            batched
            * shape.experts_per_token
            * (3 * shape.moe_intermediate_size // tp + shape.hidden_size)
            * 2
        )
        forward = int(caches * MOE_FORWARD_FACTOR)
    else:  # the MLP intermediates of one batch in bf16 (V2 skips attention when profiling)
        forward = batched * (3 * shape.intermediate_size // tp + 4 * shape.hidden_size) * 2
    sampler = SAMPLER_BYTES_PER_LOGIT * min(max_num_seqs, batched) * vocab
    penalties = max_num_seqs * vocab * 4 + max_num_seqs * (vocab // 32) * 4
    graphs = 0
    if not enforce_eager:
        piecewise, full = capture_sizes(max_num_seqs, batched)
        per = (
            GRAPH_BYTES_PER_SIZE_LAYER_MOE
            if shape.experts_per_token
            else GRAPH_BYTES_PER_SIZE_LAYER
        )
        graphs = (piecewise + full) * shape.layers * per
    return MemoryProfile(
        weights=weights,
        non_torch=NON_TORCH_BYTES if tp == 1 else NON_TORCH_TP_BYTES,
        sampler_state=penalties,
        activation_peak=max(forward, sampler),
        cuda_graphs=graphs,
    )


def calibration_line(
    free: int, total: int, utilization: float, requested: int, profile: MemoryProfile, kv: int
) -> str:
    """gpu_worker.py::_compile_or_warm_up_model's summary of every term, as vLLM logs it."""
    rest = profile.non_kv + REDUNDANCY_BUFFER_BYTES
    to_requested, to_gpu = requested - rest, free - rest
    return (
        f"Free memory on device ({format_gib(free)}/{format_gib(total)} GiB) on startup. "
        f"Desired GPU memory utilization is ({utilization}, {format_gib(requested)} GiB). "
        f"Actual usage is {format_gib(profile.consumed)} GiB for consumed memory (weights + "
        f"non-torch), {format_gib(profile.activation_peak)} GiB for peak activation, and "
        f"{format_gib(profile.cuda_graphs)} GiB for CUDAGraph memory. Replace "
        f"gpu_memory_utilization config with `--kv-cache-memory={to_requested}` "
        f"({format_gib(to_requested)} GiB) to fit into requested memory, or "
        f"`--kv-cache-memory={to_gpu}` ({format_gib(to_gpu)} GiB) to fully utilize gpu memory. "
        f"Current kv cache memory in use is {format_gib(kv)} GiB."
    )

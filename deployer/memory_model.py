"""vLLM 0.33's GPU memory accounting, term by term. Pure arithmetic, no I/O.

vLLM (`vllm/v1/worker/gpu_worker.py::determine_available_memory`, Model Runner V2 in
`vllm/v1/worker/gpu/`) computes, per GPU:

    requested = ceil(gpu_memory_utilization x cudaMemGetInfo total)
    KV        = requested - consumed since the snapshot (weights, sampler state, non-torch)
                          - transient peak of the profile run - CUDA-graph estimate

and refuses to start when the free memory at its snapshot, taken after its CUDA context, cuBLAS
handles and NCCL exist, is below `requested`. Each constant below says where it comes from:
[source] read in vLLM 0.33.0, [public log] printed by a real vLLM, [estimate] not yet confirmed
on a GPU (see the README, "How the plan is made").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from deployer.catalog import Checkpoint
from deployer.gpus import MIB, Gpu
from deployer.vllm_pin import KV_BLOCK_SIZE

# [public log] NVML's reserved memory per card: NVML total minus the total vLLM printed
# (cudaMemGetInfo). L40S 46068 MiB vs 44.42 GiB; L4 23034 vs 22.05; H100 81559 vs 79.22;
# H200 143771 vs 139.72; RTX 5090 32607 vs 31.37; T4 15360 vs 14.56; RTX 3090 24576 vs
# 23.56-23.58; and torch's OOM totals: RTX 4090 24564 vs 23.64-23.65, A100-40GB 40960 vs 39.50,
# A100-80GB 81920 vs 79.25. The first name that is part of the GPU's name wins.
RESERVED_MIB_BY_MODEL: tuple[tuple[str, int], ...] = (
    ("L40S", 582),
    ("L4", 455),
    ("H200", 698),
    ("H100", 437),
    ("RTX 5090", 484),
    ("RTX 4090", 358),
    ("RTX 3090", 448),
    ("RTX A5000", 448),  # [estimate] same GA102 board as the 3090
    ("T4", 451),
    ("A100-SXM4-40GB", 512),
    ("A100-PCIE-40GB", 512),
    ("A100", 768),
    ("V100", 0),  # the notes: NVML and CUDA totals agree on Volta
)
RESERVED_FALLBACK_FRACTION = 0.02  # [estimate] unknown cards: conservative 2 % of NVML's total

# [estimate] Outside the budget, per vLLM process on a GPU: CUDA context and cuBLAS handles,
# created before vLLM's snapshot, plus what grows after the KV cache is allocated (graphs above
# their estimate, JIT warm-up). NCCL adds its buffers for TP > 1.
PROCESS_ALLOWANCE_BYTES = 768 * MIB
NCCL_ALLOWANCE_BYTES = 512 * MIB
# [estimate] KV kept beyond one full-context request when the planner picks the fraction or the
# context: vLLM's own 150 MiB redundancy buffer plus the model's unconfirmed error.
KV_HEADROOM_BYTES = 512 * MIB
NULL_BLOCKS = 1  # [source] BlockPool keeps one null block (kv_cache_planning.py)

# [source] Model Runner V2 sampler warm-up: bf16 logits + fp32 copy + masked logits + probs
# (FlashInfer top-k/top-p slow path) on cc >= 8.0; the Triton path on older GPUs.
SAMPLER_BYTES_PER_LOGIT = 14
SAMPLER_BYTES_PER_LOGIT_TRITON = 6
TRITON_SAMPLER_SMS = 80  # [estimate] its cached num_SMs x vocab x 4 B buffer, V100-sized
# [estimate] Post-snapshot non-torch memory (lazily loaded kernels, NCCL buffers on first use);
# public log: 0.21 GiB at TP 4.
NON_TORCH_BYTES = 150 * MIB
NON_TORCH_TP_BYTES = 215 * MIB
# [estimate, from public logs] CUDA-graph memory per captured size and layer: 0.52 GiB for
# Qwen3-8B dense at 256 sequences (86 sizes x 36 layers, vLLM 0.21); 3.45 GiB per GPU for
# Qwen3-235B-FP8 MoE (67 sizes x 94 layers, vLLM 0.10.2).
GRAPH_BYTES_PER_SIZE_LAYER = 176 * 1024
GRAPH_BYTES_PER_SIZE_LAYER_MOE = 574 * 1024
# [estimate, calibrated on one public log] fused-MoE workspaces at the profile run: 1.4 GiB of
# activation peak for Qwen3-235B-FP8 at 2048 tokens, 5.27x the three bf16 caches alone.
MOE_FORWARD_FACTOR = 5.27
MAX_CAPTURE_SIZE = 512  # [source] config/vllm.py::_set_cudagraph_sizes (1024 on SM100)
MAX_CAPTURE_SIZE_SM100 = 1024


@dataclass(frozen=True)
class Accounting:
    """How the vLLM version accounts; the defaults are 0.33's. Older public logs in the golden
    tests used other rules (the V1 runner, graphs outside the budget before 0.21)."""

    runner_v2: bool = True  # penalties buffer (penalties.py) and V2's sampler warm-up
    graphs_in_budget: bool = True  # VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1 since 0.21
    full_graphs: bool = True  # FULL_AND_PIECEWISE (0.11+); PIECEWISE only before


VLLM_0_33 = Accounting()


def reserved_mib(gpu: Gpu) -> int:
    """NVML's reserved memory on this GPU: the inventory's figure, else the model's default."""
    if gpu.memory_reserved_mib is not None:
        return gpu.memory_reserved_mib
    for model, mib in RESERVED_MIB_BY_MODEL:
        if model in gpu.name:
            return mib
    return math.ceil(gpu.memory_total_mib * RESERVED_FALLBACK_FRACTION)


def cuda_total_bytes(gpu: Gpu) -> int:
    """The total cudaMemGetInfo reports, which vLLM multiplies gpu_memory_utilization by."""
    return (gpu.memory_total_mib - reserved_mib(gpu)) * MIB


def cuda_free_bytes(gpu: Gpu) -> int:
    """Free memory as vLLM's snapshot sees it (before its own context). NVML v1's `used`
    includes the reserved memory; a file whose `used` leaves out reserved is capped here."""
    return min(gpu.free_bytes, cuda_total_bytes(gpu))


def requested_bytes(gpu: Gpu, fraction: float) -> int:
    """[source] vllm/v1/worker/utils.py::request_memory."""
    return math.ceil(fraction * cuda_total_bytes(gpu))


def process_allowance(tensor_parallel_size: int) -> int:
    """What one vLLM process needs free beyond its budget on each of its GPUs."""
    return PROCESS_ALLOWANCE_BYTES + (NCCL_ALLOWANCE_BYTES if tensor_parallel_size > 1 else 0)


def room_bytes(gpu: Gpu, tensor_parallel_sizes: Sequence[int] = (1,)) -> int:
    """What the processes on this GPU (one TP size each) may ask for together."""
    return cuda_free_bytes(gpu) - sum(process_allowance(tp) for tp in tensor_parallel_sizes)


def capture_sizes(seqs: int, batched: int, capability: int) -> tuple[int, int]:
    """[source] (PIECEWISE, FULL) CUDA-graph sizes: [1, 2, 4] + 8..248 step 8 + 256..max step
    16, max = min(2 x max_num_seqs, 512 or 1024 on SM100, max_num_batched_tokens); FULL decode
    graphs only up to max_num_seqs."""
    top = MAX_CAPTURE_SIZE_SM100 if 100 <= capability < 110 else MAX_CAPTURE_SIZE
    largest = min(2 * seqs, top, batched)
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, top + 1, 16)]
    piecewise = sum(1 for s in sizes if s <= largest)
    full = sum(1 for s in sizes if s <= min(largest, seqs))
    return piecewise, full


@dataclass(frozen=True)
class Need:
    """Per-GPU bytes of one service inside its budget, and its KV bytes per token."""

    weights: int
    activation_peak: int
    non_torch: int
    cuda_graphs: int
    sampler_state: int
    kv_per_token: int

    @property
    def fixed(self) -> int:
        return (
            self.weights
            + self.activation_peak
            + self.non_torch
            + self.cuda_graphs
            + self.sampler_state
        )

    def kv_for(self, tokens: int) -> int:
        """[source] KV bytes vLLM needs to accept max_model_len `tokens`: its blocks plus the
        null block."""
        return (math.ceil(tokens / KV_BLOCK_SIZE) + NULL_BLOCKS) * KV_BLOCK_SIZE * self.kv_per_token

    def bytes_for(self, tokens: int, headroom: int = 0) -> int:
        return self.fixed + self.kv_for(tokens) + headroom

    def tokens_in(self, kv_bytes: int) -> int:
        """[source] "GPU KV cache size": whole blocks (the null block among them) x 16."""
        return max(0, kv_bytes) // self.kv_per_token // KV_BLOCK_SIZE * KV_BLOCK_SIZE

    def longest_in(self, kv_bytes: int) -> int:
        """vLLM's "estimated maximum model length": (blocks - null block) x 16."""
        return max(0, self.tokens_in(kv_bytes) - NULL_BLOCKS * KV_BLOCK_SIZE)

    def with_weights(self, weights: int) -> Need:
        return replace(self, weights=weights)


def dtype_bytes(kv_cache_dtype: str) -> int:
    return 1 if kv_cache_dtype.startswith("fp8") else 2


def need(
    ckpt: Checkpoint,
    tp: int,
    kv_dtype: str,
    seqs: int,
    batched: int,
    eager: bool,
    capability: int,
    accounting: Accounting = VLLM_0_33,
    expert_parallel: bool = False,
) -> Need:
    """Every term of one service's budget on one of its GPUs."""
    fam = ckpt.family
    vocab = fam.vocab_size
    # Profile run, step 1 (V2 skips attention): MLP intermediates of one batch, bf16.
    forward = batched * (3 * fam.intermediate_size // tp + 4 * fam.hidden_size) * 2
    if fam.is_moe:
        moe_i = fam.moe_intermediate_size or 0
        top_k = fam.experts_per_token or 1
        per_gpu = moe_i if expert_parallel else moe_i // tp
        caches = batched * top_k * (3 * per_gpu + fam.hidden_size) * 2
        forward = int(caches * MOE_FORWARD_FACTOR)
    # Step 2, after it: the sampler warm-up over min(seqs, batched) rows.
    rows = min(seqs, batched)
    if capability >= 80:
        sampler = SAMPLER_BYTES_PER_LOGIT * rows * vocab
    else:
        sampler = SAMPLER_BYTES_PER_LOGIT_TRITON * rows * vocab + TRITON_SAMPLER_SMS * vocab * 4
    # [source] V2 PenaltiesState: output_bin_counts (seqs x vocab int32) + a vocab/32 mask.
    penalties = seqs * vocab * 4 + seqs * (vocab // 32) * 4 if accounting.runner_v2 else 0
    graphs = 0
    if not eager and accounting.graphs_in_budget:
        piecewise, full = capture_sizes(seqs, batched, capability)
        count = piecewise + (full if accounting.full_graphs else 0)
        per = GRAPH_BYTES_PER_SIZE_LAYER_MOE if fam.is_moe else GRAPH_BYTES_PER_SIZE_LAYER
        graphs = count * fam.layers * per
    return Need(
        weights=math.ceil(ckpt.weight_bytes / tp),
        activation_peak=max(forward, sampler),
        non_torch=NON_TORCH_BYTES if tp == 1 else NON_TORCH_TP_BYTES,
        cuda_graphs=graphs,
        sampler_state=penalties,
        kv_per_token=fam.kv_bytes_per_token(tp, dtype_bytes(kv_dtype)),
    )


def graph_estimate(
    ckpt: Checkpoint, seqs: int, batched: int, capability: int, full_graphs: bool = True
) -> int:
    """CUDA-graph bytes per GPU whether or not the vLLM version counts them in the budget."""
    piecewise, full = capture_sizes(seqs, batched, capability)
    per = GRAPH_BYTES_PER_SIZE_LAYER_MOE if ckpt.family.is_moe else GRAPH_BYTES_PER_SIZE_LAYER
    return (piecewise + (full if full_graphs else 0)) * ckpt.family.layers * per

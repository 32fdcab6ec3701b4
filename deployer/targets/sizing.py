"""Pure numbers an orchestrator needs that compose does not: how long a tier may take to start,
how long it may take to stop, how much /dev/shm and model-cache storage it needs.

The start-up budget is predicted from the plan (weights to fetch and load, KV cache to set up)
instead of the fixed 600-1230 s other charts use, which kill big models mid-download and
leave small ones crash-looping for 20 minutes. The rates are deliberately pessimistic; the
budget is the prediction times `STARTUP_MARGIN`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deployer.gpus import GIB
from deployer.plan import ServicePlan

# A first start downloads the checkpoint into an empty cache: 50 MB/s is a slow office link
# or a throttled Hugging Face mirror (kserve#5611 and cocore#1 died on fixed budgets there).
DOWNLOAD_BYTES_PER_S = 50e6
# Reading safetensors from a network volume into GPU memory (vLLM logged 27.5 GiB in 6 s from
# page cache on an L40S; a cold PVC is far slower).
LOAD_BYTES_PER_S = 200e6
# torch.compile on a cold cache plus CUDA-graph capture (vllm-facts: 30-90 s and 5-49 s).
COMPILE_S = 180
EAGER_S = 30  # --enforce-eager: no compile, no graphs; profiling still runs
# Allocating and touching the KV cache, and the profiling run at max_num_batched_tokens.
KV_SETUP_BYTES_PER_S = 1e9
STARTUP_MARGIN = 1.5
# A request may fill the whole context; a loaded GPU decodes at least this fast per sequence.
DECODE_FLOOR_TOKENS_PER_S = 25
PRE_STOP_S = 15  # load balancers and Services stop sending before SIGTERM arrives
SHM_BYTES_PER_RANK = 2 * GIB  # NCCL and vLLM's shared-memory queues live in /dev/shm
CACHE_HEADROOM = 1.25  # partial downloads, tokenizer and config files beside the weights


@dataclass(frozen=True)
class StartupBudget:
    """Predicted seconds per phase of one tier's first start, and the budget given to it."""

    download_s: int
    load_s: int
    compile_s: int
    kv_setup_s: int

    @property
    def predicted_s(self) -> int:
        return self.download_s + self.load_s + self.compile_s + self.kv_setup_s

    @property
    def budget_s(self) -> int:
        return math.ceil(self.predicted_s * STARTUP_MARGIN)


def checkpoint_bytes(service: ServicePlan) -> int:
    """Bytes of the whole checkpoint (the plan holds the per-GPU share of the weights)."""
    return service.memory.weights * service.tensor_parallel_size


def startup_budget(service: ServicePlan) -> StartupBudget:
    """How long this tier's first start may take, from its weights and KV cache."""
    weights = checkpoint_bytes(service)
    return StartupBudget(
        download_s=math.ceil(weights / DOWNLOAD_BYTES_PER_S),
        load_s=math.ceil(weights / LOAD_BYTES_PER_S),
        compile_s=EAGER_S if service.enforce_eager else COMPILE_S,
        kv_setup_s=math.ceil(service.memory.kv_cache / KV_SETUP_BYTES_PER_S),
    )


def drain_s(service: ServicePlan) -> int:
    """Seconds a stopping tier gets to finish the longest generation its context allows."""
    return PRE_STOP_S + math.ceil(service.max_model_len / DECODE_FLOOR_TOKENS_PER_S)


def shm_bytes(service: ServicePlan) -> int:
    """/dev/shm for one tier: grows with tensor parallelism (one NCCL peer per rank)."""
    return SHM_BYTES_PER_RANK * service.tensor_parallel_size


def cache_bytes(service: ServicePlan) -> int:
    """Model-cache storage for one checkpoint, in whole GiB."""
    return math.ceil(checkpoint_bytes(service) * CACHE_HEADROOM / GIB) * GIB

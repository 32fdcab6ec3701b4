"""One service on its way into the plan: its settings, its memory need on its GPUs, and the
arithmetic the planner and its refusal messages share. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from deployer.catalog import Checkpoint
from deployer.errors import ProfileError
from deployer.gpus import GIB, MIB, Gpu
from deployer.memory_model import (
    VLLM_0_33,
    Accounting,
    Need,
    cuda_total_bytes,
    need,
    requested_bytes,
    room_bytes,
)
from deployer.profiles import Profile, ServiceSpec
from deployer.vllm_pin import VLLM_VERSION, batch_defaults

MIN_AUTO_CONTEXT = 4096  # "context: max" never plans less than this


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def ceil3(fraction: float) -> float:
    return math.ceil(fraction * 1000) / 1000


def floor3(fraction: float) -> float:
    return math.floor(fraction * 1000) / 1000


@dataclass
class Draft:
    """A service while the planner sizes it: mutable `utilization`, its notes so far."""

    spec: ServiceSpec
    ckpt: Checkpoint
    gpus: tuple[int, ...]
    context: int
    yarn_factor: float | None
    seqs: int
    batched: int
    need: Need
    min_tokens: int
    headroom: int  # KV kept beyond min_tokens (0 where the profile fixed the fraction)
    utilization: float = 0.0
    notes: list[str] = field(default_factory=list)
    accounting: Accounting = VLLM_0_33  # how `need` was counted: refusals recount with it

    @property
    def fixed(self) -> bool:
        return self.spec.gpu_memory_utilization is not None

    @property
    def tp(self) -> int:
        return self.spec.tensor_parallel_size

    def minimum(self) -> int:
        """Bytes per GPU the smallest acceptable budget holds."""
        return self.need.bytes_for(self.min_tokens, self.headroom)


def batch_settings(spec: ServiceSpec, gpus: list[Gpu], where: str) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens): the profile's, else vLLM's default for the GPU
    (which vLLM picks from the CUDA total)."""
    cuda_mib = min(cuda_total_bytes(g) for g in gpus) // MIB
    default_seqs, default_batched = batch_defaults(gpus[0].name, cuda_mib)
    seqs = spec.max_num_seqs or default_seqs
    if spec.max_num_batched_tokens is not None:
        if spec.max_num_batched_tokens < seqs:
            # [source] SchedulerConfig refuses max_num_batched_tokens < max_num_seqs.
            raise ProfileError(
                f"{where}.max_num_batched_tokens: {spec.max_num_batched_tokens} is less than "
                f"max_num_seqs {seqs}; vLLM {VLLM_VERSION} refuses that",
                hint=f"use max_num_batched_tokens: {seqs} or more",
            )
        return seqs, spec.max_num_batched_tokens
    return seqs, max(default_batched, seqs)


def make_draft(
    spec: ServiceSpec,
    ckpt: Checkpoint,
    gpus: list[Gpu],
    profile: Profile,
    accounting: Accounting,
    kv_headroom: int,
) -> Draft:
    context, yarn = context_for(spec, ckpt, profile)
    seqs, batched = batch_settings(spec, gpus, f"{profile.source}: services.{spec.name}")
    capability = min(g.capability for g in gpus)
    service_need = need(
        ckpt,
        spec.tensor_parallel_size,
        spec.kv_cache_dtype,
        seqs,
        batched,
        spec.enforce_eager,
        capability,
        accounting,
    )
    min_tokens = MIN_AUTO_CONTEXT if spec.context is None else context
    headroom = 0 if spec.gpu_memory_utilization is not None else kv_headroom
    return Draft(
        spec,
        ckpt,
        tuple(g.index for g in gpus),
        context,
        yarn,
        seqs,
        batched,
        service_need,
        min_tokens,
        headroom,
        accounting=accounting,
    )


def context_for(spec: ServiceSpec, ckpt: Checkpoint, profile: Profile) -> tuple[int, float | None]:
    fam = ckpt.family
    if spec.context is None:
        return fam.native_context, None
    if spec.context <= fam.max_position_embeddings:
        return spec.context, None
    if spec.context <= fam.yarn_context:
        # YaRN factor relative to the 32768 native window, as the Qwen3 cards recommend.
        factor = max(1.0, math.ceil(spec.context / fam.native_context * 2) / 2)
        return spec.context, factor
    raise ProfileError(
        f"{profile.source}: services.{spec.name}.context: {spec.context} tokens is more than "
        f"{ckpt.id} supports ({fam.max_position_embeddings} natively, "
        f"{fam.yarn_context} with YaRN)",
        hint=f"use context: {fam.yarn_context} or less",
    )


def min_ask(d: Draft, gpu: Gpu) -> int:
    """What the draft asks of this GPU at its smallest acceptable (or fixed) fraction."""
    if d.fixed:
        return requested_bytes(gpu, d.spec.gpu_memory_utilization or 0.0)
    return requested_bytes(gpu, ceil3(d.minimum() / cuda_total_bytes(gpu)))


def room_for(gpu: Gpu, group: Sequence[Draft]) -> int:
    """What the group's processes may ask for together on this GPU (planner.usable_room_bytes)."""
    return room_bytes(gpu, [d.tp for d in group])


def asked_by(gpu: Gpu, group: Sequence[Draft]) -> int:
    return sum(requested_bytes(gpu, d.utilization) for d in group)


def min_asked_by(gpu: Gpu, group: Sequence[Draft]) -> int:
    return sum(min_ask(d, gpu) for d in group)


def budget_of(d: Draft, gpus: dict[int, Gpu]) -> int:
    return min(requested_bytes(gpus[g], d.utilization) for g in d.gpus)

"""Why a plan is refused, in numbers, and the fixes that were checked to work. Pure."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from deployer.catalog import Catalog
from deployer.drafts import (
    MIN_AUTO_CONTEXT,
    Draft,
    batch_settings,
    ceil3,
    floor3,
    gib,
    min_ask,
    min_asked_by,
    room_for,
)
from deployer.gpus import GIB, Gpu, GpuInventory
from deployer.memory_model import (
    Need,
    cuda_free_bytes,
    cuda_total_bytes,
    dtype_bytes,
    need,
    process_allowance,
    requested_bytes,
)
from deployer.vllm_pin import QUANTIZATIONS

MAX_FIXES = 8  # a refusal lists at most this many fixes, the ones that apply together first
MAX_PARTS = 6  # ... and names at most this many services' numbers


def fix_text(fixes: list[str]) -> str:
    """The hint of a refusal: the fixes that apply, a bounded number of them."""
    chosen = [f for f in fixes if f] or ["a GPU with more free memory"]
    more = len(chosen) - MAX_FIXES
    return "fixes: " + "; ".join(chosen[:MAX_FIXES]) + (f"; (+{more} more)" if more > 0 else "")


def refusal_message(gpu: Gpu, fixed: list[Draft]) -> str:
    """Fixed fractions above the free memory: what vLLM's own start check would say."""
    asks = ", ".join(
        f"{d.spec.name} {d.utilization:g} ({gib(requested_bytes(gpu, d.utilization))})"
        for d in fixed
    )
    return (
        f"GPU {gpu.index} ({gpu.name}) has {cuda_free_bytes(gpu) / GIB:.2f}/"
        f"{cuda_total_bytes(gpu) / GIB:.2f} GiB free, less than the fixed "
        f"gpu_memory_utilization asks: {asks} (vLLM would refuse to start: free memory on "
        "startup is less than desired GPU memory utilization)"
    )


def no_fit_message(gpu: Gpu, group: list[Draft]) -> str:
    """A GPU whose services' smallest budgets and allowances exceed its free memory."""
    parts = []
    for d in group[:MAX_PARTS]:
        asked = min_ask(d, gpu)
        if d.fixed:
            parts.append(
                f"{d.spec.name} asks {gib(asked)} (gpu_memory_utilization {d.utilization})"
            )
        else:
            kv = d.need.kv_for(d.min_tokens)
            parts.append(
                f"{d.spec.name} needs {gib(asked)} (weights {gib(d.need.weights)}"
                f" + overheads {gib(d.need.fixed - d.need.weights)}"
                f" + KV for one {d.min_tokens}-token request {gib(kv)}"
                f" + headroom {gib(d.headroom)})"
            )
    if len(group) > MAX_PARTS:
        parts.append(f"and {len(group) - MAX_PARTS} more services")
    used = cuda_total_bytes(gpu) - cuda_free_bytes(gpu)  # NVML's reserved memory left out
    return (
        f"does not fit on GPU {gpu.index} ({gpu.name}, {gib(cuda_total_bytes(gpu))}, "
        f"{gib(used)} used by other processes, {gib(room_for(gpu, group))} usable by "
        f"{len(group)} vLLM process(es)): " + "; ".join(parts)
    )


def fixes_for(
    group: list[Draft],
    gpu: Gpu,
    on_gpu: dict[int, list[Draft]],
    catalog: Catalog,
    inventory: GpuInventory,
) -> list[str]:
    """Changes that would make this GPU's services fit, each checked against the numbers:
    first one set of moves to other GPUs that applies together, then alternatives per
    service (each on its own, the others unchanged)."""
    fixes = [_moves(group, gpu, on_gpu, inventory)]
    room = room_for(gpu, group)
    for d in group:
        avail = room - sum(min_ask(o, gpu) for o in group if o is not d)
        if d.fixed:
            fraction = floor3(max(0.0, avail) / cuda_total_bytes(gpu))
            fixes.append(f"{d.spec.name}: gpu_memory_utilization {fraction} or auto")
            continue
        tokens = d.need.longest_in(avail - d.need.fixed - d.headroom)
        if 1024 <= tokens < d.min_tokens:
            fixes.append(f"{d.spec.name}: context: {tokens // 1024 * 1024}")
        if dtype_bytes(d.spec.kv_cache_dtype) == 2:
            half = Need(**{**d.need.__dict__, "kv_per_token": d.need.kv_per_token // 2})
            if half.bytes_for(d.min_tokens, d.headroom) <= avail:
                fixes.append(f"{d.spec.name}: kv_cache_dtype: fp8")
        fixes.append(_smaller_model(d, gpu, avail, catalog))
        gpus = [inventory.by_index(i) for i in d.gpus]
        fixes.append(smaller_batch(d, gpus, _fits_in(gpu, d, avail)))
    return fixes


def _fits_in(gpu: Gpu, d: Draft, avail: int) -> Callable[[Need], bool]:
    """Whether the draft's min_ask would fit `avail` were its need this one."""

    def fits(candidate: Need) -> bool:
        fraction = ceil3(candidate.bytes_for(d.min_tokens, d.headroom) / cuda_total_bytes(gpu))
        return requested_bytes(gpu, fraction) <= avail

    return fits


def smaller_batch(d: Draft, gpus: list[Gpu], fits: Callable[[Need], bool]) -> str:
    """The profile's own max_num_seqs sizes vLLM's sampler warm-up, penalty buffers and CUDA
    graphs; its max_num_batched_tokens the activations of the profile run. The fix is the
    largest value of the one the profile set that fits, where lowering it alone is what makes
    the service fit; "" otherwise."""
    if d.spec.max_num_seqs is not None:
        seqs = _largest(1, d.seqs - 1, lambda n: fits(_need_with(d, gpus, seqs=n)))
        if seqs:
            seqs = seqs // 16 * 16 or seqs
            return f"{d.spec.name}: lower max_num_seqs to {seqs} or less (it is {d.seqs})"
    if d.spec.max_num_batched_tokens is not None:
        # vLLM refuses fewer batched tokens than max_num_seqs (drafts.batch_settings).
        batched = _largest(d.seqs, d.batched - 1, lambda n: fits(_need_with(d, gpus, batched=n)))
        if batched:
            batched = max(d.seqs, batched // 256 * 256)
            return (
                f"{d.spec.name}: lower max_num_batched_tokens to {batched} or less "
                f"(it is {d.batched})"
            )
    return ""


def _largest(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [low, high] that fits (fits only grows false with n), or 0."""
    if high < low or not fits(low):
        return 0
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _need_with(
    d: Draft, gpus: list[Gpu], seqs: int | None = None, batched: int | None = None
) -> Need:
    """The draft's need were its profile's max_num_seqs or max_num_batched_tokens these."""
    spec = dataclasses.replace(
        d.spec,
        max_num_seqs=seqs or d.spec.max_num_seqs,
        max_num_batched_tokens=batched or d.spec.max_num_batched_tokens,
    )
    new_seqs, new_batched = batch_settings(spec, gpus, d.spec.name)
    capability = min(g.capability for g in gpus)
    kv_dtype, eager = d.spec.kv_cache_dtype, d.spec.enforce_eager
    return need(d.ckpt, d.tp, kv_dtype, new_seqs, new_batched, eager, capability, d.accounting)


def _smaller_model(d: Draft, gpu: Gpu, avail: int, catalog: Catalog) -> str:
    for alt in catalog.alternatives(d.ckpt):
        if alt.weights_gb >= d.ckpt.weights_gb:
            continue
        if gpu.capability < QUANTIZATIONS[alt.quantization].min_capability:
            continue
        alt_need = d.need.with_weights(math.ceil(alt.weight_bytes / d.tp))
        if alt_need.bytes_for(d.min_tokens, d.headroom) <= avail:
            return f"{d.spec.name}: model: {alt.id}"
        tokens = alt_need.longest_in(avail - alt_need.fixed - d.headroom)
        if tokens >= MIN_AUTO_CONTEXT:
            return f"{d.spec.name}: model: {alt.id} with context: {tokens // 1024 * 1024}"
    return ""


def _moves(
    group: list[Draft], gpu: Gpu, on_gpu: dict[int, list[Draft]], inventory: GpuInventory
) -> str:
    """One set of `gpus:` moves, last services first, onto other GPUs' planned room (a ledger,
    so two moves never count the same room), that leaves this GPU fitting; "" if none does."""
    ledger = {}
    for other in inventory.gpus:
        if other.index != gpu.index and not other.mig_enabled:
            tenants = on_gpu.get(other.index, [])
            ledger[other.index] = room_for(other, tenants) - min_asked_by(other, tenants)
    stay = list(group)
    moves: list[str] = []
    for d in reversed(group):
        if min_asked_by(gpu, stay) <= room_for(gpu, stay):
            break
        if len(d.gpus) > 1 or d.fixed:
            continue
        for index in sorted(ledger, key=lambda i: (-ledger[i], i)):
            cost = min_ask(d, inventory.by_index(index)) + process_allowance(d.tp)
            if cost <= ledger[index]:
                ledger[index] -= cost
                stay.remove(d)
                moves.append(f"{d.spec.name}: gpus: [{index}]")
                break
    if moves and min_asked_by(gpu, stay) <= room_for(gpu, stay):
        return " with ".join(moves)
    return ""

"""Which GPUs each service runs on, and whether vLLM accepts that model on them: compute
capability, MIG, and tensor-parallel sizes the checkpoint's shapes divide by. Pure."""

from __future__ import annotations

from collections.abc import Callable

from deployer.catalog import Catalog, Checkpoint
from deployer.errors import PlanError
from deployer.gpus import Gpu, GpuInventory
from deployer.profiles import Profile, ServiceSpec
from deployer.vllm_pin import QUANTIZATIONS, VLLM_VERSION, kernel_note

# [source] Partition sizes vLLM's kernels need per GPU: block-FP8 weights come in 128x128
# blocks (fp8_utils.py::validate_fp8_block_shape), AWQ groups of 128 (Marlin).
PARTITION_MULTIPLE = {"fp8": 128, "awq": 128}
TP_CANDIDATES = (1, 2, 4, 8, 16)

# (spec, gpu) -> bytes the service would still leave on that GPU, given what is placed there.
RoomAfter = Callable[[ServiceSpec, Gpu, list[ServiceSpec]], int]


def place(
    profile: Profile, inventory: GpuInventory, room_after: RoomAfter
) -> dict[str, tuple[int, ...]]:
    """Explicit `gpus:` as given; `gpus: auto` on the GPUs with the most room left once the
    services already placed there are counted, whole GPUs before MIG ones."""
    indices = {g.index for g in inventory.gpus}
    placed: dict[str, tuple[int, ...]] = {}
    on_gpu: dict[int, list[ServiceSpec]] = {g.index: [] for g in inventory.gpus}
    for spec in profile.services:
        if spec.gpus is None:
            continue
        for position, index in enumerate(spec.gpus):
            if index not in indices:
                # The profile is fine; this box lacks the GPU: "does not fit", like gpu_count.
                raise PlanError(
                    f"{profile.source}: services.{spec.name}.gpus[{position}]: GPU {index} does "
                    f"not exist; this box has GPUs {inventory.indices_text()}",
                    hint=f"profile {profile.name!r} needs {profile.gpus_needed} GPU(s)",
                )
            on_gpu[index].append(spec)
        placed[spec.name] = spec.gpus
    whole = [g for g in inventory.gpus if not g.mig_enabled]
    # MIG GPUs are refused later with their own message; never chosen while whole ones exist.
    candidates = whole or list(inventory.gpus)
    for spec in profile.services:
        if spec.gpus is not None:
            continue
        if len(candidates) < spec.gpu_count:
            raise PlanError(
                f"services.{spec.name} needs {spec.gpu_count} GPUs; this box has "
                f"{len(candidates)}" + (" without MIG" if len(whole) < len(inventory.gpus) else ""),
                hint="lower gpu_count or plan for a bigger box with --gpus-file",
            )
        ranked = sorted(
            candidates,
            key=lambda g: (-room_after(spec, g, on_gpu[g.index]), len(on_gpu[g.index]), g.index),
        )
        chosen = tuple(sorted(g.index for g in ranked[: spec.gpu_count]))
        placed[spec.name] = chosen
        for index in chosen:
            on_gpu[index].append(spec)
    return placed


def check_gpu_support(
    spec: ServiceSpec, ckpt: Checkpoint, gpus: list[Gpu], catalog: Catalog, box_gpus: int
) -> str | None:
    """Refuse what vLLM would refuse on these GPUs; return the fallback-kernel note, if any."""
    support = QUANTIZATIONS[ckpt.quantization]
    for gpu in gpus:
        if gpu.mig_enabled:
            raise PlanError(
                f"{spec.name}: GPU {gpu.index} ({gpu.name}) has MIG enabled; qwen-deploy places "
                "services on whole GPUs",
                hint="disable MIG (nvidia-smi -i N -mig 0) or choose other GPUs",
            )
        if gpu.capability < support.min_capability:
            runnable = [
                c.id
                for c in catalog.alternatives(ckpt)
                if gpu.capability >= QUANTIZATIONS[c.quantization].min_capability
            ]
            fixes = f"use {' or '.join(runnable)}" if runnable else "use a newer GPU"
            raise PlanError(
                f"{spec.name}: {ckpt.id} is {ckpt.quantization.upper()}, which vLLM {VLLM_VERSION} "
                f"runs only on compute capability {support.min_capability / 10:.1f} or newer; "
                f"GPU {gpu.index} ({gpu.name}) is {gpu.compute_capability}",
                hint=f"{fixes}, or place the service on a newer GPU",
            )
    check_tensor_parallel(spec.name, ckpt, spec.tensor_parallel_size, box_gpus)
    weakest = min(gpus, key=lambda g: g.capability)
    return kernel_note(ckpt.quantization, weakest.capability)


def tp_problem(ckpt: Checkpoint, tp: int) -> str | None:
    """Why vLLM refuses this checkpoint at tensor parallel size `tp`; None if it accepts it."""
    fam = ckpt.family
    if fam.attention_heads % tp:
        return f"does not divide {fam.name}'s {fam.attention_heads} attention heads"
    if fam.kv_heads % tp and tp % fam.kv_heads:
        # [source] QKVParallelLinear: KV heads split evenly, or replicated evenly.
        return (
            f"neither divides nor is a multiple of {fam.name}'s {fam.kv_heads} KV heads "
            "(vLLM's QKVParallelLinear)"
        )
    multiple = PARTITION_MULTIPLE.get(ckpt.quantization)
    if multiple:
        what = "FP8 weight block" if ckpt.quantization == "fp8" else "AWQ group"
        shapes = [("intermediate_size", fam.intermediate_size)]
        if fam.moe_intermediate_size:
            shapes.append(("moe_intermediate_size", fam.moe_intermediate_size))
        for name, size in shapes:
            if size % tp or (size // tp) % multiple:
                return (
                    f"splits {fam.name}'s {name} {size} into {size / tp:g} per GPU, not a "
                    f"multiple of the {what} of {multiple}"
                )
    return None


def working_tp_sizes(ckpt: Checkpoint, limit: int) -> list[int]:
    return [tp for tp in TP_CANDIDATES if tp <= max(1, limit) and tp_problem(ckpt, tp) is None]


def check_tensor_parallel(name: str, ckpt: Checkpoint, tp: int, box_gpus: int) -> None:
    problem = tp_problem(ckpt, tp)
    if problem is None:
        return
    sizes = [str(n) for n in working_tp_sizes(ckpt, max(box_gpus, tp))]
    listed = ", ".join(sizes[:-1]) + (" or " if len(sizes) > 1 else "") + sizes[-1] if sizes else ""
    raise PlanError(
        f"{name}: tensor parallel size {tp} {problem}; vLLM {VLLM_VERSION} would refuse {ckpt.id}",
        hint=(
            f"use {listed} GPU(s) for {ckpt.id}"
            if sizes
            else "use another checkpoint of this model"
        ),
    )

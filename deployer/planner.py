"""The planner: (GPU inventory, profile, catalog, options) -> DeploymentPlan. Pure: no I/O.

Memory is sized the way vLLM 0.33 accounts for it (vllm/v1/worker/utils.py::request_memory and
gpu_worker.py::determine_available_memory): an instance asks for
`ceil(total_memory * gpu_memory_utilization)` bytes per GPU, which must be *free* when it starts,
and its KV cache is that budget minus weights, the activation peak of the profiling run,
non-torch memory and CUDA-graph memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from deployer.catalog import Catalog, Checkpoint
from deployer.errors import PlanError, ProfileError
from deployer.gpus import GIB, MIB, Gpu, GpuInventory
from deployer.plan import (  # re-exported: callers imported them from here before plan.py
    PLAN_SCHEMA_VERSION,
    AuthMode,
    DeploymentPlan,
    Engine,
    MemoryBreakdown,
    ServicePlan,
)
from deployer.profiles import Profile, ServiceSpec, catalog_for
from deployer.vllm_pin import (
    KV_BLOCK_SIZE,
    QUANTIZATIONS,
    STANDIN_IMAGE,
    VLLM_IMAGE,
    VLLM_VERSION,
    batch_defaults,
    kernel_note,
)

__all__ = [
    "PLAN_SCHEMA_VERSION",
    "AuthMode",
    "AutoChoice",
    "DeploymentPlan",
    "Engine",
    "MemoryBreakdown",
    "PlanOptions",
    "ServicePlan",
    "choose_profile",
    "plan",
    "usable_room_bytes",
    "usable_room_mib",
]

MIN_AUTO_CONTEXT = 4096  # "context: max" never plans less than this
# Kept free on every GPU beyond what vLLM asks for: the CUDA context (created before vLLM's
# free-memory check), allocator fragmentation and NVML/torch accounting differences.
MARGIN_MIN_BYTES = 768 * MIB
MARGIN_FRACTION = 0.03
MAX_UTILIZATION = 0.95


@dataclass(frozen=True)
class PlanOptions:
    deployment: str = "qwen3"
    engine: str = "vllm"  # "vllm" or "stand-in"
    image: str | None = None  # None: the image the engine pins (vllm_pin)
    margin_min_bytes: int = MARGIN_MIN_BYTES
    margin_fraction: float = MARGIN_FRACTION


# --- memory model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Need:
    """Fixed per-GPU cost of one service and its KV cost per token."""

    weights: int
    activation_peak: int
    non_torch: int
    cuda_graphs: int
    kv_per_token: int

    @property
    def fixed(self) -> int:
        return self.weights + self.activation_peak + self.non_torch + self.cuda_graphs

    def bytes_for(self, tokens: int) -> int:
        return self.fixed + _kv_bytes(tokens, self.kv_per_token)


def _kv_bytes(tokens: int, per_token: int) -> int:
    return math.ceil(tokens / KV_BLOCK_SIZE) * KV_BLOCK_SIZE * per_token


def _dtype_bytes(kv_cache_dtype: str) -> int:
    return 1 if kv_cache_dtype.startswith("fp8") else 2


def _need(ckpt: Checkpoint, tp: int, kv_dtype: str, seqs: int, batched: int, eager: bool) -> _Need:
    fam = ckpt.family
    # Profiling-run peak: hidden states and MLP intermediates for one full batch of tokens,
    # plus fp32 logits for every sequence the sampler warms up with (vocab is gathered).
    activations = batched * (4 * fam.hidden_size + 2 * fam.intermediate_size // tp) * 2
    logits = seqs * fam.vocab_size * 4
    return _Need(
        weights=math.ceil(ckpt.weight_bytes / tp),
        activation_peak=int((activations + logits) * 1.25),
        # cuBLAS/NCCL workspaces and other allocations outside torch's allocator.
        non_torch=256 * MIB + (512 * MIB if tp > 1 else 0),
        # Heuristic, not a vLLM constant: graph pools grow with the number of layers.
        cuda_graphs=0 if eager else 256 * MIB + fam.layers * 12 * MIB,
        kv_per_token=fam.kv_bytes_per_token(tp, _dtype_bytes(kv_dtype)),
    )


def usable_room_bytes(gpu: Gpu, processes: int = 1, options: PlanOptions | None = None) -> int:
    """What the vLLM processes on this GPU may ask for together (the sum of their
    ceil(gpu_memory_utilization x total)), given the memory free now. The planner, runtime's
    pre-start check and `tune` all use this one rule."""
    options = options or PlanOptions()
    margin = max(options.margin_min_bytes, int(gpu.total_bytes * options.margin_fraction))
    return min(int(gpu.total_bytes * MAX_UTILIZATION), gpu.free_bytes - margin)


def usable_room_mib(gpu: Gpu, processes: int = 1, options: PlanOptions | None = None) -> int:
    """`usable_room_bytes` in MiB (rounded down)."""
    return usable_room_bytes(gpu, processes, options) // MIB


def _usable_bytes(gpu: Gpu, options: PlanOptions, processes: int = 1) -> int:
    return usable_room_bytes(gpu, processes, options)


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


# --- placement ------------------------------------------------------------------------------


@dataclass
class _Draft:
    spec: ServiceSpec
    ckpt: Checkpoint
    gpus: tuple[int, ...]
    context: int
    yarn_factor: float | None
    seqs: int
    batched: int
    need: _Need
    min_tokens: int
    utilization: float = 0.0
    notes: list[str] = field(default_factory=list)


def _place(profile: Profile, inventory: GpuInventory) -> dict[str, tuple[int, ...]]:
    indices = {g.index for g in inventory.gpus}
    placed: dict[str, tuple[int, ...]] = {}
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
        placed[spec.name] = spec.gpus
    taken = {g for gpus in placed.values() for g in gpus}
    for spec in profile.services:
        if spec.gpus is not None:
            continue
        # Prefer GPUs no other service uses, then the ones with the most free memory.
        ranked = sorted(inventory.gpus, key=lambda g: (g.index in taken, -g.free_bytes, g.index))
        if len(ranked) < spec.gpu_count:
            raise PlanError(
                f"services.{spec.name} needs {spec.gpu_count} GPUs; this box has {len(ranked)}",
                hint="lower gpu_count or plan for a bigger box with --gpus-file",
            )
        chosen = tuple(sorted(g.index for g in ranked[: spec.gpu_count]))
        placed[spec.name] = chosen
        taken.update(chosen)
    return placed


def _check_gpu_support(
    spec: ServiceSpec, ckpt: Checkpoint, gpus: list[Gpu], catalog: Catalog
) -> str | None:
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
    if spec.tensor_parallel_size > 1 and ckpt.family.attention_heads % spec.tensor_parallel_size:
        raise PlanError(
            f"{spec.name}: tensor parallel size {spec.tensor_parallel_size} does not divide "
            f"{ckpt.family.name}'s {ckpt.family.attention_heads} attention heads",
            hint="use 1, 2, 4 or 8 GPUs",
        )
    weakest = min(gpus, key=lambda g: g.capability)
    return kernel_note(ckpt.quantization, weakest.capability)


def _context(spec: ServiceSpec, ckpt: Checkpoint, profile: Profile) -> tuple[int, float | None]:
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


# --- the plan -------------------------------------------------------------------------------


def plan(
    inventory: GpuInventory,
    profile: Profile,
    catalog: Catalog,
    options: PlanOptions | None = None,
) -> DeploymentPlan:
    """Place every service of the profile on the inventory's GPUs and size its memory."""
    options = options or PlanOptions()
    if not inventory.gpus:
        raise PlanError("the inventory lists no GPUs")
    catalog = catalog_for(profile, catalog)
    placement = _place(profile, inventory)
    by_index = {g.index: g for g in inventory.gpus}

    drafts: list[_Draft] = []
    for spec in profile.services:
        ckpt = catalog.get(spec.model, f"{profile.source}: services.{spec.name}.model")
        gpus = placement[spec.name]
        gpu_objs = [by_index[i] for i in gpus]
        note = _check_gpu_support(spec, ckpt, gpu_objs, catalog)
        context, yarn = _context(spec, ckpt, profile)
        default_seqs, batched = batch_defaults(
            gpu_objs[0].name, min(g.memory_total_mib for g in gpu_objs)
        )
        seqs = spec.max_num_seqs or default_seqs
        need = _need(
            ckpt, spec.tensor_parallel_size, spec.kv_cache_dtype, seqs, batched, spec.enforce_eager
        )
        min_tokens = MIN_AUTO_CONTEXT if spec.context is None else context
        draft = _Draft(spec, ckpt, gpus, context, yarn, seqs, max(batched, seqs), need, min_tokens)
        if note:
            draft.notes.append(
                f"{ckpt.quantization.upper()} on compute capability "
                f"{min(g.compute_capability for g in gpu_objs)}: {note}"
            )
        drafts.append(draft)

    _size_utilizations(drafts, by_index, options, catalog, inventory)
    services = tuple(_finish(d, by_index) for d in drafts)
    services = _order(services)
    warnings = (
        tuple(f"{d.spec.name}: {n}" for d in drafts for n in d.notes)
        + _shared_gpu_warnings(services)
        + _exposure_warnings(services)
    )
    return DeploymentPlan(
        deployment=options.deployment,
        profile=profile.name,
        profile_source=profile.source,
        engine=Engine(options.engine),
        image=options.image or (STANDIN_IMAGE if options.engine == "stand-in" else VLLM_IMAGE),
        vllm_version=VLLM_VERSION,
        inventory_source=inventory.source,
        gpus=tuple(by_index[i] for i in sorted({g for s in services for g in s.gpus})),
        services=services,
        start_waves=_waves(services),
        warnings=warnings,
    )


def _size_utilizations(
    drafts: list[_Draft],
    gpus: dict[int, Gpu],
    options: PlanOptions,
    catalog: Catalog,
    inventory: GpuInventory,
) -> None:
    """Give each service the smallest fraction that holds its weights, overheads and one
    full-context request, then share what is left on each GPU by the services' `share`."""
    on_gpu: dict[int, list[_Draft]] = {}
    for d in drafts:
        for g in d.gpus:
            on_gpu.setdefault(g, []).append(d)

    for d in drafts:
        if d.spec.gpu_memory_utilization is not None:
            d.utilization = d.spec.gpu_memory_utilization
        else:
            need = d.need.bytes_for(d.min_tokens)
            d.utilization = _ceil(max(need / gpus[g].total_bytes for g in d.gpus))

    # Every GPU must hold what its services ask for together.
    for index, group in sorted(on_gpu.items()):
        gpu = gpus[index]
        asked = sum(math.ceil(d.utilization * gpu.total_bytes) for d in group)
        if asked > _usable_bytes(gpu, options):
            raise PlanError(
                _no_fit_message(gpu, group, options),
                hint="; ".join(_fixes(group, gpu, options, catalog, inventory)),
            )

    slack = {
        i: _usable_bytes(gpus[i], options)
        - sum(math.ceil(d.utilization * gpus[i].total_bytes) for d in group)
        for i, group in on_gpu.items()
    }
    shares = {
        i: sum(d.spec.share for d in group if d.spec.gpu_memory_utilization is None)
        for i, group in on_gpu.items()
    }
    for d in drafts:
        if d.spec.gpu_memory_utilization is not None:
            continue
        extra = min(slack[g] * d.spec.share / shares[g] / gpus[g].total_bytes for g in d.gpus)
        d.utilization = _floor(d.utilization + max(0.0, extra))

    for d in drafts:
        budget = min(math.ceil(d.utilization * gpus[g].total_bytes) for g in d.gpus)
        kv = budget - d.need.fixed
        needed = _kv_bytes(d.min_tokens, d.need.kv_per_token)
        if kv < needed:
            # Only a fixed utilization from the profile gets here: report it as vLLM would.
            fits = max(0, kv) // d.need.kv_per_token
            raise PlanError(
                f"{d.spec.name}: gpu_memory_utilization {d.utilization} gives "
                f"{_gib(budget)} per GPU; weights {_gib(d.need.weights)} + overheads "
                f"{_gib(d.need.fixed - d.need.weights)} leave {_gib(max(0, kv))} of KV cache, "
                f"but one {d.min_tokens}-token request needs {_gib(needed)} "
                f"(vLLM would refuse to start: estimated maximum model length {fits})",
                hint=_join_fixes(
                    [
                        f"context: {fits // 1024 * 1024}" if fits >= 1024 else "",
                        "raise gpu_memory_utilization or set it to auto",
                        "kv_cache_dtype: fp8" if _dtype_bytes(d.spec.kv_cache_dtype) == 2 else "",
                    ]
                ),
            )


def _ceil(fraction: float) -> float:
    return math.ceil(fraction * 1000) / 1000


def _floor(fraction: float) -> float:
    return math.floor(fraction * 1000) / 1000


def _join_fixes(fixes: list[str]) -> str:
    return "fixes: " + "; ".join(f for f in fixes if f)


def _no_fit_message(gpu: Gpu, group: list[_Draft], options: PlanOptions) -> str:
    parts = []
    for d in group:
        asked = math.ceil(d.utilization * gpu.total_bytes)
        if d.spec.gpu_memory_utilization is not None:
            parts.append(
                f"{d.spec.name} asks {_gib(asked)} (gpu_memory_utilization {d.utilization})"
            )
        else:
            kv = _kv_bytes(d.min_tokens, d.need.kv_per_token)
            parts.append(
                f"{d.spec.name} needs {_gib(asked)} (weights {_gib(d.need.weights)}"
                f" + overheads {_gib(d.need.fixed - d.need.weights)}"
                f" + KV for one {d.min_tokens}-token request {_gib(kv)})"
            )
    used = gpu.total_bytes - gpu.free_bytes
    return (
        f"does not fit on GPU {gpu.index} ({gpu.name}, {_gib(gpu.total_bytes)}, "
        f"{_gib(used)} used by other processes, {_gib(_usable_bytes(gpu, options))} usable): "
        + "; ".join(parts)
    )


def _fixes(
    group: list[_Draft], gpu: Gpu, options: PlanOptions, catalog: Catalog, inventory: GpuInventory
) -> list[str]:
    """Changes that would make this GPU's services fit, each checked against the numbers."""
    usable = _usable_bytes(gpu, options)
    fixes: list[str] = []
    for d in group:
        others = sum(math.ceil(o.utilization * gpu.total_bytes) for o in group if o is not d)
        room = usable - others
        if d.spec.gpu_memory_utilization is not None:
            fixes.append(
                f"{d.spec.name}: gpu_memory_utilization "
                f"{_floor(max(0.0, room) / gpu.total_bytes)} or auto"
            )
            continue
        tokens = (room - d.need.fixed) // d.need.kv_per_token if room > d.need.fixed else 0
        if 1024 <= tokens < d.min_tokens:
            fixes.append(f"{d.spec.name}: context: {tokens // 1024 * 1024}")
        if _dtype_bytes(d.spec.kv_cache_dtype) == 2:
            half = replace(d.need, kv_per_token=d.need.kv_per_token // 2)
            if half.bytes_for(d.min_tokens) <= room:
                fixes.append(f"{d.spec.name}: kv_cache_dtype: fp8")
        for alt in catalog.alternatives(d.ckpt):
            if alt.weights_gb >= d.ckpt.weights_gb:
                continue
            if gpu.capability < QUANTIZATIONS[alt.quantization].min_capability:
                continue
            alt_need = replace(
                d.need, weights=math.ceil(alt.weight_bytes / d.spec.tensor_parallel_size)
            )
            if alt_need.bytes_for(d.min_tokens) <= room:
                fixes.append(f"{d.spec.name}: model: {alt.id}")
                break
            alt_tokens = (room - alt_need.fixed) // alt_need.kv_per_token
            if alt_tokens >= MIN_AUTO_CONTEXT:
                fixes.append(
                    f"{d.spec.name}: model: {alt.id} with context: {alt_tokens // 1024 * 1024}"
                )
                break
        for other in inventory.gpus:
            if other.index in d.gpus or len(d.gpus) > 1:
                continue
            if d.need.bytes_for(d.min_tokens) <= _usable_bytes(other, options):
                fixes.append(f"{d.spec.name}: gpus: [{other.index}]")
                break
    if not fixes:
        fixes.append("a GPU with more free memory")
    return ["fixes: " + fixes[0], *fixes[1:]]


def _finish(d: _Draft, gpus: dict[int, Gpu]) -> ServicePlan:
    budget = min(math.ceil(d.utilization * gpus[g].total_bytes) for g in d.gpus)
    kv = budget - d.need.fixed
    kv_tokens = kv // d.need.kv_per_token // KV_BLOCK_SIZE * KV_BLOCK_SIZE
    # "context: max" takes what the KV cache holds, in whole 256-token steps.
    max_len = min(d.context, kv_tokens // 256 * 256) if d.spec.context is None else d.context
    spec = d.spec
    return ServicePlan(
        name=spec.name,
        model=d.ckpt.id,
        served_model_name=spec.served_model_name or d.ckpt.id,
        family=d.ckpt.family.name,
        quantization=d.ckpt.quantization,
        gpus=d.gpus,
        tensor_parallel_size=spec.tensor_parallel_size,
        gpu_memory_utilization=d.utilization,
        max_model_len=max_len,
        max_num_seqs=d.seqs,
        max_num_batched_tokens=d.batched,
        kv_cache_dtype=spec.kv_cache_dtype,
        kv_cache_tokens=kv_tokens,
        max_concurrency=round(kv_tokens / max_len, 2),
        memory=MemoryBreakdown(
            budget=budget,
            weights=d.need.weights,
            activation_peak=d.need.activation_peak,
            non_torch=d.need.non_torch,
            cuda_graphs=d.need.cuda_graphs,
            kv_cache=kv,
        ),
        port=spec.port,
        bind=spec.bind,
        api_key_source=(
            "none"
            if spec.auth == "none"
            else "profile"
            if spec.api_key
            else f"env:{spec.api_key_env}"
            if spec.api_key_env
            else "generated"
        ),
        generation=spec.generation,
        reasoning_parser=spec.reasoning_parser,
        yarn_factor=d.yarn_factor,
        kernel_note=d.notes[0] if d.notes else None,
        start_after=(),
        startup_timeout_s=spec.startup_timeout_s,
        aliases=spec.aliases,
        enforce_eager=spec.enforce_eager,
        extra_args=spec.extra_args,
        environment=spec.environment,
        utilization_planned=spec.gpu_memory_utilization is None,
        auth=AuthMode(spec.auth),
    )


def _order(services: tuple[ServicePlan, ...]) -> tuple[ServicePlan, ...]:
    """Services sharing a GPU start one after another, in profile order (vllm#55827: two
    engines profiling one GPU at once mis-size each other)."""
    ordered = []
    for position, service in enumerate(services):
        before = tuple(s.name for s in services[:position] if set(s.gpus) & set(service.gpus))
        ordered.append(replace(service, start_after=before[-1:]))
    return tuple(ordered)


def _waves(services: tuple[ServicePlan, ...]) -> tuple[tuple[str, ...], ...]:
    level: dict[str, int] = {}
    for service in services:
        level[service.name] = 1 + max((level[d] for d in service.start_after), default=-1)
    return tuple(
        tuple(s.name for s in services if level[s.name] == wave)
        for wave in range(max(level.values()) + 1)
    )


def _shared_gpu_warnings(services: tuple[ServicePlan, ...]) -> tuple[str, ...]:
    shared: dict[int, list[str]] = {}
    for service in services:
        for g in service.gpus:
            shared.setdefault(g, []).append(service.name)
    return tuple(
        f"GPU {g} is shared by {' and '.join(names)}: they start one after another and slow "
        "each other under load"
        for g, names in sorted(shared.items())
        if len(names) > 1
    )


def _exposure_warnings(services: tuple[ServicePlan, ...]) -> tuple[str, ...]:
    """Say so when an endpoint is reachable beyond this host or served without a key."""
    out = []
    for s in services:
        if s.bind == "0.0.0.0":
            out.append(
                f"{s.name}: port {s.port} binds every interface (bind: 0.0.0.0): anyone who can "
                "reach this host can call it; put a firewall or a TLS proxy in front"
            )
        if s.auth == "none":
            out.append(
                f"{s.name}: auth: none: {s.bind}:{s.port} serves without an API key; anyone who "
                "can reach it can use it"
            )
    return tuple(out)


# --- profile auto -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoChoice:
    plan: DeploymentPlan
    reasons: tuple[str, ...]


def choose_profile(
    inventory: GpuInventory,
    profiles: list[Profile],
    catalog: Catalog,
    options: PlanOptions | None = None,
) -> AutoChoice:
    """Plan every profile; keep the one that fits and uses the most GPUs, then the one with
    fewest services on fallback kernels, then the one serving the most weights."""
    reasons: list[str] = []
    fitting: list[tuple[tuple[int, int, int], DeploymentPlan]] = []
    for profile in profiles:
        if profile.gpus_needed > len(inventory.gpus):
            reasons.append(
                f"{profile.name}: needs {profile.gpus_needed} GPUs, "
                f"this box has {len(inventory.gpus)}"
            )
            continue
        try:
            candidate = plan(inventory, profile, catalog, options)
        except (PlanError, ProfileError) as exc:
            reasons.append(f"{profile.name}: {exc.message}")
            continue
        weights = sum(s.memory.weights * s.tensor_parallel_size for s in candidate.services)
        native = sum(1 for s in candidate.services if s.kernel_note is None)
        fallback = len(candidate.services) - native
        fitting.append(((len(candidate.gpus), -fallback, weights), candidate))
        reasons.append(
            f"{profile.name}: fits, uses {len(candidate.gpus)} GPU(s) "
            f"and {_gib(weights)} of weights"
        )
    if not fitting:
        raise PlanError("no profile fits these GPUs: " + "; ".join(reasons))
    best = max(fitting, key=lambda item: item[0])[1]
    return AutoChoice(best, (f"chose {best.profile}", *reasons))

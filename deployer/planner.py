"""The planner: (GPU inventory, profile, catalog, options) -> DeploymentPlan. Pure: no I/O.

Memory is sized the way vLLM 0.33 accounts for it (`deployer.memory_model`): an instance asks
for `ceil(gpu_memory_utilization x cudaMemGetInfo total)` bytes per GPU, which must be free when
it starts, and its KV cache is that budget minus weights, sampler state, the activation peak of
the profiling run, non-torch memory and CUDA-graph memory. Outside the budget each process on a
GPU keeps an allowance for its CUDA context, cuBLAS and NCCL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from deployer.catalog import Catalog, Checkpoint
from deployer.drafts import (
    MIN_AUTO_CONTEXT,
    Draft,
    asked_by,
    budget_of,
    ceil3,
    floor3,
    gib,
    make_draft,
    min_ask,
    room_for,
)
from deployer.errors import PlanError, ProfileError
from deployer.gpus import MIB, Gpu, GpuInventory
from deployer.memory_model import (
    KV_HEADROOM_BYTES,
    VLLM_0_33,
    Accounting,
    cuda_free_bytes,
    cuda_total_bytes,
    dtype_bytes,
    process_allowance,
    requested_bytes,
    room_bytes,
)
from deployer.placement import check_gpu_support, place
from deployer.plan import (  # re-exported: callers imported them from here before plan.py
    PLAN_SCHEMA_VERSION,
    AuthMode,
    DeploymentPlan,
    Engine,
    MemoryBreakdown,
    ServicePlan,
)
from deployer.profiles import Profile, ServiceSpec, catalog_for
from deployer.refusals import fix_text, fixes_for, no_fit_message, refusal_message, smaller_batch
from deployer.vllm_pin import STANDIN_IMAGE, VLLM_IMAGE, VLLM_VERSION

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
    "gpu_spare_bytes",
    "plan",
    "requested_bytes",
    "start_room_bytes",
    "usable_room_bytes",
    "usable_room_mib",
]

MAX_UTILIZATION = 0.95  # no longer a planning rule (allowances are per process); kept for imports


@dataclass(frozen=True)
class PlanOptions:
    """The planner's inputs beyond the profile and the GPUs."""

    deployment: str = "qwen3"
    engine: str = "vllm"  # "vllm" or "stand-in"
    image: str | None = None  # None: the image the engine pins (vllm_pin)
    kv_headroom_bytes: int = KV_HEADROOM_BYTES  # beyond one request, where the planner chooses
    accounting: Accounting = VLLM_0_33


# --- the one room rule ----------------------------------------------------------------------


def usable_room_bytes(
    gpu: Gpu,
    processes: int = 1,
    options: PlanOptions | None = None,
    tensor_parallel_sizes: Sequence[int] | None = None,
) -> int:
    """What the vLLM processes on this GPU may ask for together (the sum of their
    `requested_bytes`), given the memory free now: free memory minus each process's CUDA
    context, cuBLAS and (TP > 1) NCCL allowance. The planner, runtime's pre-start check and
    `tune` all use this one rule; pass the processes' TP sizes when some use several GPUs."""
    del options  # same rule for every option set; the parameter keeps call sites stable
    sizes = tuple(tensor_parallel_sizes) if tensor_parallel_sizes else (1,) * max(1, processes)
    return room_bytes(gpu, sizes)


def usable_room_mib(
    gpu: Gpu,
    processes: int = 1,
    options: PlanOptions | None = None,
    tensor_parallel_sizes: Sequence[int] | None = None,
) -> int:
    """`usable_room_bytes` in MiB (rounded down)."""
    return usable_room_bytes(gpu, processes, options, tensor_parallel_sizes) // MIB


def start_room_bytes(gpu: Gpu, service: ServicePlan) -> int:
    """What `service` may ask of this GPU as it is now, right before it starts: the room past
    its process allowance when the planner chose its fraction; the free memory itself (vLLM's
    own rule) when the profile fixed it, which the plan already warned about if thin."""
    if not service.utilization_planned:
        return cuda_free_bytes(gpu)
    return usable_room_bytes(gpu, tensor_parallel_sizes=[service.tensor_parallel_size])


def gpu_spare_bytes(plan: DeploymentPlan, index: int) -> int:
    """Room on a planned GPU that none of its services asks for (negative: over-asked)."""
    gpu = plan.gpu(index)
    if gpu is None:
        return 0
    tenants = plan.services_on(index)
    room = usable_room_bytes(gpu, tensor_parallel_sizes=[s.tensor_parallel_size for s in tenants])
    return room - sum(requested_bytes(gpu, s.gpu_memory_utilization) for s in tenants)


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
    by_index = {g.index: g for g in inventory.gpus}

    def checkpoint(spec: ServiceSpec) -> Checkpoint:
        return catalog.get(spec.model, f"{profile.source}: services.{spec.name}.model")

    estimates: dict[tuple[str, int], int] = {}

    def room_after(spec: ServiceSpec, gpu: Gpu, placed: list[ServiceSpec]) -> int:
        """Room this GPU keeps once `spec` joins the services placed there, all at minimum."""
        asks = 0
        for s in (*placed, spec):
            key = (s.name, gpu.index)
            if key not in estimates:
                draft = make_draft(
                    s, checkpoint(s), [gpu], profile, options.accounting, options.kv_headroom_bytes
                )
                estimates[key] = min_ask(draft, gpu)
            asks += estimates[key]
        sizes = [s.tensor_parallel_size for s in (*placed, spec)]
        return usable_room_bytes(gpu, tensor_parallel_sizes=sizes) - asks

    placement = place(profile, inventory, room_after)
    drafts: list[Draft] = []
    for spec in profile.services:
        ckpt = checkpoint(spec)
        gpu_objs = [by_index[i] for i in placement[spec.name]]
        note = check_gpu_support(spec, ckpt, gpu_objs, catalog, len(inventory.gpus))
        draft = make_draft(
            spec, ckpt, gpu_objs, profile, options.accounting, options.kv_headroom_bytes
        )
        if note:
            draft.notes.append(
                f"{ckpt.quantization.upper()} on compute capability "
                f"{min(g.compute_capability for g in gpu_objs)}: {note}"
            )
        drafts.append(draft)

    sizing_warnings = _size(drafts, by_index, catalog, inventory)
    services = _order(tuple(_finish(d, by_index) for d in drafts))
    warnings = (
        tuple(f"{d.spec.name}: {n}" for d in drafts for n in d.notes)
        + tuple(sizing_warnings)
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
        gateway=profile.gateway,
    )


def _size(
    drafts: list[Draft], gpus: dict[int, Gpu], catalog: Catalog, inventory: GpuInventory
) -> list[str]:
    """Give each service the smallest fraction that holds its weights, overheads, one
    full-context request and the headroom, then share what is left on each GPU by the
    services' `share`. Fixed fractions are refused only where vLLM itself would refuse them."""
    warnings: list[str] = []
    on_gpu: dict[int, list[Draft]] = {}
    for d in drafts:
        for g in d.gpus:
            on_gpu.setdefault(g, []).append(d)
    for d in drafts:
        if d.spec.gpu_memory_utilization is not None:
            d.utilization = d.spec.gpu_memory_utilization
        else:
            d.utilization = ceil3(max(d.minimum() / cuda_total_bytes(gpus[g]) for g in d.gpus))

    for index, group in sorted(on_gpu.items()):
        gpu = gpus[index]
        fixed = [d for d in group if d.fixed]
        free = cuda_free_bytes(gpu)
        if asked_by(gpu, fixed) > free:
            raise PlanError(
                refusal_message(gpu, fixed),
                hint=fix_text(fixes_for(group, gpu, on_gpu, catalog, inventory)),
            )
        room, asked = room_for(gpu, group), asked_by(gpu, group)
        if asked <= room:
            continue
        if len(fixed) == len(group):
            names = " and ".join(f"{d.spec.name} ({d.utilization:g})" for d in group)
            allowance = sum(process_allowance(d.tp) for d in group)
            warnings.append(
                f"GPU {index}: {names} ask {gib(asked)} of the {gib(free)} free; the "
                f"{gib(free - asked)} left is less than the {gib(allowance)} this plan keeps for "
                "CUDA contexts, cuBLAS, NCCL and growth after start: vLLM starts only if those "
                "stay small and no other process takes memory"
            )
            continue
        raise PlanError(
            no_fit_message(gpu, group),
            hint=fix_text(fixes_for(group, gpu, on_gpu, catalog, inventory)),
        )

    slack = {i: room_for(gpus[i], group) - asked_by(gpus[i], group) for i, group in on_gpu.items()}
    shares = {i: sum(d.spec.share for d in group if not d.fixed) for i, group in on_gpu.items()}
    for d in drafts:
        if d.fixed:
            continue
        extra = min(
            max(0, slack[g]) * d.spec.share / shares[g] / cuda_total_bytes(gpus[g]) for g in d.gpus
        )
        d.utilization = floor3(d.utilization + extra)

    for d in drafts:
        if d.fixed:
            warnings.extend(_check_fixed_kv(d, gpus))
    return warnings


def _check_fixed_kv(d: Draft, gpus: dict[int, Gpu]) -> list[str]:
    """vLLM's own check (kv_cache_planning.py): the blocks of one max_model_len request plus
    the null block must fit the KV memory; refuse as vLLM would, warn when it barely fits."""
    budget = budget_of(d, gpus)
    kv = budget - d.need.fixed
    needed = d.need.kv_for(d.min_tokens)
    if kv >= needed + KV_HEADROOM_BYTES:
        return []
    fits = d.need.longest_in(kv)
    if kv >= needed:
        return [
            f"{d.spec.name}: gpu_memory_utilization {d.utilization:g} leaves "
            f"{gib(kv - needed)} of KV cache beyond one {d.min_tokens}-token request; if the "
            "activation or CUDA-graph estimates are low, vLLM refuses to start "
            f"(estimated maximum model length {fits})"
        ]
    raise PlanError(
        f"{d.spec.name}: gpu_memory_utilization {d.utilization:g} gives {gib(budget)} per GPU; "
        f"weights {gib(d.need.weights)} + overheads {gib(d.need.fixed - d.need.weights)} "
        f"leave {gib(max(0, kv))} of KV cache, but one {d.min_tokens}-token request needs "
        f"{gib(needed)} with vLLM's null block (vLLM would refuse to start: estimated maximum "
        f"model length {fits})",
        hint=fix_text(
            [
                f"context: {fits // 1024 * 1024}" if fits >= 1024 else "",
                "raise gpu_memory_utilization or set it to auto",
                "kv_cache_dtype: fp8" if dtype_bytes(d.spec.kv_cache_dtype) == 2 else "",
                smaller_batch(
                    d,
                    [gpus[g] for g in d.gpus],
                    lambda n: budget - n.fixed >= n.kv_for(d.min_tokens),
                ),
            ]
        ),
    )


def _finish(d: Draft, gpus: dict[int, Gpu]) -> ServicePlan:
    budget = budget_of(d, gpus)
    kv = budget - d.need.fixed
    kv_tokens = d.need.tokens_in(kv)
    if d.spec.context is None:
        # "context: max" takes what the KV cache holds beyond the headroom, in 256-token steps.
        usable = kv - d.headroom if kv - d.headroom >= d.need.kv_for(MIN_AUTO_CONTEXT) else kv
        max_len = min(d.context, d.need.longest_in(usable) // 256 * 256)
    else:
        max_len = d.context
    spec = d.spec
    cuda_total = min(cuda_total_bytes(gpus[g]) for g in d.gpus)
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
            sampler_state=d.need.sampler_state,
            cuda_total=cuda_total,
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
    """The plan of the profile an automatic choice picked, and why."""

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
            f"{profile.name}: fits, uses {len(candidate.gpus)} GPU(s) and {gib(weights)} of weights"
        )
    if not fitting:
        raise PlanError("no profile fits these GPUs: " + "; ".join(reasons))
    best = max(fitting, key=lambda item: item[0])[1]
    return AutoChoice(best, (f"chose {best.profile}", *reasons))

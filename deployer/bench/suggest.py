"""`tune`'s suggestions, pure: max_num_seqs from the measured throughput knee, the context from
the KV capacity, the GPU memory fraction from the KV usage measured, each explained in numbers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from deployer.bench.interference import ratio
from deployer.bench.samples import Point
from deployer.bench.textfmt import ms, num, pct
from deployer.errors import BenchError
from deployer.plan import DeploymentPlan, ServicePlan
from deployer.planner import requested_bytes, usable_room_bytes
from deployer.vllm_pin import KV_BLOCK_SIZE

KNEE_FRACTION = 0.9  # the knee: the lowest concurrency within 90 % of the best throughput
SATURATED_ITL_GROWTH = 1.5  # inter-token latency this much above one request: engine saturated
KV_HEADROOM = 1.25  # memory suggestions keep 25 % above the peak KV use measured
MIN_FULL_CONTEXT = 2.0  # full-context requests the KV cache should hold at once
GIB = 1024**3


@dataclass(frozen=True)
class Suggestion:
    setting: str  # the profile key: max_num_seqs, context, gpu_memory_utilization
    current: int | float
    suggested: int | float
    reason: str

    @property
    def changed(self) -> bool:
        return self.current != self.suggested

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def _curve_text(curve: Sequence[Point]) -> str:
    return ", ".join(f"{p.concurrency}: {num(p.throughput_tps)}" for p in curve)


def choose_curve(
    points: Sequence[Point], service: str, prompt_target: int | None = None
) -> list[Point]:
    """The service's points at one prompt length, by concurrency: solo points when there are
    any; the prompt length asked for, else the one with the most concurrency levels (the
    longest on a tie)."""
    # Closed-loop points only: an open-loop (request-rate) point's concurrency is a cap.
    mine = [p for p in points if p.service == service and p.ok > 0 and p.rate is None]
    mode = "solo" if any(p.mode == "solo" for p in mine) else "mixed"
    mine = [p for p in mine if p.mode == mode]
    if not mine:
        raise BenchError(f"the run has no successful measurements of {service}")
    prompts = Counter(p.prompt_target for p in mine)
    if prompt_target is None:
        prompt_target = max(prompts, key=lambda t: (prompts[t], t))
    elif prompt_target not in prompts:
        raise BenchError(
            f"the run measured {service} at prompt {', '.join(map(str, sorted(prompts)))} "
            f"tokens, not {prompt_target}"
        )
    chosen = [p for p in mine if p.prompt_target == prompt_target]
    return sorted(chosen, key=lambda p: p.concurrency)


def _suggest_seqs(service: ServicePlan, curve: Sequence[Point]) -> Suggestion:
    cap = service.max_num_seqs
    per_request = max(1.0, curve[-1].tokens_per_request)
    kv_fit = max(1, int(service.kv_cache_tokens // per_request))
    kv_text = (
        f"the KV cache holds {service.kv_cache_tokens:,} tokens / {per_request:,.0f} tokens per "
        f"request = {kv_fit:,} such requests at once"
    )
    head = f"output tok/s by concurrency at prompt {curve[0].prompt_target}: {_curve_text(curve)}"
    if len(curve) < 2:
        return Suggestion(
            "max_num_seqs",
            cap,
            cap,
            f"{head}; one concurrency level shows no knee: bench 1,2,4,… to find it; {kv_text}",
        )
    best = max(p.throughput_tps for p in curve)
    knee = next(p for p in curve if p.throughput_tps >= KNEE_FRACTION * best)
    top, base = curve[-1], curve[0]
    before = curve[-2]
    last_gain = ratio(top.throughput_tps, before.throughput_tps)
    itl_growth = ratio(knee.itl_ms.p50, base.itl_ms.p50)
    ttft_growth = f"p95 TTFT {ms(base.ttft_ms.p95)} -> {ms(top.ttft_ms.p95)}"
    if knee is top and last_gain is not None and last_gain >= 1 / KNEE_FRACTION:
        suggested = cap
        why = (
            f"{head}: still +{(last_gain - 1) * 100:.0f}% from {before.concurrency} to "
            f"{top.concurrency}, no knee in the measured range; bench higher concurrency "
            f"(--concurrency …,{top.concurrency * 2},{top.concurrency * 4}) before changing "
            f"max_num_seqs {cap}"
        )
    elif knee.concurrency >= cap:
        waiting = f", up to {top.waiting_peak:.0f} waiting" if top.waiting_peak else ""
        limited = (
            f"{head}: throughput levels off at max_num_seqs {cap} "
            f"({num(knee.throughput_tps)} tok/s at {knee.concurrency}, {num(top.throughput_tps)} "
            f"at {top.concurrency}) because requests above {cap} wait ({ttft_growth}{waiting})"
        )
        if itl_growth is not None and itl_growth < SATURATED_ITL_GROWTH:
            wanted = max(2 * cap, top.concurrency)
            suggested = min(kv_fit, wanted)
            capped = f" (not {wanted}: no more fit)" if suggested < wanted else ""
            why = (
                f"{limited}, while ITL p50 with {knee.concurrency} running is "
                f"{ms(knee.itl_ms.p50)} against {ms(base.itl_ms.p50)} for one request "
                f"({itl_growth:.2f}x): the engine is not saturated, so more sequences should "
                f"add throughput; {kv_text} -> {suggested}{capped}, then bench again"
            )
        else:
            suggested = cap
            why = (
                f"{limited}, and ITL p50 is {ms(knee.itl_ms.p50)} at {knee.concurrency} "
                f"against {ms(base.itl_ms.p50)} alone ({itl_growth or 0:.2f}x): the engine "
                f"is near saturation at the cap; keep {cap}"
            )
    else:
        suggested = min(knee.concurrency, kv_fit)
        why = (
            f"{head}: {pct(knee.throughput_tps / best)} of the best ({num(best)} tok/s) is "
            f"reached at {knee.concurrency}; above it throughput grows "
            f"{pct(top.throughput_tps / knee.throughput_tps - 1)} while ITL p50 goes "
            f"{ms(knee.itl_ms.p50)} -> {ms(top.itl_ms.p50)} and {ttft_growth}: "
            f"max_num_seqs {suggested} keeps running requests fast and queues the rest"
        )
    if kv_text not in why:
        why += f" ({kv_text})"
    return Suggestion("max_num_seqs", cap, max(1, suggested), why)


def _prefill_rate(points: Sequence[Point], service: str) -> float | None:
    """Prompt tokens per second from TTFT at concurrency 1 across prompt lengths (the slope),
    or None when TTFT does not grow with the prompt (the stand-in's fixed delay)."""
    alone = sorted(
        (
            p
            for p in points
            if p.service == service and p.concurrency == 1 and p.ok and p.ttft_ms.p50 is not None
        ),
        key=lambda p: p.prompt_target,
    )
    if len(alone) < 2 or alone[0].mode != alone[-1].mode:
        return None
    first, last = alone[0], alone[-1]
    d_tokens = (last.prompt_tokens or last.prompt_target) - (
        first.prompt_tokens or first.prompt_target
    )
    d_seconds = ((last.ttft_ms.p50 or 0) - (first.ttft_ms.p50 or 0)) / 1000
    if d_tokens <= 0 or d_seconds <= 0.005:
        return None
    return d_tokens / d_seconds


def _suggest_context(
    service: ServicePlan, points: Sequence[Point], seqs: int
) -> tuple[Suggestion, int]:
    ctx = service.max_model_len
    kv = service.kv_cache_tokens
    full = kv / ctx
    mine = [p for p in points if p.service == service.name and p.ok]
    longest = max((p.tokens_per_request for p in mine), default=0.0)
    per_request = max(1.0, max((p.tokens_per_request for p in mine), default=1.0))
    text = (
        f"KV cache {kv:,} tokens / context {ctx:,} = {full:.2f} full-context requests at once "
        f"(longest measured request {longest:,.0f} tokens; {int(kv // per_request):,} of those fit "
        f"at once, max_num_seqs {seqs})"
    )
    rate = _prefill_rate(points, service.name)
    if rate:
        text += (
            f"; prefill measured at {rate:,.0f} tok/s, so a full-context prompt takes "
            f"about {ctx / rate:.1f} s to its first token"
        )
    candidate = kv // int(MIN_FULL_CONTEXT) // 256 * 256
    if full < MIN_FULL_CONTEXT and candidate >= max(longest, 4096):
        return (
            Suggestion(
                "context",
                ctx,
                candidate,
                f"{text}: a second long request waits for the first or preempts it; context "
                f"{candidate:,} lets {MIN_FULL_CONTEXT:.0f} run together and still holds the "
                "longest measured request",
            ),
            candidate,
        )
    if full < MIN_FULL_CONTEXT:
        text += (
            f": fewer than {MIN_FULL_CONTEXT:.0f} full-context requests fit, but a context of "
            f"{candidate:,} would not hold the measured requests; keep {ctx:,}"
        )
    else:
        text += f": keep {ctx:,}"
    return Suggestion("context", ctx, ctx, text), ctx


def _gpu_room(plan: DeploymentPlan, service: ServicePlan) -> tuple[int, int]:
    """(bytes on the service's tightest GPU that no service asks for, that GPU's index)."""
    best: tuple[int, int] | None = None
    for index in service.gpus:
        gpu = plan.gpu(index)
        if gpu is None:
            continue
        tenants = plan.services_on(index)
        asked = sum(requested_bytes(gpu, s.gpu_memory_utilization) for s in tenants)
        # The planner's own rule, so that the next `plan` accepts what tune suggests.
        room = (
            usable_room_bytes(gpu, tensor_parallel_sizes=[s.tensor_parallel_size for s in tenants])
            - asked
        )
        if best is None or room < best[0]:
            best = (room, index)
    return best or (0, service.gpus[0])


def _suggest_memory(
    plan: DeploymentPlan,
    service: ServicePlan,
    points: Sequence[Point],
    context: int,
    concurrency: int,
    per_request: float,
) -> Suggestion:
    current = service.gpu_memory_utilization
    mine = [p for p in points if p.service == service.name and p.kv_usage_peak is not None]
    if not mine or not service.kv_cache_tokens:
        return Suggestion(
            "gpu_memory_utilization",
            current,
            current,
            "no KV-cache usage was measured (the engine's /metrics did not answer): keep "
            f"{current}",
        )
    gpus = [g for g in plan.gpus if g.index in service.gpus]
    # vLLM multiplies the fraction by cudaMemGetInfo's total, which the plan records.
    total = service.memory.cuda_total or min((g.total_bytes for g in gpus), default=0)
    if not total:
        return Suggestion(
            "gpu_memory_utilization", current, current, f"the plan lists no GPU; keep {current}"
        )
    peak_point = max(mine, key=lambda p: p.kv_usage_peak or 0.0)
    peak = peak_point.kv_usage_peak or 0.0
    kv_tokens = service.kv_cache_tokens
    per_token = service.memory.kv_cache / kv_tokens
    fixed = service.memory.budget - service.memory.kv_cache
    peak_tokens = peak * kv_tokens
    neighbours = sorted(
        {s.name for s in plan.services if set(s.gpus) & set(service.gpus)} - {service.name}
    )
    where = f"GPU {','.join(map(str, service.gpus))}"
    measured = (
        f"peak KV-cache usage {peak * 100:.1f}% of {kv_tokens:,} tokens = {peak_tokens:,.0f} "
        f"tokens (at {peak_point.label})"
    )
    batch = math.ceil(concurrency * per_request)
    need = max(context, batch, math.ceil(peak_tokens * KV_HEADROOM))
    need = math.ceil(need / KV_BLOCK_SIZE) * KV_BLOCK_SIZE + KV_BLOCK_SIZE  # + vLLM's null block
    fits = math.ceil((fixed + need * per_token) / total * 1000) / 1000
    sizing = (
        f"the KV cache must hold one full-context request ({context:,} tokens, or vLLM will "
        f"not start), {concurrency} concurrent requests of the measured size ({concurrency} x "
        f"{per_request:,.0f} = {batch:,} tokens) and the peak +25% "
        f"({math.ceil(peak_tokens * KV_HEADROOM):,}): {need:,} tokens"
    )
    if peak >= 0.9 or need > kv_tokens:
        cause = (
            f"{measured}: the KV cache limits concurrency"
            if peak >= 0.9
            else f"{measured}; {sizing}, more than the {kv_tokens:,} it holds"
        )
        room, index = _gpu_room(plan, service)
        other = " or a neighbour's fraction" if neighbours else ""
        if room < 256 * 1024**2:
            return Suggestion(
                "gpu_memory_utilization",
                current,
                current,
                f"{cause}, but GPU {index} has no unclaimed memory ({room / GIB:.1f} GiB): "
                f"lower max_num_seqs{other}"
                f", or use kv_cache_dtype fp8; keep {current}",
            )
        most = math.floor((current * total + room) / total * 1000) / 1000
        suggested = min(most, fits) if need > kv_tokens else most
        added = int((suggested - current) * total // per_token)
        return Suggestion(
            "gpu_memory_utilization",
            current,
            suggested,
            f"{cause}; GPU {index} has {room / GIB:.1f} GiB no service asks for: {current} -> "
            f"{suggested} adds about {added:,} KV tokens",
        )
    suggested = fits
    why = (
        f"{measured}; {sizing} = {need * per_token / GIB:.2f} GiB, + {fixed / GIB:.2f} GiB "
        f"weights and overheads = {suggested} of the GPU"
    )
    if not neighbours:
        return Suggestion(
            "gpu_memory_utilization",
            current,
            current,
            f"{why}; {where} is not shared, so the spare KV cache costs nothing and serves "
            f"longer or more requests: keep {current}",
        )
    if need < 0.75 * kv_tokens and current - suggested >= 0.01:
        freed = (current - suggested) * total
        return Suggestion(
            "gpu_memory_utilization",
            current,
            suggested,
            f"{why}, not {current}: frees {freed / GIB:.1f} GiB on {where} for "
            f"{', '.join(neighbours)} (planned with `auto`, they take it). The measured load is "
            "the bench's: keep more if real traffic holds longer contexts",
        )
    return Suggestion(
        "gpu_memory_utilization",
        current,
        current,
        f"{why}; the current {current} leaves little to free: keep it",
    )


def suggest(
    plan: DeploymentPlan,
    service_name: str,
    points: Sequence[Point],
    prompt_target: int | None = None,
) -> list[Suggestion]:
    """max_num_seqs from the measured throughput knee, context from the KV capacity, the GPU
    memory fraction from the KV usage measured; each with its reason in numbers."""
    service = plan.service(service_name)
    curve = choose_curve(points, service.name, prompt_target)
    seqs = _suggest_seqs(service, curve)
    context, new_context = _suggest_context(service, points, int(seqs.suggested))
    per_request = max(p.tokens_per_request for p in curve)
    # Size the KV cache for the concurrency that was measured, not an unmeasured default (256).
    load = min(int(seqs.suggested), curve[-1].concurrency)
    memory = _suggest_memory(plan, service, points, new_context, load, per_request)
    return [seqs, context, memory]

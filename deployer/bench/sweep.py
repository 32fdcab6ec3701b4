"""Which points a bench run measures: option parsing for concurrency, request rates and prompt
lengths, each service's prompt lengths within its context, and the ordered sweep (solo, then
mixed). The sweep's axis is concurrency (closed loop: each worker sends its next request when
the last one ends) or, with request rates, arrivals per second (open loop, as `vllm bench
serve --request-rate`), optionally capped at a maximum concurrency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from deployer.errors import BenchError
from deployer.plan import ServicePlan


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """`1,2,4` -> (1, 2, 4): positive, sorted, without repeats."""
    values: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise BenchError(f"{what}: {part!r} is not a positive integer (expected e.g. 1,2,4)")
        values.add(int(part))
    if not values:
        raise BenchError(f"{what}: no values given")
    return tuple(sorted(values))


# One thread per request in flight: more than this is a different tool's job (see the README).
MAX_CONCURRENCY = 1024


def parse_concurrency(text: str, what: str = "--concurrency") -> tuple[int, ...]:
    """parse_int_list, bounded by MAX_CONCURRENCY."""
    values = parse_int_list(text, what)
    if values[-1] > MAX_CONCURRENCY:
        raise BenchError(
            f"{what}: {values[-1]} is more than {MAX_CONCURRENCY} concurrent requests, the most "
            "this load generator runs (one thread each)"
        )
    return values


def parse_rates(text: str) -> tuple[float, ...]:
    """`0.5,1,4,inf` -> request rates per second, sorted; `inf` sends every request at once."""
    values: set[float] = set()
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        try:
            rate = float(part)
        except ValueError:
            rate = math.nan
        if not rate > 0:
            raise BenchError(
                f"--request-rate: {part!r} is not a rate above 0 (expected e.g. 1,2,4.5 or inf)"
            )
        values.add(rate)
    if not values:
        raise BenchError("--request-rate: no values given")
    return tuple(sorted(values))


def parse_prompt_specs(text: str) -> tuple[str, ...]:
    """`128,1024,25%,max`: token counts, a percentage of each service's context, or `max`."""
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ok = (
            part == "max"
            or (part.isdigit() and int(part) >= 1)
            or (part.endswith("%") and part[:-1].isdigit() and 0 < int(part[:-1]) <= 100)
        )
        if not ok:
            raise BenchError(
                f"--prompt-tokens: {part!r} is not a token count, a percentage of the context "
                "(25%) or max"
            )
        if part not in specs:
            specs.append(part)
    if not specs:
        raise BenchError("--prompt-tokens: no values given")
    return tuple(specs)


def resolve_prompt(spec: str, max_model_len: int, max_tokens: int) -> int:
    """Prompt tokens for one service: `max` leaves room for max_tokens in the context."""
    if spec == "max":
        return max_model_len - max_tokens
    if spec.endswith("%"):
        return max(1, max_model_len * int(spec[:-1]) // 100)
    return int(spec)


@dataclass(frozen=True)
class PlannedPoint:
    """One step of the sweep: these services at once, each with its prompt length."""

    mode: str
    concurrency: int  # open loop: the cap on requests in flight, 0 for none
    loads: tuple[tuple[str, int], ...]  # (service, prompt tokens; 0 with a dataset)
    rate: float | None = None  # arrivals per second; None: closed loop
    dataset: str | None = None

    @property
    def label(self) -> str:
        names = "+".join(name for name, _ in self.loads)
        prompts = self.dataset or "/".join(str(p) for _, p in self.loads)
        rate = "" if self.rate is None else f" rate={self.rate:g}/s"
        return f"{names} {self.mode} c={self.concurrency} prompt={prompts}{rate}"


def plan_sweep(
    services: Sequence[ServicePlan],
    concurrency: Sequence[int],
    prompt_specs: Sequence[str],
    max_tokens: int,
    mixed: bool,
    *,
    rates: Sequence[float] = (),
    max_concurrency: int | None = None,
    dataset: str | None = None,
) -> tuple[tuple[PlannedPoint, ...], tuple[str, ...]]:
    """Each service alone, prompt by prompt, load rising (concurrency, or request rates when
    given); then (mixed) every service at once. Prompts that leave no room for max_tokens in a
    service's context are skipped, and said so; a dataset replaces the prompt lengths."""
    skipped: list[str] = []
    prompts: dict[str, list[int]] = {}
    axis: list[tuple[int, float | None]] = (
        [(max_concurrency or 0, r) for r in rates] if rates else [(c, None) for c in concurrency]
    )
    for service in services:
        if dataset is not None:
            prompts[service.name] = [0]
            continue
        chosen: list[int] = []
        for spec in prompt_specs:
            tokens = resolve_prompt(spec, service.max_model_len, max_tokens)
            if tokens < 1 or tokens + max_tokens > service.max_model_len:
                skipped.append(
                    f"{service.name}: prompt {spec} ({tokens} tokens) + max_tokens {max_tokens} "
                    f"exceeds max_model_len {service.max_model_len}"
                )
            elif tokens not in chosen:
                chosen.append(tokens)
        prompts[service.name] = chosen
    points = [
        PlannedPoint("solo", c, ((service.name, p),), rate, dataset)
        for service in services
        for p in prompts[service.name]
        for c, rate in axis
    ]
    if mixed and len(services) > 1:
        rounds = max(len(p) for p in prompts.values())
        for i in range(rounds):
            loads = tuple(
                (s.name, prompts[s.name][i]) for s in services if i < len(prompts[s.name])
            )
            if len(loads) > 1:
                points += [PlannedPoint("mixed", c, loads, rate, dataset) for c, rate in axis]
    elif mixed:
        skipped.append("mixed load needs two or more services; ran each alone only")
    return tuple(points), tuple(skipped)


def requests_for(
    concurrency: int,
    requests_per_point: int | None,
    rate: float | None = None,
    duration_s: float | None = None,
) -> int:
    """Requests per service per point: as asked, else 4 per worker and at least 16; open loop,
    what the rate sends in the point's duration (at least 16, at most 64 per concurrency cap
    or 4096)."""
    if requests_per_point:
        return requests_per_point
    if rate is None:
        return max(16, 4 * concurrency)
    limit = 64 * concurrency if concurrency else 4096
    if math.isinf(rate) or duration_s is None:
        return min(limit, max(16, 4 * concurrency))
    return min(limit, max(16, math.ceil(rate * duration_s)))


def workers_for(concurrency: int, requests: int) -> int:
    """Threads for one load: never more than it has requests (so `-c 1000 --requests-per-point
    1` starts one), and an open loop without a cap gets one per request up to the bound."""
    return max(1, min(concurrency or MAX_CONCURRENCY, requests, MAX_CONCURRENCY))

"""Which points a bench run measures: option parsing for concurrency and prompt lengths, each
service's prompt lengths within its context, and the ordered sweep (solo, then mixed)."""

from __future__ import annotations

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
    concurrency: int
    loads: tuple[tuple[str, int], ...]  # (service, prompt tokens)

    @property
    def label(self) -> str:
        names = "+".join(name for name, _ in self.loads)
        prompts = "/".join(str(p) for _, p in self.loads)
        return f"{names} {self.mode} c={self.concurrency} prompt={prompts}"


def plan_sweep(
    services: Sequence[ServicePlan],
    concurrency: Sequence[int],
    prompt_specs: Sequence[str],
    max_tokens: int,
    mixed: bool,
) -> tuple[tuple[PlannedPoint, ...], tuple[str, ...]]:
    """Each service alone, prompt by prompt, concurrency rising; then (mixed) every service at
    once. Prompts that leave no room for max_tokens in a service's context are skipped, and
    said so."""
    skipped: list[str] = []
    prompts: dict[str, list[int]] = {}
    for service in services:
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
        PlannedPoint("solo", c, ((service.name, p),))
        for service in services
        for p in prompts[service.name]
        for c in concurrency
    ]
    if mixed and len(services) > 1:
        rounds = max(len(p) for p in prompts.values())
        for i in range(rounds):
            loads = tuple(
                (s.name, prompts[s.name][i]) for s in services if i < len(prompts[s.name])
            )
            if len(loads) > 1:
                points += [PlannedPoint("mixed", c, loads) for c in concurrency]
    elif mixed:
        skipped.append("mixed load needs two or more services; ran each alone only")
    return tuple(points), tuple(skipped)


def requests_for(concurrency: int, requests_per_point: int | None) -> int:
    """Requests per service per point: as asked, else 4 per worker and at least 16."""
    return requests_per_point or max(16, 4 * concurrency)

"""Mixed load, pure: how tiers sharing a GPU slow each other, point by point against the same
point measured alone, and where it starts to hurt, in numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deployer.bench.samples import Point
from deployer.bench.textfmt import ms, num, pct

HURT_TPS_RATIO = 0.9  # mixed throughput below 90 % of solo: the shared GPU hurts
HURT_ITL_RATIO = 1.2


def shared_gpu_neighbours(plan: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Service -> the other services on any of its GPUs (from a plan dict)."""
    services = plan.get("services", [])
    users: dict[int, list[str]] = {}
    for s in services:
        for g in s.get("gpus", []):
            users.setdefault(int(g), []).append(str(s["name"]))
    return {
        str(s["name"]): tuple(
            sorted({n for g in s.get("gpus", []) for n in users[int(g)] if n != s["name"]})
        )
        for s in services
    }


@dataclass(frozen=True)
class Interference:
    """One service at one point under mixed load, against the same point alone."""

    service: str
    concurrency: int
    prompt_target: int
    shares_gpu_with: tuple[str, ...]
    solo_tps: float
    mixed_tps: float
    tps_ratio: float | None
    solo_ttft_p95_ms: float | None
    mixed_ttft_p95_ms: float | None
    ttft_ratio: float | None
    solo_itl_p50_ms: float | None
    mixed_itl_p50_ms: float | None
    itl_ratio: float | None

    @property
    def hurts(self) -> bool:
        return (self.tps_ratio is not None and self.tps_ratio < HURT_TPS_RATIO) or (
            self.itl_ratio is not None and self.itl_ratio > HURT_ITL_RATIO
        )


def ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old <= 0:
        return None
    return round(new / old, 3)


def interference(
    points: Sequence[Point], shared: Mapping[str, tuple[str, ...]]
) -> list[Interference]:
    solo = {
        (p.service, p.concurrency, p.prompt_target, p.workload): p
        for p in points
        if p.mode == "solo"
    }
    rows = []
    for p in points:
        alone = solo.get((p.service, p.concurrency, p.prompt_target, p.workload))
        if p.mode != "mixed" or alone is None:
            continue
        rows.append(
            Interference(
                service=p.service,
                concurrency=p.concurrency,
                prompt_target=p.prompt_target,
                shares_gpu_with=shared.get(p.service, ()),
                solo_tps=alone.throughput_tps,
                mixed_tps=p.throughput_tps,
                tps_ratio=ratio(p.throughput_tps, alone.throughput_tps),
                solo_ttft_p95_ms=alone.ttft_ms.p95,
                mixed_ttft_p95_ms=p.ttft_ms.p95,
                ttft_ratio=ratio(p.ttft_ms.p95, alone.ttft_ms.p95),
                solo_itl_p50_ms=alone.itl_ms.p50,
                mixed_itl_p50_ms=p.itl_ms.p50,
                itl_ratio=ratio(p.itl_ms.p50, alone.itl_ms.p50),
            )
        )
    return rows


def where_it_hurts(rows: Sequence[Interference]) -> list[str]:
    """Per service: the lowest concurrency where mixed load costs it >10 % throughput or >20 %
    inter-token latency, in numbers; or that it never did in the measured range."""
    lines = []
    for service in dict.fromkeys(r.service for r in rows):
        mine = sorted((r for r in rows if r.service == service), key=lambda r: r.concurrency)
        neighbours = mine[0].shares_gpu_with
        gpu = f" (shares a GPU with {', '.join(neighbours)})" if neighbours else " (own GPUs)"
        first = next((r for r in mine if r.hurts), None)
        if first is None:
            top = mine[-1]
            lines.append(
                f"{service}{gpu}: mixed load stays within 10% of solo up to concurrency "
                f"{top.concurrency} ({num(top.solo_tps)} -> {num(top.mixed_tps)} tok/s)"
            )
            continue
        lines.append(
            f"{service}{gpu}: from concurrency {first.concurrency} (prompt "
            f"{first.prompt_target}) mixed load gives {pct(first.tps_ratio)} of solo "
            f"throughput ({num(first.solo_tps)} -> {num(first.mixed_tps)} tok/s), ITL p50 "
            f"{ms(first.solo_itl_p50_ms)} -> {ms(first.mixed_itl_p50_ms)}, TTFT p95 "
            f"{ms(first.solo_ttft_p95_ms)} -> {ms(first.mixed_ttft_p95_ms)}"
        )
    return lines

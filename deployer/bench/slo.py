"""Goodput under service-level objectives, pure: `--slo ttft=500ms,tpot=50ms,e2el=10s` parsed,
and per curve (a service's points at one prompt length and mode, by concurrency or by request
rate) the highest load at which the share of requests meeting the SLO stays at the target.

The definition is DistServe's, as `vllm bench serve --goodput` uses it: a request is good when
it succeeded and its TTFT, TPOT and E2EL are each within their objective.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deployer.bench.samples import Point, Slo
from deployer.errors import BenchError

_PART = re.compile(r"^(ttft|tpot|e2el)\s*[=:]\s*([0-9]*\.?[0-9]+)\s*(ms|s)?$")
DEFAULT_TARGET = 0.9  # the share of requests that must meet the SLO


def parse_slo(text: str) -> Slo:
    """`ttft=500ms,tpot=50ms,e2el=10s` (a bare number is ms; vLLM's `ttft:500` form too)."""
    values: dict[str, float] = {}
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        match = _PART.match(part)
        if match is None:
            raise BenchError(
                f"--slo: {part!r} is not NAME=TIME with NAME ttft, tpot or e2el "
                "(expected e.g. ttft=500ms,tpot=50ms)"
            )
        name, number, unit = match.groups()
        value = float(number) * (1000 if unit == "s" else 1)
        if value <= 0:
            raise BenchError(f"--slo: {name} must be above 0 ms")
        values[f"{name}_ms"] = value
    if not values:
        raise BenchError("--slo: no objectives given (expected e.g. ttft=500ms,tpot=50ms)")
    return Slo(**values)


@dataclass(frozen=True)
class SloLimit:
    """The highest measured load of one curve that kept the SLO share at the target."""

    service: str
    mode: str
    prompt: str  # the prompt length, or the dataset
    axis: str  # "concurrency" or "rate"
    best: float | None  # None: even the lightest load missed the target
    slo_met: float | None  # at `best`
    lightest: float  # the lightest load measured (what missed, when best is None)
    lightest_met: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "mode": self.mode,
            "prompt": self.prompt,
            "axis": self.axis,
            "best": self.best,
            "slo_met": self.slo_met,
        }

    def text(self, target: float) -> str:
        unit = "requests/s" if self.axis == "rate" else "concurrent requests"
        head = f"{self.service} {self.mode} prompt={self.prompt}"
        if self.best is None:
            return (
                f"{head}: misses the SLO already at {self.lightest:g} {unit} "
                f"({_share(self.lightest_met)} of requests met it, target {_share(target)})"
            )
        return (
            f"{head}: at most {self.best:g} {unit} keep {_share(self.slo_met)} of requests "
            f"within the SLO (target {_share(target)})"
        )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def slo_limits(points: Sequence[Point], target: float = DEFAULT_TARGET) -> list[SloLimit]:
    """Per curve, the highest load whose SLO share is at least `target`, the loads below it
    included (a curve that dips and recovers stops at the dip, as a sweep would)."""
    curves: dict[tuple[str, str, str, str], list[tuple[float, float | None]]] = {}
    for p in points:
        if p.slo_met is None:
            continue
        axis = "concurrency" if p.rate is None else "rate"
        load = float(p.concurrency) if p.rate is None else p.rate
        prompt = p.dataset or str(p.prompt_target)
        curves.setdefault((p.service, p.mode, prompt, axis), []).append((load, p.slo_met))
    limits = []
    for (service, mode, prompt, axis), curve in curves.items():
        curve.sort()
        best: tuple[float, float | None] | None = None
        for load, met in curve:
            if met is None or met < target:
                break
            best = (load, met)
        limits.append(
            SloLimit(
                service=service,
                mode=mode,
                prompt=prompt,
                axis=axis,
                best=None if best is None else best[0],
                slo_met=None if best is None else best[1],
                lightest=curve[0][0],
                lightest_met=curve[0][1],
            )
        )
    return limits

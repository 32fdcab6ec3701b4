"""Planned against actual: the memory figures vLLM prints at start-up, read from its log and set
beside the plan's prediction. Pure: text and plans in, data out (`up`/`status` do the I/O).

vLLM 0.33 prints, per worker (source, see the notes on its memory accounting):
  "Model loading took 5.68 GiB memory and 3.2 seconds"   (v1/worker/gpu/model_runner.py)
  "Available KV cache memory: 9.02 GiB"                  (v1/worker/gpu_worker.py)
  "GPU KV cache size: 64,624 tokens, Maximum concurrency for 32,768 tokens per request: 1.97x"
                                                         (v1/core/kv_cache_utils.py)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from deployer.gpus import GIB
from deployer.plan import ServicePlan

WARN_PERCENT = 5.0  # past this, the plan and vLLM disagree enough to say so
STATE_KEY = "startup_figures"  # where `up` records them in the deployment's state.json

# Patterns, compiled (and cached by `re`) on first use: `plan` prints these lines, never reads them.
_LOADING = r"Model loading took ([0-9]+(?:\.[0-9]+)?) ?GiB"
_KV_MEMORY = r"Available KV cache memory: ([0-9]+(?:\.[0-9]+)?) ?GiB"
_KV_TOKENS = r"KV cache size: ([0-9][0-9,]*) tokens"
_CONCURRENCY = r"Maximum concurrency for ([0-9][0-9,]*) tokens per request: ([0-9]+(?:\.[0-9]+)?)x"


@dataclass(frozen=True)
class StartupFigures:
    """What one vLLM instance printed; None for a line its log does not (yet) have."""

    model_loading_gib: float | None = None
    available_kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None

    @property
    def complete(self) -> bool:
        return None not in (
            self.model_loading_gib,
            self.available_kv_cache_gib,
            self.kv_cache_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartupFigures:
        def number(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            return float(value)

        tokens = number("kv_cache_tokens")
        return cls(
            model_loading_gib=number("model_loading_gib"),
            available_kv_cache_gib=number("available_kv_cache_gib"),
            kv_cache_tokens=None if tokens is None else int(tokens),
            max_concurrency=number("max_concurrency"),
        )


def parse_startup_log(text: str) -> StartupFigures:
    """The figures from a container's log. With tensor parallelism every worker prints its own
    loading and KV memory lines: the largest load and the smallest KV memory count (vLLM cuts
    every rank's KV cache to the smallest). The last start in the log wins for the size line."""
    loads = [float(m.group(1)) for m in re.finditer(_LOADING, text)]
    kv_memory = [float(m.group(1)) for m in re.finditer(_KV_MEMORY, text)]
    tokens = [int(m.group(1).replace(",", "")) for m in re.finditer(_KV_TOKENS, text)]
    concurrency = [float(m.group(2)) for m in re.finditer(_CONCURRENCY, text)]
    return StartupFigures(
        model_loading_gib=max(loads) if loads else None,
        available_kv_cache_gib=min(kv_memory) if kv_memory else None,
        kv_cache_tokens=tokens[-1] if tokens else None,
        max_concurrency=concurrency[-1] if concurrency else None,
    )


def predicted(service: ServicePlan) -> StartupFigures:
    """What the plan says vLLM will print for this service (per GPU, GiB rounded as vLLM)."""
    return StartupFigures(
        model_loading_gib=round(service.memory.weights / GIB, 2),
        available_kv_cache_gib=round(service.memory.kv_cache / GIB, 2),
        kv_cache_tokens=service.kv_cache_tokens,
        max_concurrency=service.max_concurrency,
    )


def expected_lines(service: ServicePlan) -> tuple[str, ...]:
    """The start-up lines vLLM should print for this service, with the plan's values."""
    figures = predicted(service)
    return (
        f"Model loading took {figures.model_loading_gib:.2f} GiB memory",
        f"Available KV cache memory: {figures.available_kv_cache_gib:.2f} GiB",
        f"GPU KV cache size: {service.kv_cache_tokens:,} tokens, Maximum concurrency for "
        f"{service.max_model_len:,} tokens per request: {service.max_concurrency:.2f}x",
    )


@dataclass(frozen=True)
class FigureComparison:
    """One figure the plan predicted beside what vLLM printed."""

    figure: str  # "model_loading_gib", "available_kv_cache_gib" or "kv_cache_tokens"
    predicted: float
    actual: float | None

    @property
    def diff_percent(self) -> float | None:
        """(actual - predicted) / predicted x 100; None when vLLM has not printed it."""
        if self.actual is None or not self.predicted:
            return None
        return round((self.actual - self.predicted) / self.predicted * 100, 1)

    @property
    def warn(self) -> bool:
        diff = self.diff_percent
        return diff is not None and abs(diff) > WARN_PERCENT


@dataclass(frozen=True)
class StartupComparison:
    """A service's predicted figures beside the ones its vLLM printed."""

    service: str
    figures: tuple[FigureComparison, ...]

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(
            f"{self.service}: {f.figure} planned {_show(f.figure, f.predicted)}, vLLM printed "
            f"{_show(f.figure, f.actual)} ({f.diff_percent:+.1f}%, more than "
            f"{WARN_PERCENT:g}%)"
            for f in self.figures
            if f.warn
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "figures": [
                {
                    "figure": f.figure,
                    "predicted": f.predicted,
                    "actual": f.actual,
                    "diff_percent": f.diff_percent,
                    "warn": f.warn,
                }
                for f in self.figures
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartupComparison:
        return cls(
            service=str(data["service"]),
            figures=tuple(
                FigureComparison(
                    figure=str(f["figure"]),
                    predicted=float(f["predicted"]),
                    actual=None if f.get("actual") is None else float(f["actual"]),
                )
                for f in data["figures"]
            ),
        )


_FIGURES = ("model_loading_gib", "available_kv_cache_gib", "kv_cache_tokens")


def compare(service: ServicePlan, figures: StartupFigures) -> StartupComparison:
    """The plan's three figures against what vLLM printed, each with its difference."""
    planned = predicted(service)
    return StartupComparison(
        service=service.name,
        figures=tuple(
            FigureComparison(
                figure=name,
                predicted=float(getattr(planned, name)),
                actual=None if getattr(figures, name) is None else float(getattr(figures, name)),
            )
            for name in _FIGURES
        ),
    )


def _show(figure: str, value: float | None) -> str:
    if value is None:
        return "nothing"
    return f"{value:,.0f} tokens" if figure == "kv_cache_tokens" else f"{value:.2f} GiB"


def recorded_figures(state: dict[str, Any]) -> dict[str, StartupFigures]:
    """Service name -> the figures `up` recorded under STATE_KEY in the deployment's state."""
    raw = state.get(STATE_KEY)
    if not isinstance(raw, dict):
        return {}
    return {
        str(name): StartupFigures.from_dict(figures)
        for name, figures in raw.items()
        if isinstance(figures, dict)
    }


def check_plan(
    services: tuple[ServicePlan, ...], recorded: dict[str, StartupFigures]
) -> tuple[StartupComparison, ...]:
    """One comparison per planned service that has recorded figures."""
    return tuple(compare(s, recorded[s.name]) for s in services if s.name in recorded)

"""One PNG chart per tier; the only module that imports matplotlib (and only when it draws)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from deployer.bench.run import BenchRun
from deployer.bench.samples import Point


def render_charts(run: BenchRun, folder: Path) -> list[str]:
    """One PNG per tier: throughput, TTFT p95 and ITL p50 against concurrency, a line per
    prompt length (dashed: mixed load). Raises ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = []
    for service in run.services:
        # Concurrency on the x axis: open-loop (request-rate) points have none of their own.
        mine = [p for p in run.points if p.service == service and p.rate is None]
        if not mine:
            continue
        fig = Figure(figsize=(13, 3.8), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3)
        panels: tuple[tuple[str, Callable[[Point], float | None]], ...] = (
            ("output tokens/s (all requests)", lambda p: p.throughput_tps),
            ("TTFT p95 (ms)", lambda p: p.ttft_ms.p95),
            ("inter-token latency p50 (ms)", lambda p: p.itl_ms.p50),
        )
        levels = sorted({p.concurrency for p in mine})
        prompts = sorted({p.prompt_target for p in mine})
        for ax, (title, value) in zip(axes, panels, strict=True):
            top = 0.0
            for mode in ("solo", "mixed"):
                for prompt in prompts:
                    line = sorted(
                        (p for p in mine if p.mode == mode and p.prompt_target == prompt),
                        key=lambda p: p.concurrency,
                    )
                    xy = [(p.concurrency, y) for p in line if (y := value(p)) is not None]
                    if not xy:
                        continue
                    top = max(top, *(y for _, y in xy))
                    ax.plot(
                        [x for x, _ in xy],
                        [y for _, y in xy],
                        marker="o",
                        color=f"C{prompts.index(prompt) % 10}",
                        linestyle="-" if mode == "solo" else "--",
                        label=f"{mode}, prompt {prompt}",
                    )
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("concurrent requests")
            if len(levels) > 1:
                ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(c) for c in levels])
            ax.set_ylim(0, top * 1.12 or 1)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        model = next(
            (s["served_model_name"] for s in run.plan.get("services", []) if s["name"] == service),
            "",
        )
        fig.suptitle(f"{service} ({model}), run {run.run_id}, engine {run.engine}", fontsize=11)
        fig.savefig(folder / f"{service}.png")
        names.append(f"{service}.png")
    return names

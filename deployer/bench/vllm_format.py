"""A point in `vllm bench serve`'s result JSON (vllm/benchmarks/serve.py, `--save-result
--save-detailed`), so tools that read vLLM's results (its sweep plots, vllm-bench --compare,
spreadsheets built for it) read ours. One document per point; times in the per-request lists
are seconds, the summaries milliseconds, percentiles linear as numpy's, std the population's,
as vLLM computes them. `backend` is `openai-chat` (the bench streams chat completions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from deployer.bench.run import BenchRun
from deployer.bench.samples import Point, PointRecord, RequestSample, percentile

PERCENTILES = (50.0, 90.0, 95.0, 99.0)
BACKEND = "openai-chat"


def _stats(name: str, values: Sequence[float]) -> dict[str, float]:
    """mean/median/std/pNN of one metric in ms; vLLM writes 0 for an empty list."""
    data = list(values) or [0.0]
    mean = sum(data) / len(data)
    out = {
        f"mean_{name}_ms": mean,
        f"median_{name}_ms": percentile(data, 50) or 0.0,
        f"std_{name}_ms": math.sqrt(sum((v - mean) ** 2 for v in data) / len(data)),
    }
    for p in PERCENTILES:
        out[f"p{p:g}_{name}_ms"] = percentile(data, p) or 0.0
    return out


def _peaks(samples: Sequence[RequestSample]) -> tuple[float, int]:
    """vLLM's max_output_tokens_per_s (tokens in the busiest one-second bucket) and
    max_concurrent_requests (the most requests in flight at once)."""
    good = [s for s in samples if s.ok and s.ttft_ms is not None]
    if not good:
        return 0.0, 0
    begin = min(s.start_s for s in good)
    buckets: dict[int, int] = {}
    events: list[tuple[float, int]] = []
    for s in good:
        t = s.start_s + (s.ttft_ms or 0.0) / 1000
        times = [t]
        for gap in s.itl_ms:
            t += gap / 1000
            times.append(t)
        for t in times:
            buckets[int(t - begin)] = buckets.get(int(t - begin), 0) + 1
        events += [(s.start_s, 1), (s.start_s + s.e2e_ms / 1000, -1)]
    running = peak = 0
    for _, delta in sorted(events):
        running += delta
        peak = max(peak, running)
    return float(max(buckets.values())), peak


def point_result(run: BenchRun, point: Point, samples: Sequence[RequestSample]) -> dict[str, Any]:
    """The point as `vllm bench serve` would have saved it with --save-result --save-detailed."""
    model = next(
        (
            str(s.get("served_model_name"))
            for s in run.plan.get("services", [])
            if s.get("name") == point.service
        ),
        point.service,
    )
    good = [s for s in samples if s.ok]
    duration = point.duration_s or 0.0
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    total_input = sum(s.prompt_tokens or 0 for s in good)
    total_output = sum(s.completion_tokens for s in good)
    peak_tps, peak_concurrency = _peaks(samples)
    rate: float | str = "inf" if point.rate is None or math.isinf(point.rate) else point.rate
    result: dict[str, Any] = {
        "date": run.started_at.replace("-", "").replace(":", "")[:15].replace("T", "-"),
        "endpoint_type": BACKEND,
        "backend": BACKEND,
        "label": f"qwen-deploy {point.label}",
        "model_id": model,
        "tokenizer_id": None,  # the server's usage counts tokens; no local tokenizer
        "num_prompts": point.requests,
        "request_rate": rate,
        "burstiness": point.burstiness if point.burstiness is not None else 1.0,
        "max_concurrency": point.concurrency or None,
        "duration": duration,
        "completed": point.ok,
        "failed": point.errors,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": per_s(point.ok),
        "request_goodput": point.goodput_rps,
        "output_throughput": per_s(total_output),
        "total_token_throughput": per_s(total_input + total_output),
        "input_lens": [s.prompt_tokens or 0 for s in samples],
        "output_lens": [s.completion_tokens if s.ok else 0 for s in samples],
        "ttfts": [(s.ttft_ms or 0.0) / 1000 for s in samples],
        "itls": [[g / 1000 for g in s.itl_ms] for s in samples],
        "latencies": [s.e2e_ms / 1000 for s in samples],
        "start_times": [s.start_s for s in samples],
        "generated_texts": ["" for _ in samples],  # not kept: only timings are recorded
        "errors": [s.error or "" for s in samples],
        "max_output_tokens_per_s": peak_tps,
        "max_concurrent_requests": peak_concurrency,
    }
    result |= _stats("ttft", [s.ttft_ms for s in good if s.ttft_ms is not None])
    result |= _stats("tpot", [v for v in (s.tpot_ms for s in good) if v is not None])
    result |= _stats("itl", [g for s in good for g in s.itl_ms])
    result |= _stats("e2el", [s.e2e_ms for s in good])
    return result


def file_name(point: Point) -> str:
    """`micro-solo-c4-p128.json`, `mini-mixed-c0-psharegpt-r2.json`: one per point."""
    prompt = point.dataset or str(point.prompt_target)
    rate = "" if point.rate is None else f"-r{point.rate:g}"
    return f"{point.service}-{point.mode}-c{point.concurrency}-p{prompt}{rate}.json"


def results(run: BenchRun, records: Sequence[PointRecord]) -> dict[str, dict[str, Any]]:
    """File name -> document, for every point of the run."""
    return {file_name(r.point): point_result(run, r.point, r.samples) for r in records}

"""What the load generator measures, pure: one sample per request, one engine scrape, and the
aggregate of a (service, mode, concurrency, prompt length) point with its percentiles.

The metrics are `vllm bench serve`'s (vllm/benchmarks/serve.py, `calculate_metrics`):
- TTFT: request sent -> first chunk that carries text (answer or reasoning);
- TPOT: (E2EL - TTFT) / (output tokens - 1), excluding the first token; requests with one
  token have none (vLLM counts them as 0 for goodput, and so do we);
- ITL: each gap between consecutive text chunks (one token per chunk on vLLM and the stand-in);
- E2EL: request sent -> the stream's end; output tokens from `usage.completion_tokens`.
Ours differ in three ways: percentiles are p50/p95/p99 plus the max (vLLM: mean, median, std
and the percentiles asked for); throughput is over the point's own window (first request sent
to last one finished); and TTFT counts a reasoning chunk as the first token (GuideLLM's TTFOT /
AIPerf's TTFO would wait for the answer).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between ranks, as numpy's default."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class Summary:
    """Mean, p50, p95, p99 and max of one measure over a point's requests."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls()
        return cls(
            count=len(values),
            mean=_round(sum(values) / len(values)),
            p50=_round(percentile(values, 50)),
            p95=_round(percentile(values, 95)),
            p99=_round(percentile(values, 99)),
            max=_round(max(values)),
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Summary:
        return cls(
            count=int(raw.get("count") or 0),
            mean=raw.get("mean"),
            p50=raw.get("p50"),
            p95=raw.get("p95"),
            p99=raw.get("p99"),
            max=raw.get("max"),
        )


@dataclass(frozen=True)
class Slo:
    """Service-level objectives in ms (`--slo ttft=500ms,tpot=50ms,e2el=10s`); None: not set.
    A request meets them when it succeeded and none is exceeded (DistServe's goodput)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Slo | None:
        if not raw:
            return None
        return cls(**{k: float(v) for k, v in raw.items() if k in cls.__dataclass_fields__})

    def __str__(self) -> str:
        return ", ".join(f"{k.removesuffix('_ms')} <= {v:g} ms" for k, v in self.to_dict().items())


@dataclass(frozen=True)
class RequestSample:
    """One streamed request as the client saw it; times in ms from before the request."""

    index: int
    ok: bool
    error: str | None
    start_s: float  # when it was sent, seconds after the point started
    ttft_ms: float | None
    e2e_ms: float
    prompt_tokens: int | None  # usage.prompt_tokens, else the synthetic prompt's count
    completion_tokens: int
    itl_ms: tuple[float, ...] = ()  # gaps between chunks that carried text

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token excluding the first, as `vllm bench serve` computes it."""
        if not self.ok or self.ttft_ms is None or self.completion_tokens < 2:
            return None
        return (self.e2e_ms - self.ttft_ms) / (self.completion_tokens - 1)

    def meets(self, slo: Slo) -> bool:
        """Whether the request succeeded within every objective (vLLM's goodput rule: TPOT of a
        one-token answer counts as 0)."""
        if not self.ok:
            return False
        checks = (
            (slo.ttft_ms, self.ttft_ms if self.ttft_ms is not None else math.inf),
            (slo.tpot_ms, self.tpot_ms or 0.0),
            (slo.e2el_ms, self.e2e_ms),
        )
        return all(limit is None or value <= limit for limit, value in checks)

    @property
    def decode_tps(self) -> float | None:
        """Output tokens per second after the first token (the per-request decode speed)."""
        decode_s = sum(self.itl_ms) / 1000
        if not self.ok or self.completion_tokens < 2 or decode_s <= 0:
            return None
        return (self.completion_tokens - 1) / decode_s


@dataclass(frozen=True)
class EngineSample:
    """One scrape of the engine's /metrics during a point."""

    kv_usage: float | None  # vllm:kv_cache_usage_perc, a fraction 0..1
    running: float | None
    waiting: float | None


@dataclass(frozen=True)
class Point:
    """The aggregate of one (service, mode, concurrency, prompt length) measurement."""

    service: str
    mode: str  # "solo": this service alone; "mixed": every benched service at once
    concurrency: int
    prompt_target: int  # prompt tokens asked for (exact on the stand-in)
    max_tokens: int
    requests: int
    ok: int
    errors: int
    error_kinds: tuple[tuple[str, int], ...]
    duration_s: float
    stopped_by: str  # "requests" or "duration"
    output_tokens: int
    throughput_tps: float  # output tokens per second over the point, all requests together
    request_rate: float  # completed requests per second
    prompt_tokens: float | None  # mean measured (usage.prompt_tokens)
    completion_tokens: float | None  # mean measured
    ttft_ms: Summary
    itl_ms: Summary
    e2e_ms: Summary
    decode_tps: Summary  # per-request output tokens per second after the first token
    kv_usage_peak: float | None = None
    running_peak: float | None = None
    waiting_peak: float | None = None
    tpot_ms: Summary = Summary()  # vLLM's TPOT, excluding the first token
    rate: float | None = None  # arrivals per second (open loop); None: closed loop
    burstiness: float | None = None  # of the arrivals: 1 Poisson, < 1 burstier
    dataset: str | None = None  # where prompts came from when not synthetic ("sharegpt")
    slo_met: float | None = None  # fraction of the requests sent that met the SLO
    goodput_rps: float | None = None  # requests per second that met it (vLLM's goodput)

    @property
    def workload(self) -> str:
        """What besides concurrency and prompt length tells points apart ("" for the default
        synthetic closed loop)."""
        parts = [self.dataset or ""]
        if self.rate is not None:
            parts.append(f"rate={self.rate:g}/s")
            if self.burstiness not in (None, 1.0):
                parts.append(f"burstiness={self.burstiness:g}")
        return " ".join(p for p in parts if p)

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        return (self.service, self.mode, self.concurrency, self.prompt_target, self.workload)

    @property
    def label(self) -> str:
        prompt = self.dataset or str(self.prompt_target)
        rate = "" if self.rate is None else f" rate={self.rate:g}/s"
        return f"{self.service} {self.mode} c={self.concurrency} prompt={prompt}{rate}"

    @property
    def tokens_per_request(self) -> float:
        """Prompt plus output tokens of one request, as measured (targets when unmeasured)."""
        prompt = self.prompt_tokens if self.prompt_tokens is not None else self.prompt_target
        output = self.completion_tokens if self.completion_tokens is not None else self.max_tokens
        return prompt + output

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_kinds"] = dict(self.error_kinds)
        return data

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Point:
        data = dict(raw)
        data["error_kinds"] = tuple((str(k), int(v)) for k, v in raw["error_kinds"].items())
        for name in ("ttft_ms", "itl_ms", "e2e_ms", "decode_tps"):
            data[name] = Summary.from_dict(raw[name])
        data["tpot_ms"] = Summary.from_dict(raw.get("tpot_ms") or {})  # runs before it: none
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def aggregate(
    service: str,
    mode: str,
    concurrency: int,
    prompt_target: int,
    max_tokens: int,
    samples: Sequence[RequestSample],
    duration_s: float,
    engine: Sequence[EngineSample] = (),
    stopped_by: str = "requests",
    *,
    slo: Slo | None = None,
    rate: float | None = None,
    burstiness: float | None = None,
    dataset: str | None = None,
) -> Point:
    """One point from its requests (errors are counted, not averaged in) and engine scrapes;
    with an SLO, the share of requests that met it."""
    good = [s for s in samples if s.ok]
    kinds = Counter(s.error or "error" for s in samples if not s.ok)
    output = sum(s.completion_tokens for s in good)
    prompts = [s.prompt_tokens for s in good if s.prompt_tokens is not None]
    decode = [v for v in (s.decode_tps for s in good) if v is not None]
    met = sum(1 for s in good if slo is not None and s.meets(slo))

    def peak(values: Iterable[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    return Point(
        service=service,
        mode=mode,
        concurrency=concurrency,
        prompt_target=prompt_target,
        max_tokens=max_tokens,
        requests=len(samples),
        ok=len(good),
        errors=len(samples) - len(good),
        error_kinds=tuple(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        duration_s=round(duration_s, 3),
        stopped_by=stopped_by,
        output_tokens=output,
        throughput_tps=round(output / duration_s, 2) if duration_s > 0 else 0.0,
        request_rate=round(len(good) / duration_s, 3) if duration_s > 0 else 0.0,
        prompt_tokens=_round(sum(prompts) / len(prompts), 1) if prompts else None,
        completion_tokens=_round(output / len(good), 1) if good else None,
        ttft_ms=Summary.of([s.ttft_ms for s in good if s.ttft_ms is not None]),
        itl_ms=Summary.of([gap for s in good for gap in s.itl_ms]),
        e2e_ms=Summary.of([s.e2e_ms for s in good]),
        decode_tps=Summary.of(decode),
        kv_usage_peak=_round(peak(e.kv_usage for e in engine), 4),
        running_peak=peak(e.running for e in engine),
        waiting_peak=peak(e.waiting for e in engine),
        tpot_ms=Summary.of([v for v in (s.tpot_ms for s in good) if v is not None]),
        rate=rate,
        burstiness=burstiness if rate is not None else None,
        dataset=dataset,
        slo_met=_round(met / len(samples), 4) if slo is not None and samples else None,
        goodput_rps=round(met / duration_s, 3) if slo is not None and duration_s > 0 else None,
    )


@dataclass(frozen=True)
class PointRecord:
    """A measured point with its requests (the requests go to requests.csv)."""

    point: Point
    samples: tuple[RequestSample, ...]


def iter_samples(records: Sequence[PointRecord]) -> Iterator[tuple[Point, RequestSample]]:
    for record in records:
        for sample in record.samples:
            yield record.point, sample

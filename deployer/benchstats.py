"""The numbers of a bench run, pure: percentiles, one aggregate per (service, mode, concurrency,
prompt length) point, the sweep to run, how tiers sharing a GPU slow each other, the comparison
of two runs and `tune`'s suggestions, each explained in numbers. No I/O, no clock, no network.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from deployer.errors import DeployError, StateError
from deployer.planner import MAX_UTILIZATION, DeploymentPlan, ServicePlan
from deployer.vllm_pin import KV_BLOCK_SIZE

BENCH_SCHEMA_VERSION = 1
MODES = ("solo", "mixed")
DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32)
DEFAULT_PROMPTS = ("128", "1024", "25%")
KNEE_FRACTION = 0.9  # the knee: the lowest concurrency within 90 % of the best throughput
SATURATED_ITL_GROWTH = 1.5  # inter-token latency this much above one request: engine saturated
HURT_TPS_RATIO = 0.9  # mixed throughput below 90 % of solo: the shared GPU hurts
HURT_ITL_RATIO = 1.2
KV_HEADROOM = 1.25  # memory suggestions keep 25 % above the peak KV use measured
MIN_FULL_CONTEXT = 2.0  # full-context requests the KV cache should hold at once
GIB = 1024**3


class BenchError(DeployError):
    """Bench options or saved runs that cannot be used (exits like a state problem)."""

    exit_code = StateError.exit_code


# --- percentiles and summaries --------------------------------------------------------------


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


# --- what the load generator measures -------------------------------------------------------


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

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.service, self.mode, self.concurrency, self.prompt_target)

    @property
    def label(self) -> str:
        return f"{self.service} {self.mode} c={self.concurrency} prompt={self.prompt_target}"

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
) -> Point:
    """One point from its requests (errors are counted, not averaged in) and engine scrapes."""
    good = [s for s in samples if s.ok]
    kinds = Counter(s.error or "error" for s in samples if not s.ok)
    output = sum(s.completion_tokens for s in good)
    prompts = [s.prompt_tokens for s in good if s.prompt_tokens is not None]
    decode = [v for v in (s.decode_tps for s in good) if v is not None]

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
    )


# --- the sweep ------------------------------------------------------------------------------


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


# --- a whole run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchRun:
    """A saved run: when, with which options, on which plan and GPUs, and what it measured."""

    run_id: str
    deployment: str
    started_at: str
    finished_at: str
    options: dict[str, Any]
    plan: dict[str, Any]  # the deployment's plan.json as it was
    inventory: dict[str, Any]
    points: tuple[Point, ...]
    skipped: tuple[str, ...] = ()
    interrupted: str | None = None  # what was running when Ctrl-C came
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.service for p in self.points))

    @property
    def engine(self) -> str:
        return str(self.plan.get("engine", "?"))

    def shared(self) -> dict[str, tuple[str, ...]]:
        return shared_gpu_neighbours(self.plan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": BENCH_SCHEMA_VERSION,
            "run_id": self.run_id,
            "deployment": self.deployment,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "interrupted": self.interrupted,
            "options": self.options,
            "skipped": list(self.skipped),
            "notes": list(self.notes),
            "points": [p.to_dict() for p in self.points],
            "interference": [
                {**asdict(i), "shares_gpu_with": list(i.shares_gpu_with)}
                for i in interference(self.points, self.shared())
            ],
            "plan": self.plan,
            "inventory": self.inventory,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "run.json") -> BenchRun:
        if raw.get("schema_version") != BENCH_SCHEMA_VERSION:
            raise BenchError(
                f"{source}: schema_version {raw.get('schema_version')!r} is not "
                f"{BENCH_SCHEMA_VERSION}"
            )
        try:
            return cls(
                run_id=str(raw["run_id"]),
                deployment=str(raw["deployment"]),
                started_at=str(raw["started_at"]),
                finished_at=str(raw["finished_at"]),
                options=dict(raw["options"]),
                plan=dict(raw["plan"]),
                inventory=dict(raw["inventory"]),
                points=tuple(Point.from_dict(p) for p in raw["points"]),
                skipped=tuple(raw.get("skipped", ())),
                interrupted=raw.get("interrupted"),
                notes=tuple(raw.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchError(f"{source} is not a valid bench run ({exc!r})") from None


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


# --- mixed load: how tiers slow each other --------------------------------------------------


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


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old <= 0:
        return None
    return round(new / old, 3)


def interference(
    points: Sequence[Point], shared: Mapping[str, tuple[str, ...]]
) -> list[Interference]:
    solo = {(p.service, p.concurrency, p.prompt_target): p for p in points if p.mode == "solo"}
    rows = []
    for p in points:
        alone = solo.get((p.service, p.concurrency, p.prompt_target))
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
                tps_ratio=_ratio(p.throughput_tps, alone.throughput_tps),
                solo_ttft_p95_ms=alone.ttft_ms.p95,
                mixed_ttft_p95_ms=p.ttft_ms.p95,
                ttft_ratio=_ratio(p.ttft_ms.p95, alone.ttft_ms.p95),
                solo_itl_p50_ms=alone.itl_ms.p50,
                mixed_itl_p50_ms=p.itl_ms.p50,
                itl_ratio=_ratio(p.itl_ms.p50, alone.itl_ms.p50),
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
                f"{top.concurrency} ({_num(top.solo_tps)} -> {_num(top.mixed_tps)} tok/s)"
            )
            continue
        lines.append(
            f"{service}{gpu}: from concurrency {first.concurrency} (prompt "
            f"{first.prompt_target}) mixed load gives {_pct(first.tps_ratio)} of solo "
            f"throughput ({_num(first.solo_tps)} -> {_num(first.mixed_tps)} tok/s), ITL p50 "
            f"{_ms(first.solo_itl_p50_ms)} -> {_ms(first.mixed_itl_p50_ms)}, TTFT p95 "
            f"{_ms(first.solo_ttft_p95_ms)} -> {_ms(first.mixed_ttft_p95_ms)}"
        )
    return lines


# --- comparing two runs ---------------------------------------------------------------------

COMPARED = (
    ("throughput_tps", "tok/s", True),
    ("ttft_p95_ms", "TTFT p95", False),
    ("itl_p50_ms", "ITL p50", False),
    ("e2e_p95_ms", "E2E p95", False),
    ("decode_p50_tps", "decode p50", True),
    ("errors", "errors", False),
)


def point_metrics(p: Point) -> dict[str, float | None]:
    return {
        "throughput_tps": p.throughput_tps,
        "ttft_p95_ms": p.ttft_ms.p95,
        "itl_p50_ms": p.itl_ms.p50,
        "e2e_p95_ms": p.e2e_ms.p95,
        "decode_p50_tps": p.decode_tps.p50,
        "errors": float(p.errors),
    }


@dataclass(frozen=True)
class MetricDelta:
    metric: str
    a: float | None
    b: float | None
    higher_is_better: bool

    @property
    def change_pct(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return round((self.b - self.a) / self.a * 100, 1)

    @property
    def better(self) -> bool | None:
        if self.a is None or self.b is None or self.a == self.b:
            return None
        return (self.b > self.a) == self.higher_is_better


@dataclass(frozen=True)
class PointDelta:
    service: str
    mode: str
    concurrency: int
    prompt_target: int
    deltas: tuple[MetricDelta, ...]

    def metric(self, name: str) -> MetricDelta:
        return next(d for d in self.deltas if d.metric == name)


@dataclass(frozen=True)
class Comparison:
    run_a: str
    run_b: str
    points: tuple[PointDelta, ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    settings: tuple[str, ...]  # plan differences: "mini.max_num_seqs: 256 -> 8"
    inventory: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "settings_changed": list(self.settings),
            "inventory_changed": list(self.inventory),
            "only_in_a": list(self.only_a),
            "only_in_b": list(self.only_b),
            "points": [
                {
                    "service": p.service,
                    "mode": p.mode,
                    "concurrency": p.concurrency,
                    "prompt_target": p.prompt_target,
                    "metrics": {
                        d.metric: {"a": d.a, "b": d.b, "change_pct": d.change_pct} for d in p.deltas
                    },
                }
                for p in self.points
            ],
        }


PLAN_SETTINGS = (
    "model",
    "gpus",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv_cache_dtype",
    "kv_cache_tokens",
)


def _plan_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    changes = []
    for key in ("engine", "vllm_version", "image"):
        if a.get(key) != b.get(key):
            changes.append(f"{key}: {a.get(key)} -> {b.get(key)}")
    sa = {s["name"]: s for s in a.get("services", [])}
    sb = {s["name"]: s for s in b.get("services", [])}
    for name in dict.fromkeys([*sa, *sb]):
        if name not in sa or name not in sb:
            changes.append(f"{name}: {'added' if name in sb else 'removed'}")
            continue
        for key in PLAN_SETTINGS:
            if sa[name].get(key) != sb[name].get(key):
                changes.append(f"{name}.{key}: {sa[name].get(key)} -> {sb[name].get(key)}")
    return changes


def _inventory_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    def gpus(inv: Mapping[str, Any]) -> dict[int, str]:
        return {
            int(g["index"]): f"{g['name']} {g['memory_total_mib']} MiB" for g in inv.get("gpus", [])
        }

    ga, gb = gpus(a), gpus(b)
    changes = [
        f"GPU {i}: {ga.get(i, 'absent')} -> {gb.get(i, 'absent')}"
        for i in sorted({*ga, *gb})
        if ga.get(i) != gb.get(i)
    ]
    if a.get("driver_version") != b.get("driver_version"):
        changes.append(f"driver: {a.get('driver_version')} -> {b.get('driver_version')}")
    return changes


def compare_runs(a: BenchRun, b: BenchRun) -> Comparison:
    """Points measured in both runs, metric by metric; what only one run has; and the plan
    and GPU differences that may explain the change."""
    pa = {p.key: p for p in a.points}
    pb = {p.key: p for p in b.points}
    common = [k for k in pa if k in pb]
    deltas = []
    for key in common:
        ma, mb = point_metrics(pa[key]), point_metrics(pb[key])
        deltas.append(
            PointDelta(
                *key,
                deltas=tuple(MetricDelta(name, ma[name], mb[name], up) for name, _, up in COMPARED),
            )
        )
    return Comparison(
        run_a=a.run_id,
        run_b=b.run_id,
        points=tuple(deltas),
        only_a=tuple(pa[k].label for k in pa if k not in pb),
        only_b=tuple(pb[k].label for k in pb if k not in pa),
        settings=tuple(_plan_changes(a.plan, b.plan)),
        inventory=tuple(_inventory_changes(a.inventory, b.inventory)),
    )


# --- tune -----------------------------------------------------------------------------------


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


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{_num(value)} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _curve_text(curve: Sequence[Point]) -> str:
    return ", ".join(f"{p.concurrency}: {_num(p.throughput_tps)}" for p in curve)


def choose_curve(
    points: Sequence[Point], service: str, prompt_target: int | None = None
) -> list[Point]:
    """The service's points at one prompt length, by concurrency: solo points when there are
    any; the prompt length asked for, else the one with the most concurrency levels (the
    longest on a tie)."""
    mine = [p for p in points if p.service == service and p.ok > 0]
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
    last_gain = _ratio(top.throughput_tps, before.throughput_tps)
    itl_growth = _ratio(knee.itl_ms.p50, base.itl_ms.p50)
    ttft_growth = f"p95 TTFT {_ms(base.ttft_ms.p95)} -> {_ms(top.ttft_ms.p95)}"
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
            f"({_num(knee.throughput_tps)} tok/s at {knee.concurrency}, {_num(top.throughput_tps)} "
            f"at {top.concurrency}) because requests above {cap} wait ({ttft_growth}{waiting})"
        )
        if itl_growth is not None and itl_growth < SATURATED_ITL_GROWTH:
            wanted = max(2 * cap, top.concurrency)
            suggested = min(kv_fit, wanted)
            capped = f" (not {wanted}: no more fit)" if suggested < wanted else ""
            why = (
                f"{limited}, while ITL p50 with {knee.concurrency} running is "
                f"{_ms(knee.itl_ms.p50)} against {_ms(base.itl_ms.p50)} for one request "
                f"({itl_growth:.2f}x): the engine is not saturated, so more sequences should "
                f"add throughput; {kv_text} -> {suggested}{capped}, then bench again"
            )
        else:
            suggested = cap
            why = (
                f"{limited}, and ITL p50 is {_ms(knee.itl_ms.p50)} at {knee.concurrency} "
                f"against {_ms(base.itl_ms.p50)} alone ({itl_growth or 0:.2f}x): the engine "
                f"is near saturation at the cap; keep {cap}"
            )
    else:
        suggested = min(knee.concurrency, kv_fit)
        why = (
            f"{head}: {_pct(knee.throughput_tps / best)} of the best ({_num(best)} tok/s) is "
            f"reached at {knee.concurrency}; above it throughput grows "
            f"{_pct(top.throughput_tps / knee.throughput_tps - 1)} while ITL p50 goes "
            f"{_ms(knee.itl_ms.p50)} -> {_ms(top.itl_ms.p50)} and {ttft_growth}: "
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
        gpu = next((g for g in plan.gpus if g.index == index), None)
        if gpu is None:
            continue
        asked = sum(
            math.ceil(s.gpu_memory_utilization * gpu.total_bytes)
            for s in plan.services
            if index in s.gpus
        )
        room = int(gpu.total_bytes * MAX_UTILIZATION) - asked
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
    total = min((g.total_bytes for g in gpus), default=0)
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
    need = math.ceil(need / KV_BLOCK_SIZE) * KV_BLOCK_SIZE
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

"""Two saved runs side by side, pure: points measured in both, metric by metric, and the plan
and GPU differences that may explain the change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deployer.bench.run import BenchRun
from deployer.bench.samples import Point

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
    workload: str = ""  # Point.workload: dataset and arrival rate, "" for the default

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
                    **({"workload": p.workload} if p.workload else {}),
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
        service, mode, concurrency, prompt, workload = key
        deltas.append(
            PointDelta(
                service,
                mode,
                concurrency,
                prompt,
                deltas=tuple(MetricDelta(name, ma[name], mb[name], up) for name, _, up in COMPARED),
                workload=workload,
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

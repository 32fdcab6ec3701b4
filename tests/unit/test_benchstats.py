"""benchstats: percentiles, per-point aggregates, the sweep, comparisons and tune suggestions on
synthetic measurements whose answers are known."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from deployer.bench.compare import compare_runs
from deployer.bench.interference import interference, shared_gpu_neighbours, where_it_hurts
from deployer.bench.run import BenchRun
from deployer.bench.samples import (
    EngineSample,
    Point,
    RequestSample,
    Summary,
    aggregate,
    percentile,
)
from deployer.bench.suggest import Suggestion, suggest
from deployer.bench.sweep import parse_int_list, parse_prompt_specs, plan_sweep, resolve_prompt
from deployer.catalog import Catalog
from deployer.errors import BenchError
from deployer.planner import DeploymentPlan, plan
from deployer.profiles import load_profile, parse_profile
from tests.helpers import inventory, tri_tier_plan


@pytest.fixture(scope="module")
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    return tri_tier_plan(catalog)


def with_seqs(p: DeploymentPlan, service: str, seqs: int) -> DeploymentPlan:
    services = tuple(replace(s, max_num_seqs=seqs) if s.name == service else s for s in p.services)
    return replace(p, services=services)


def point(
    service: str,
    concurrency: int,
    tps: float,
    *,
    mode: str = "solo",
    prompt: int = 1024,
    completion: float = 128,
    ttft_p95: float = 100.0,
    itl_p50: float = 10.0,
    kv_peak: float | None = 0.05,
    waiting: float | None = None,
    errors: int = 0,
) -> Point:
    return Point(
        service=service,
        mode=mode,
        concurrency=concurrency,
        prompt_target=prompt,
        max_tokens=128,
        requests=16,
        ok=16 - errors,
        errors=errors,
        error_kinds=(("HTTP 500", errors),) if errors else (),
        duration_s=10.0,
        stopped_by="requests",
        output_tokens=int(tps * 10),
        throughput_tps=tps,
        request_rate=tps / completion,
        prompt_tokens=float(prompt),
        completion_tokens=completion,
        ttft_ms=Summary(16, ttft_p95 / 2, ttft_p95 / 2, ttft_p95, ttft_p95, ttft_p95),
        itl_ms=Summary(16, itl_p50, itl_p50, itl_p50 * 1.5, itl_p50 * 2, itl_p50 * 3),
        e2e_ms=Summary(16, 1000.0, 1000.0, 1200.0, 1300.0, 1400.0),
        decode_tps=Summary(16, 1000 / itl_p50, 1000 / itl_p50, None, None, None),
        kv_usage_peak=kv_peak,
        running_peak=float(concurrency),
        waiting_peak=waiting,
    )


def bench_run(run_id: str, p: DeploymentPlan, points: list[Point]) -> BenchRun:
    return BenchRun(
        run_id=run_id,
        deployment="qwen3",
        started_at="2025-01-31T14:05:02+00:00",
        finished_at="2025-01-31T14:09:02+00:00",
        options={"concurrency": [1, 2, 4]},
        plan=p.to_dict(),
        inventory={"source": "test", "gpus": [g.__dict__ for g in p.gpus]},
        points=tuple(points),
    )


# --- percentiles and aggregation ------------------------------------------------------------


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([4, 1, 3, 2], 0) == 1 and percentile([4, 1, 3, 2], 100) == 4
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_of_values_and_of_nothing() -> None:
    s = Summary.of([10.0, 20.0, 30.0, 40.0])
    assert (s.count, s.mean, s.p50, s.max) == (4, 25.0, 25.0, 40.0)
    assert s.p95 == pytest.approx(38.5) and s.p99 == pytest.approx(39.7)
    assert Summary.of([]) == Summary()


def sample(index: int, ttft: float, tokens: int, gap: float, ok: bool = True) -> RequestSample:
    return RequestSample(
        index=index,
        ok=ok,
        error=None if ok else "HTTP 503: busy",
        start_s=0.1 * index,
        ttft_ms=ttft if ok else None,
        e2e_ms=ttft + gap * (tokens - 1) if ok else 5.0,
        prompt_tokens=64 if ok else None,
        completion_tokens=tokens if ok else 0,
        itl_ms=(gap,) * (tokens - 1) if ok else (),
    )


def test_aggregate_counts_errors_apart_and_pools_token_gaps() -> None:
    samples = [
        sample(0, 50, 11, 10.0),
        sample(1, 60, 11, 10.0),
        sample(2, 70, 11, 20.0),
        sample(3, 0, 0, 0, ok=False),
        sample(4, 0, 0, 0, ok=False),
    ]
    engine = [EngineSample(0.1, 2, 0), EngineSample(0.25, 2, 3), EngineSample(None, None, None)]
    p = aggregate("mini", "solo", 4, 64, 11, samples, 2.0, engine, "duration")
    assert (p.requests, p.ok, p.errors) == (5, 3, 2)
    assert p.error_kinds == (("HTTP 503: busy", 2),)
    assert p.output_tokens == 33 and p.throughput_tps == 16.5 and p.request_rate == 1.5
    assert p.ttft_ms.p50 == 60 and p.ttft_ms.mean == 60 and p.ttft_ms.max == 70
    assert p.itl_ms.count == 30 and p.itl_ms.p50 == 10.0 and p.itl_ms.max == 20.0
    # decode speed: 10 tokens after the first in 100 ms (200 ms for the slow one)
    assert p.decode_tps.p50 == 100.0 and p.decode_tps.max == 100.0
    assert p.decode_tps.mean == pytest.approx((100 + 100 + 50) / 3, abs=0.01)
    assert p.prompt_tokens == 64 and p.completion_tokens == 11
    assert (p.kv_usage_peak, p.running_peak, p.waiting_peak) == (0.25, 2, 3)
    assert p.stopped_by == "duration"
    assert Point.from_dict(p.to_dict()) == p


def test_aggregate_of_only_errors_has_no_latencies() -> None:
    p = aggregate("mini", "solo", 1, 64, 8, [sample(0, 0, 0, 0, ok=False)], 1.0)
    assert p.ok == 0 and p.throughput_tps == 0 and p.ttft_ms == Summary()
    assert p.kv_usage_peak is None


# --- the sweep ------------------------------------------------------------------------------


def test_option_lists_are_parsed_strictly() -> None:
    assert parse_int_list("4, 1,2,2", "--concurrency") == (1, 2, 4)
    assert parse_prompt_specs("128,25%,max,128") == ("128", "25%", "max")
    for bad in ("0", "x", ""):
        with pytest.raises(BenchError, match="--concurrency"):
            parse_int_list(bad, "--concurrency")
    for bad in ("0", "150%", "half", "-3"):
        with pytest.raises(BenchError, match="--prompt-tokens"):
            parse_prompt_specs(bad)


def test_prompts_resolve_against_each_context() -> None:
    assert resolve_prompt("max", 16384, 128) == 16256
    assert resolve_prompt("25%", 32768, 128) == 8192
    assert resolve_prompt("512", 32768, 128) == 512


def test_sweep_runs_each_service_alone_then_all_at_once(tri_tier: DeploymentPlan) -> None:
    services = [tri_tier.service("mini"), tri_tier.service("micro")]
    points, skipped = plan_sweep(services, (1, 4), ("1024", "50%", "20000"), 128, mixed=True)
    solo = [(p.loads, p.concurrency) for p in points if p.mode == "solo"]
    assert solo[:4] == [
        ((("mini", 1024),), 1),
        ((("mini", 1024),), 4),
        ((("mini", 16384),), 1),
        ((("mini", 16384),), 4),
    ]
    # 20000 tokens do not fit micro's 16,384 context: skipped there, said so
    assert ((("mini", 20000),), 1) in solo and ((("micro", 20000),), 1) not in solo
    assert skipped == (
        "micro: prompt 20000 (20000 tokens) + max_tokens 128 exceeds max_model_len 16384",
    )
    mixed = [p for p in points if p.mode == "mixed"]
    assert [p.loads for p in mixed[:2]] == [(("mini", 1024), ("micro", 1024))] * 2
    assert mixed[2].loads == (("mini", 16384), ("micro", 8192))
    assert mixed[0].label == "mini+micro mixed c=1 prompt=1024/1024"
    # the 20000-token round has only mini: not a mixed load
    assert len(mixed) == 4


def test_mixed_with_one_service_is_a_note(tri_tier: DeploymentPlan) -> None:
    points, skipped = plan_sweep([tri_tier.service("mini")], (1,), ("128",), 16, mixed=True)
    assert [p.mode for p in points] == ["solo"]
    assert "two or more services" in skipped[0]


# --- mixed load, comparisons, runs ----------------------------------------------------------


def test_interference_finds_where_the_shared_gpu_hurts(tri_tier: DeploymentPlan) -> None:
    points = [
        point("mini", 1, 100),
        point("mini", 4, 380, itl_p50=10.5),
        point("mini", 1, 98, mode="mixed"),
        point("mini", 4, 266, mode="mixed", itl_p50=14.0, ttft_p95=400),
        point("medium", 4, 300),
        point("medium", 4, 295, mode="mixed"),
    ]
    shared = shared_gpu_neighbours(tri_tier.to_dict())
    assert shared == {"medium": (), "mini": ("micro",), "micro": ("mini",)}
    rows = interference(points, shared)
    mini4 = next(r for r in rows if r.service == "mini" and r.concurrency == 4)
    assert (mini4.tps_ratio, mini4.itl_ratio, mini4.ttft_ratio) == (0.7, 1.333, 4.0)
    assert mini4.hurts and not rows[0].hurts
    assert where_it_hurts(rows) == [
        "mini (shares a GPU with micro): from concurrency 4 (prompt 1024) mixed load gives 70% "
        "of solo throughput (380 -> 266 tok/s), ITL p50 10.5 ms -> 14.0 ms, TTFT p95 100 ms -> "
        "400 ms",
        "medium (own GPUs): mixed load stays within 10% of solo up to concurrency 4 "
        "(300 -> 295 tok/s)",
    ]


def test_compare_matches_points_and_names_what_changed(tri_tier: DeploymentPlan) -> None:
    a = bench_run("20250131-140502", tri_tier, [point("mini", 1, 100), point("mini", 8, 400)])
    faster = with_seqs(tri_tier, "mini", 8)
    b = bench_run(
        "20250131-150000",
        faster,
        [point("mini", 1, 110, ttft_p95=80), point("mini", 16, 700, errors=2)],
    )
    cmp = compare_runs(a, b)
    assert cmp.settings == ("mini.max_num_seqs: 256 -> 8",)
    assert cmp.inventory == ()
    (only,) = cmp.points
    assert (only.service, only.mode, only.concurrency, only.prompt_target) == (
        "mini",
        "solo",
        1,
        1024,
    )
    tps, ttft = only.metric("throughput_tps"), only.metric("ttft_p95_ms")
    assert (tps.a, tps.b, tps.change_pct, tps.better) == (100, 110, 10.0, True)
    assert (ttft.a, ttft.b, ttft.change_pct, ttft.better) == (100.0, 80.0, -20.0, True)
    assert only.metric("errors").better is None
    assert cmp.only_a == ("mini solo c=8 prompt=1024",)
    assert cmp.only_b == ("mini solo c=16 prompt=1024",)
    data = cmp.to_dict()
    assert data["points"][0]["metrics"]["throughput_tps"] == {
        "a": 100,
        "b": 110,
        "change_pct": 10.0,
    }


def test_compare_reports_other_gpus(tri_tier: DeploymentPlan) -> None:
    a = bench_run("a", tri_tier, [point("mini", 1, 100)])
    gpus = [dict(g, name="NVIDIA L40S") if g["index"] == 2 else g for g in a.inventory["gpus"]]
    b = replace(a, run_id="b", inventory={**a.inventory, "gpus": gpus})
    assert compare_runs(a, b).inventory == (
        "GPU 2: NVIDIA GeForce RTX 4090 24564 MiB -> NVIDIA L40S 24564 MiB",
    )


def test_a_run_round_trips_through_its_json(tri_tier: DeploymentPlan) -> None:
    run = bench_run("20250131-140502", tri_tier, [point("mini", 1, 100)])
    data = run.to_dict()
    assert data["schema_version"] == 1 and data["interference"] == []
    assert BenchRun.from_dict(data) == run
    with pytest.raises(BenchError, match="schema_version"):
        BenchRun.from_dict({**data, "schema_version": 99})
    with pytest.raises(BenchError, match="not a valid bench run"):
        BenchRun.from_dict({"schema_version": 1, "run_id": "x"})


# --- tune -----------------------------------------------------------------------------------


def by_setting(suggestions: list[Suggestion]) -> dict[str, Suggestion]:
    return {s.setting: s for s in suggestions}


def test_a_cap_that_binds_while_the_engine_idles_is_raised(tri_tier: DeploymentPlan) -> None:
    p = with_seqs(tri_tier, "micro", 2)
    curve = [
        point("micro", 1, 100, ttft_p95=55),
        point("micro", 2, 200, ttft_p95=56),
        point("micro", 4, 201, ttft_p95=420, waiting=2),
    ]
    seqs = by_setting(suggest(p, "micro", curve))["max_num_seqs"]
    assert (seqs.current, seqs.suggested, seqs.changed) == (2, 4, True)
    assert "output tok/s by concurrency at prompt 1024: 1: 100, 2: 200, 4: 201" in seqs.reason
    assert "levels off at max_num_seqs 2 (200 tok/s at 2, 201 at 4)" in seqs.reason
    assert "p95 TTFT 55.0 ms -> 420 ms, up to 2 waiting" in seqs.reason
    assert (
        "ITL p50 with 2 running is 10.0 ms against 10.0 ms for one request (1.00x)" in seqs.reason
    )
    # 35,872 KV tokens / (1024 + 128) tokens per request = 31 such requests
    # (memory model v2, issue 11, plans fewer KV tokens here than before)
    assert "35,872 tokens / 1,152 tokens per request = 31 such requests" in seqs.reason


def test_a_cap_that_binds_on_a_saturated_engine_is_kept(tri_tier: DeploymentPlan) -> None:
    p = with_seqs(tri_tier, "micro", 4)
    curve = [point("micro", 1, 100), point("micro", 4, 300, itl_p50=18), point("micro", 8, 305)]
    seqs = by_setting(suggest(p, "micro", curve))["max_num_seqs"]
    assert (seqs.suggested, seqs.changed) == (4, False)
    assert "(1.80x): the engine is near saturation at the cap; keep 4" in seqs.reason


def test_the_throughput_knee_below_the_cap_is_suggested(tri_tier: DeploymentPlan) -> None:
    levels = [(1, 60, 10), (2, 118, 10), (4, 230, 11), (8, 420, 13), (16, 700, 18), (32, 760, 35)]
    curve = [point("mini", c, tps, itl_p50=itl) for c, tps, itl in levels]
    seqs = by_setting(suggest(tri_tier, "mini", curve))["max_num_seqs"]
    # 90 % of the best (760) is 684: first reached at 16
    assert (seqs.current, seqs.suggested) == (256, 16)
    assert "92% of the best (760 tok/s) is reached at 16" in seqs.reason
    assert "ITL p50 goes 18.0 ms -> 35.0 ms" in seqs.reason


def test_throughput_still_rising_keeps_the_setting(tri_tier: DeploymentPlan) -> None:
    curve = [point("mini", c, 100 * c) for c in (1, 2, 4)]
    seqs = by_setting(suggest(tri_tier, "mini", curve))["max_num_seqs"]
    assert not seqs.changed
    assert "still +100% from 2 to 4, no knee in the measured range" in seqs.reason
    assert "--concurrency …,8,16" in seqs.reason


def test_raising_stops_at_what_the_kv_cache_holds(tri_tier: DeploymentPlan) -> None:
    p = with_seqs(tri_tier, "mini", 2)
    curve = [point("mini", c, tps, prompt=29000) for c, tps in ((1, 50), (2, 100), (4, 101))]
    seqs = by_setting(suggest(p, "mini", curve))["max_num_seqs"]
    # 59,328 KV tokens / 29,128 per request = 2 (prompt 30000 before: 64,624 KV tokens then
    # (memory model v2, issue 11, plans fewer KV tokens here than before))
    assert (seqs.suggested, seqs.changed) == (2, False)
    assert "= 2 such requests at once -> 2 (not 4: no more fit)" in seqs.reason


def test_context_is_shortened_when_two_full_requests_do_not_fit(tri_tier: DeploymentPlan) -> None:
    mini = by_setting(suggest(tri_tier, "mini", [point("mini", c, 100 * c) for c in (1, 2)]))
    ctx = mini["context"]
    # 59,328 / 32,768 = 1.81 full-context requests; 59,328 / 2 -> 29,440 in 256-token steps
    # (memory model v2, issue 11, plans fewer KV tokens here than before)
    assert (ctx.current, ctx.suggested) == (32768, 29440)
    assert "KV cache 59,328 tokens / context 32,768 = 1.81 full-context requests" in ctx.reason
    micro = by_setting(suggest(tri_tier, "micro", [point("micro", c, 100 * c) for c in (1, 2)]))
    assert not micro["context"].changed
    assert "35,872 tokens / context 16,384 = 2.19 full-context requests" in micro["context"].reason


def test_prefill_speed_is_measured_from_ttft_across_prompts(tri_tier: DeploymentPlan) -> None:
    points = [
        point("micro", 1, 100, prompt=1024, ttft_p95=100),  # p50 50 ms
        point("micro", 1, 90, prompt=9216, ttft_p95=1100),  # p50 550 ms: 8192 tokens in 0.5 s
        point("micro", 2, 180, prompt=1024),
    ]
    ctx = by_setting(suggest(tri_tier, "micro", points, prompt_target=1024))["context"]
    assert "prefill measured at 16,384 tok/s" in ctx.reason
    assert "full-context prompt takes about 1.0 s to its first token" in ctx.reason


def test_memory_on_a_shared_gpu_shrinks_to_what_was_used_and_still_plans(
    tri_tier: DeploymentPlan, catalog: Catalog
) -> None:
    curve = [point("mini", c, 100 * c, kv_peak=0.05) for c in (1, 2, 4)]
    suggestions = by_setting(suggest(tri_tier, "mini", curve))
    memory = suggestions["gpu_memory_utilization"]
    # (memory model v2, issue 11, plans fewer KV tokens here than before): 0.641 and 59,328 tokens (0.661 and 64,624 before)
    assert memory.changed and memory.suggested < memory.current == 0.641
    assert "peak KV-cache usage 5.0% of 59,328 tokens = 2,966 tokens" in memory.reason
    assert "frees" in memory.reason and "for micro" in memory.reason
    # The suggested fraction and context, written into the profile, still plan.
    services: dict[str, dict[str, Any]] = {
        s.name: {"model": s.model, "gpus": list(s.gpus or ()), "port": s.port, "context": s.context}
        for s in load_profile("tri-tier").services
    }
    services["mini"].update(
        context=suggestions["context"].suggested, gpu_memory_utilization=memory.suggested
    )
    data = {"name": "tri-tier", "services": services}
    replanned = plan(inventory("3x-rtx4090"), parse_profile(data, "edited"), catalog)
    mini = replanned.service("mini")
    assert mini.gpu_memory_utilization == memory.suggested
    assert mini.kv_cache_tokens >= suggestions["context"].suggested
    assert replanned.service("micro").gpu_memory_utilization > 0.292  # micro takes the rest


def test_memory_on_an_own_gpu_is_kept(tri_tier: DeploymentPlan) -> None:
    curve = [point("medium", c, 100 * c, kv_peak=0.02) for c in (1, 2)]
    memory = by_setting(suggest(tri_tier, "medium", curve))["gpu_memory_utilization"]
    assert not memory.changed and "GPU 0,1 is not shared" in memory.reason


def test_a_full_kv_cache_without_room_is_explained(tri_tier: DeploymentPlan) -> None:
    curve = [point("mini", c, 100 * c, kv_peak=0.97) for c in (1, 2)]
    memory = by_setting(suggest(tri_tier, "mini", curve))["gpu_memory_utilization"]
    assert not memory.changed
    assert "the KV cache limits concurrency, but GPU 2 has no unclaimed memory" in memory.reason
    assert "kv_cache_dtype fp8" in memory.reason


def test_without_kv_metrics_memory_is_kept(tri_tier: DeploymentPlan) -> None:
    curve = [point("mini", c, 100 * c, kv_peak=None) for c in (1, 2)]
    memory = by_setting(suggest(tri_tier, "mini", curve))["gpu_memory_utilization"]
    assert not memory.changed and "no KV-cache usage was measured" in memory.reason


def test_suggest_needs_measurements_of_the_service(tri_tier: DeploymentPlan) -> None:
    with pytest.raises(BenchError, match="no successful measurements of micro"):
        suggest(tri_tier, "micro", [point("mini", 1, 100)])
    with pytest.raises(BenchError, match="at prompt 1024 tokens, not 64"):
        suggest(tri_tier, "mini", [point("mini", 1, 100)], prompt_target=64)
    one = by_setting(suggest(tri_tier, "MINI", [point("mini", 1, 100)]))["max_num_seqs"]
    assert not one.changed and "one concurrency level shows no knee" in one.reason

"""Issue 12's bench vocabulary, pure: vLLM's TPOT, goodput under SLOs, request-rate arrivals,
ShareGPT prompts, the sweep over rates, the concurrency bound and the `vllm bench serve` JSON."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path

import pytest

from deployer.bench.arrivals import arrival_times
from deployer.bench.datasets import load_sharegpt
from deployer.bench.run import BenchRun
from deployer.bench.samples import Point, PointRecord, RequestSample, Slo, aggregate
from deployer.bench.slo import parse_slo, slo_limits
from deployer.bench.sweep import (
    MAX_CONCURRENCY,
    parse_concurrency,
    parse_rates,
    plan_sweep,
    requests_for,
    workers_for,
)
from deployer.bench.vllm_format import file_name, point_result, results
from deployer.catalog import Catalog
from deployer.errors import BenchError
from deployer.planner import DeploymentPlan, PlanOptions, plan
from deployer.profiles import load_profile
from tests.helpers import inventory


@pytest.fixture(scope="module")
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    return plan(
        inventory("3x-rtx4090"), load_profile("tri-tier"), catalog, PlanOptions(engine="stand-in")
    )


def sample(i: int, ttft: float, gap: float, tokens: int, ok: bool = True) -> RequestSample:
    """A request whose tokens came `gap` ms apart after a `ttft` ms first token."""
    itl = (gap,) * (tokens - 1)
    return RequestSample(
        i, ok, None if ok else "HTTP 500", 0.5 * i, ttft, ttft + sum(itl), 128, tokens, itl
    )


def test_tpot_excludes_the_first_token_as_vllm_does() -> None:
    s = sample(0, ttft=100.0, gap=20.0, tokens=11)  # E2EL 300 ms
    assert s.tpot_ms == pytest.approx((300.0 - 100.0) / 10)
    assert sample(1, 100.0, 20.0, 1).tpot_ms is None  # one token: no TPOT
    assert sample(2, 100.0, 20.0, 5, ok=False).tpot_ms is None


def test_a_request_meets_an_slo_only_when_every_objective_holds() -> None:
    fast, slow_start = sample(0, 100.0, 20.0, 11), sample(1, 900.0, 20.0, 11)
    slo = Slo(ttft_ms=500.0, tpot_ms=25.0)
    assert fast.meets(slo) and not slow_start.meets(slo)
    assert not fast.meets(Slo(tpot_ms=19.0))
    assert sample(2, 100.0, 20.0, 1).meets(Slo(tpot_ms=1.0))  # vLLM: one token counts as TPOT 0
    assert not sample(3, 1.0, 1.0, 3, ok=False).meets(Slo(e2el_ms=1e9))


def test_aggregate_with_an_slo_counts_the_share_and_the_goodput() -> None:
    samples = [sample(i, 100.0 + 300 * (i % 2), 20.0, 11) for i in range(4)]
    samples.append(sample(4, 100.0, 20.0, 11, ok=False))
    point = aggregate("mini", "solo", 2, 128, 11, samples, 2.0, slo=Slo(ttft_ms=300.0))
    assert point.slo_met == pytest.approx(2 / 5)  # failures count against it
    assert point.goodput_rps == pytest.approx(1.0)  # 2 good requests in 2 s
    assert point.tpot_ms.p50 == pytest.approx(20.0) and point.tpot_ms.count == 4
    plain = aggregate("mini", "solo", 2, 128, 11, samples, 2.0)
    assert plain.slo_met is None and plain.goodput_rps is None


def test_points_of_older_runs_read_back_without_the_new_fields() -> None:
    point = aggregate("mini", "solo", 1, 128, 11, [sample(0, 100.0, 20.0, 11)], 1.0)
    old = point.to_dict()
    for key in ("tpot_ms", "rate", "burstiness", "dataset", "slo_met", "goodput_rps"):
        del old[key]
    back = Point.from_dict(old)
    assert back.tpot_ms.count == 0 and back.rate is None and back.key[-1] == ""
    assert back.label == "mini solo c=1 prompt=128"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ttft=500ms,tpot=50ms", Slo(500.0, 50.0, None)),
        ("e2el=2.5s", Slo(None, None, 2500.0)),
        ("ttft:300, TPOT = 40", Slo(300.0, 40.0, None)),  # vLLM's KEY:VALUE form, ms
    ],
)
def test_parse_slo(text: str, expected: Slo) -> None:
    assert parse_slo(text) == expected
    assert str(expected)  # printable for the report


@pytest.mark.parametrize("bad", ["", "latency=5ms", "ttft=fast", "ttft=0ms", "ttft"])
def test_parse_slo_refuses_what_it_cannot_read(bad: str) -> None:
    with pytest.raises(BenchError, match="--slo"):
        parse_slo(bad)


def test_slo_limits_find_the_highest_load_that_keeps_the_target() -> None:
    def point(c: int, met: float, rate: float | None = None) -> Point:
        base = aggregate("mini", "solo", c, 128, 11, [sample(0, 1.0, 1.0, 2)], 1.0, rate=rate)
        from dataclasses import replace

        return replace(base, slo_met=met)

    points = [point(1, 1.0), point(2, 0.95), point(4, 0.6), point(8, 0.95)]
    points += [point(0, 0.5, rate=1.0), point(0, 0.4, rate=2.0)]
    limits = {limit.axis: limit for limit in slo_limits(points, 0.9)}
    assert limits["concurrency"].best == 2  # stops at the dip at 4
    assert "at most 2 concurrent requests keep 95%" in limits["concurrency"].text(0.9)
    assert limits["rate"].best is None
    assert "misses the SLO already at 1 requests/s (50%" in limits["rate"].text(0.9)


def test_arrivals_are_poisson_scaled_to_n_over_rate_and_seeded() -> None:
    times = arrival_times(400, rate=20.0)
    assert len(times) == 400 and times[-1] == pytest.approx(400 / 20.0)
    assert all(b >= a for a, b in itertools.pairwise(times))
    gaps = [b - a for a, b in zip((0.0, *times), times, strict=False)]
    cv = statistics.pstdev(gaps) / statistics.mean(gaps)
    assert 0.8 < cv < 1.2  # exponential gaps: coefficient of variation 1
    assert arrival_times(400, 20.0) == times and arrival_times(400, 20.0, seed=1) != times
    bursty = [
        b - a
        for a, b in zip(
            (0.0, *arrival_times(400, 20.0, 0.25)), arrival_times(400, 20.0, 0.25), strict=False
        )
    ]
    assert statistics.pstdev(bursty) / statistics.mean(bursty) > 1.5  # gamma shape 0.25: CV 2
    even = arrival_times(4, 2.0, math.inf)
    assert even == pytest.approx((0.5, 1.0, 1.5, 2.0))
    assert arrival_times(3, math.inf) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        arrival_times(3, 0.0)


def test_sharegpt_prompts_are_first_turns_shuffled_and_fitted(tmp_path: Path) -> None:
    data = [
        {
            "id": "a",
            "conversations": [
                {"from": "human", "value": "hello there"},
                {"from": "gpt", "value": "hi"},
            ],
        },
        {
            "id": "b",
            "conversations": [
                {"from": "human", "value": "x" * 4000},
                {"from": "gpt", "value": "ok"},
            ],
        },
        {"id": "c", "conversations": [{"from": "human", "value": "only one turn"}]},
        {"id": "d", "conversations": []},
        "not an object",
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    dataset = load_sharegpt(path)
    assert sorted(dataset.prompts) == sorted(["hello there", "x" * 4000])
    assert dataset.fitting(max_model_len=512, max_tokens=12) == (
        "hello there",
    )  # 4000 chars: ~1000 tokens
    assert load_sharegpt(path).prompts == dataset.prompts  # the shuffle is seeded


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not JSON"),
        ('{"conversations": []}', "expected a JSON list"),
        ('[{"conversations": [{"from": "human", "value": "x"}]}]', "no conversation with two"),
    ],
)
def test_sharegpt_files_that_cannot_be_used(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(BenchError, match=message):
        load_sharegpt(path)
    with pytest.raises(BenchError, match="cannot read"):
        load_sharegpt(tmp_path / "missing.json")


def test_rates_and_the_concurrency_bound() -> None:
    assert parse_rates("4, 0.5,inf,4") == (0.5, 4.0, math.inf)
    for bad in ("0", "-1", "fast", "nan", ""):
        with pytest.raises(BenchError, match="--request-rate"):
            parse_rates(bad)
    assert parse_concurrency("1,1024") == (1, 1024)
    with pytest.raises(BenchError, match=f"more than {MAX_CONCURRENCY} concurrent requests"):
        parse_concurrency("1,100000000")


def test_threads_never_outnumber_requests() -> None:
    assert workers_for(1000, 1) == 1  # D25: one request, one thread
    assert workers_for(4, 100) == 4
    assert workers_for(0, 50) == 50  # open loop without a cap: one per request
    assert workers_for(0, 10**6) == MAX_CONCURRENCY
    assert requests_for(4, None, rate=2.0, duration_s=30.0) == 60
    assert requests_for(0, None, rate=1000.0, duration_s=30.0) == 4096
    assert requests_for(2, None, rate=1000.0, duration_s=30.0) == 128  # 64 per cap
    assert requests_for(4, 7, rate=2.0, duration_s=30.0) == 7


def test_the_sweep_over_rates_and_a_dataset(tri_tier: DeploymentPlan) -> None:
    services = [tri_tier.service("mini"), tri_tier.service("micro")]
    points, skipped = plan_sweep(
        services, (1, 2), ("128",), 64, True, rates=(1.0, 4.0), max_concurrency=8
    )
    assert [p.label for p in points] == [
        "mini solo c=8 prompt=128 rate=1/s",
        "mini solo c=8 prompt=128 rate=4/s",
        "micro solo c=8 prompt=128 rate=1/s",
        "micro solo c=8 prompt=128 rate=4/s",
        "mini+micro mixed c=8 prompt=128/128 rate=1/s",
        "mini+micro mixed c=8 prompt=128/128 rate=4/s",
    ]
    assert not skipped
    points, _ = plan_sweep(services[:1], (1, 4), ("max",), 64, False, dataset="sharegpt")
    assert [p.label for p in points] == [
        "mini solo c=1 prompt=sharegpt",
        "mini solo c=4 prompt=sharegpt",
    ]


def test_a_point_in_vllm_bench_serve_json(tri_tier: DeploymentPlan) -> None:
    samples = (sample(0, 100.0, 20.0, 11), sample(1, 300.0, 20.0, 11), sample(2, 0, 0, 2, ok=False))
    point = aggregate("mini", "solo", 2, 128, 11, samples, 2.0, slo=Slo(ttft_ms=200.0), rate=1.5)
    run = BenchRun(
        run_id="20250131-140502",
        deployment="qwen3",
        started_at="2025-01-31T14:05:02+00:00",
        finished_at="2025-01-31T14:06:02+00:00",
        options={},
        plan=tri_tier.to_dict(),
        inventory={},
        points=(point,),
    )
    doc = point_result(run, point, samples)
    assert doc["date"] == "20250131-140502" and doc["backend"] == "openai-chat"
    assert doc["model_id"] == tri_tier.service("mini").served_model_name
    assert doc["request_rate"] == 1.5 and doc["burstiness"] == 1.0 and doc["max_concurrency"] == 2
    assert (doc["completed"], doc["failed"], doc["num_prompts"]) == (2, 1, 3)
    assert doc["total_output_tokens"] == 22 and doc["total_input_tokens"] == 256
    assert doc["output_throughput"] == pytest.approx(11.0)
    assert doc["request_goodput"] == pytest.approx(0.5)  # one request within 200 ms TTFT in 2 s
    assert doc["median_ttft_ms"] == pytest.approx(200.0) and doc["std_ttft_ms"] == pytest.approx(
        100.0
    )
    assert doc["mean_tpot_ms"] == pytest.approx(20.0) and doc["p99_itl_ms"] == pytest.approx(20.0)
    assert doc["ttfts"][:2] == pytest.approx([0.1, 0.3]) and doc["itls"][0] == pytest.approx(
        [0.02] * 10
    )
    assert doc["output_lens"] == [11, 11, 0] and doc["errors"][2] == "HTTP 500"
    assert doc["max_concurrent_requests"] == 1  # the first ends at 0.3 s, the second starts at 0.5
    assert doc["max_output_tokens_per_s"] > 0
    json.dumps(doc)  # plain JSON
    assert file_name(point) == "mini-solo-c2-p128-r1.5.json"
    assert list(results(run, [PointRecord(point, samples)])) == ["mini-solo-c2-p128-r1.5.json"]

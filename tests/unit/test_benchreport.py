"""benchreport: a run's folder (JSON, CSV, Markdown, PNG), run ids and finding runs again."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from deployer.bench.run import BenchRun
from deployer.bench.samples import PointRecord, RequestSample, aggregate
from deployer.bench.storage import (
    bench_root,
    list_runs,
    load_run,
    new_run_id,
    resolve_run,
    run_ids,
    write_run,
)
from deployer.catalog import Catalog
from deployer.deployment import DeploymentDir
from deployer.errors import BenchError
from deployer.planner import DeploymentPlan
from tests.helpers import tri_tier_plan


@pytest.fixture(scope="module")
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    return tri_tier_plan(catalog, engine="stand-in")


def records(service: str, mode: str, rate: float) -> list[PointRecord]:
    out = []
    for c in (1, 2, 4):
        samples = tuple(
            RequestSample(
                i, True, None, 0.1 * i, 50.0, 50 + 9 * 1000 / rate, 64, 10, (1000 / rate,) * 9
            )
            for i in range(4)
        )
        duration = 4 / c * (50 + 9 * 1000 / rate) / 1000
        point = aggregate(service, mode, c, 64, 10, samples, duration)
        out.append(PointRecord(point, samples))
    return out


def make_run(run_id: str, p: DeploymentPlan, recs: list[PointRecord]) -> BenchRun:
    return BenchRun(
        run_id=run_id,
        deployment=p.deployment,
        started_at="2025-01-31T14:05:02+00:00",
        finished_at="2025-01-31T14:06:02+00:00",
        options={
            "concurrency": [1, 2, 4],
            "prompt_tokens": ["64"],
            "max_tokens": 10,
            "mixed": True,
        },
        plan=p.to_dict(),
        inventory={"source": "test", "gpus": [g.__dict__ for g in p.gpus]},
        points=tuple(r.point for r in recs),
        skipped=("micro: prompt max (99 tokens) + max_tokens 10 exceeds max_model_len 100",),
    )


def test_a_run_is_written_whole_and_reads_back(tmp_path: Path, tri_tier: DeploymentPlan) -> None:
    directory = DeploymentDir(tmp_path / "qwen3")
    recs = records("mini", "solo", 100) + records("micro", "solo", 200)
    recs += records("mini", "mixed", 70) + records("micro", "mixed", 150)
    run = make_run("20250131-140502", tri_tier, recs)
    path = write_run(directory, run, recs)
    assert path == tmp_path / "qwen3" / "bench" / "20250131-140502"
    assert sorted(p.name for p in path.iterdir()) == [
        "micro.png",
        "mini.png",
        "points.csv",
        "report.md",
        "requests.csv",
        "run.json",
    ]
    assert [p.name for p in bench_root(directory).iterdir()] == ["20250131-140502"]  # no staging
    assert load_run(directory, "latest").to_dict() == json.loads(json.dumps(run.to_dict()))
    data = json.loads((path / "run.json").read_text())
    assert data["plan"]["services"][1]["name"] == "mini" and data["inventory"]["gpus"]
    assert {(r["service"], r["concurrency"]) for r in data["interference"]} == {
        (s, c) for s in ("mini", "micro") for c in (1, 2, 4)
    }
    with (path / "points.csv").open() as handle:
        points = list(csv.DictReader(handle))
    assert len(points) == 12 and points[0]["ttft_ms_p50"] == "50.0"
    assert points[0]["decode_tps_p50"] == "100.0"
    with (path / "requests.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48 and rows[0]["itl_mean_ms"] == "10.0"
    report = (path / "report.md").read_text()
    for text in (
        "# Bench run `20250131-140502` of deployment `qwen3`",
        "## GPUs (test)",
        # 0.661 / 64,624 / 1.97x before memory model v2 (issue 11)
        "| mini | `Qwen/Qwen3-8B-AWQ` | 2 | 32,768 | 256 | 0.641 | 59,328 | 1.81x |",
        "![mini: throughput and latency by concurrency](mini.png)",
        "## Mixed load: tiers slowing each other",
        "- mini (shares a GPU with micro): from concurrency 1 (prompt 64) mixed load gives 78%",
        "- micro: prompt max (99 tokens)",
        "> Engine stand-in",
    ):
        assert text in report, text
    assert (path / "mini.png").read_bytes()[:4] == b"\x89PNG"


def test_run_ids_are_timestamps_made_unique(tmp_path: Path, tri_tier: DeploymentPlan) -> None:
    directory = DeploymentDir(tmp_path / "qwen3")
    now = datetime(2025, 1, 31, 14, 5, 2, tzinfo=timezone.utc)
    root = bench_root(directory)
    assert new_run_id(now, root) == "20250131-140502"
    recs: list[PointRecord] = []  # no points, no charts: fast
    for _ in range(3):
        write_run(directory, make_run(new_run_id(now, root), tri_tier, recs), recs)
    write_run(directory, make_run("20250131-090000", tri_tier, recs), recs)
    assert run_ids(directory) == [
        "20250131-090000",
        "20250131-140502",
        "20250131-140502-2",
        "20250131-140502-3",
    ]
    assert resolve_run(directory, "latest") == "20250131-140502-3"
    assert resolve_run(directory, "previous") == "20250131-140502-2"
    assert resolve_run(directory, "20250131-09") == "20250131-090000"
    with pytest.raises(BenchError, match="ambiguous"):
        resolve_run(directory, "20250131-1405")
    with pytest.raises(BenchError, match="no bench run 'nope'"):
        resolve_run(directory, "nope")
    (root / "20250131-090000" / "run.json").write_text("{broken")
    assert len(list_runs(directory)) == 3
    with pytest.raises(BenchError, match="already exists"):
        write_run(directory, make_run("20250131-140502", tri_tier, recs), recs)


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no bench runs in") as caught:
        resolve_run(DeploymentDir(tmp_path / "qwen3"), "latest")
    assert caught.value.hint == "run `qwen-deploy bench` first"

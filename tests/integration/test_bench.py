"""`bench` and `tune` through the real CLI against stand-ins with a fixed token rate and
first-token delay, over real HTTP: the expected figures are known in advance."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from deployer.bench.runner import SweepProgress
from deployer.bench.samples import Point
from deployer.catalog import Catalog
from deployer.cli import cmd_bench
from deployer.cli.main import cli
from deployer.deployment import ENV_FILE, PLAN_FILE, DeploymentDir, render_env
from deployer.planner import DeploymentPlan, ServicePlan
from deployer.profiles import PROFILES_DIR, load_profile
from deployer.spec import vllm_args
from tests.helpers import tri_tier_plan
from tests.helpers.standin import StartStandin

pytestmark = pytest.mark.integration

KEY = "test-key-bench-0123"
RATE = 100  # tokens per second
TTFT_MS = 50
SEQS = 2
# Answers long enough that max_tokens, not the stand-in's short reply, ends every request.
PACED = {
    "STANDIN_TOKENS_PER_SECOND": str(RATE),
    "STANDIN_TTFT_MS": str(TTFT_MS),
    "STANDIN_ANSWER_TOKENS": "1000",
}


@pytest.fixture(scope="module")
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    return tri_tier_plan(catalog, engine="stand-in")


def start(standin: StartStandin, service: ServicePlan, env: dict[str, str]) -> ServicePlan:
    """The planned service in a stand-in; the plan's port becomes the published one."""
    instance = standin(
        *vllm_args(service),
        env={"VLLM_API_KEY": KEY, **env},
        gpus=",".join(map(str, service.gpus)),
    )
    return replace(service, port=instance.port)


def deploy(home: Path, tri_tier: DeploymentPlan, services: list[ServicePlan]) -> DeploymentDir:
    """A deployment directory (plan.json and .env) for these running services."""
    one = replace(
        tri_tier, services=tuple(services), start_waves=(tuple(s.name for s in services),)
    )
    directory = DeploymentDir.named(home, one.deployment)
    directory.path.mkdir(parents=True)
    directory.file(PLAN_FILE).write_text(json.dumps(one.to_dict()))
    directory.file(ENV_FILE).write_text(render_env({s.api_key_env: KEY for s in services}))
    return directory


def invoke(home: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def points(data: dict[str, Any]) -> dict[tuple[str, str, int], Point]:
    return {(p["service"], p["mode"], p["concurrency"]): Point.from_dict(p) for p in data["points"]}


def test_sweep_compare_and_tune_against_a_paced_standin(
    tmp_path: Path,
    standin: StartStandin,
    tri_tier: DeploymentPlan,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    micro = start(standin, replace(tri_tier.service("micro"), max_num_seqs=SEQS), PACED)
    directory = deploy(tmp_path, tri_tier, [micro])
    sweep = ["-p", "64", "--max-tokens", "20", "--requests-per-point", "8"]

    result = invoke(tmp_path, "bench", "MICRO", "-c", "1,2,4", *sweep, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["kind"] == "bench-run"
    measured = points(data)
    assert set(measured) == {("micro", "solo", c) for c in (1, 2, 4)}
    one, two, four = (measured["micro", "solo", c] for c in (1, 2, 4))
    for p in (one, two, four):
        assert (p.requests, p.ok, p.errors) == (8, 8, 0)
        assert p.prompt_tokens == 64  # stand-in tokens: 57 words + 7 for the chat template
        assert p.completion_tokens == 20
    # Alone: the configured first-token delay and token rate.
    assert one.ttft_ms.p50 is not None and TTFT_MS * 0.8 <= one.ttft_ms.p50 <= TTFT_MS + 60
    assert one.decode_tps.p50 is not None and RATE * 0.8 <= one.decode_tps.p50 <= RATE * 1.1
    assert one.itl_ms.p50 is not None and 8 <= one.itl_ms.p50 <= 13
    # Two slots: twice the throughput at 2; at 4 the extra requests queue, latency doubles.
    assert two.throughput_tps > 1.6 * one.throughput_tps
    assert four.throughput_tps < 1.25 * two.throughput_tps
    assert one.e2e_ms.p50 is not None and four.e2e_ms.p50 is not None
    assert 1.5 <= four.e2e_ms.p50 / one.e2e_ms.p50 <= 2.6
    assert four.ttft_ms.p95 is not None and four.ttft_ms.p95 > 3 * TTFT_MS
    assert four.running_peak == SEQS and (four.waiting_peak or 0) >= 1
    assert data["plan"]["services"][0]["max_num_seqs"] == SEQS
    assert data["inventory"]["gpus"] and "3x-rtx4090" in data["inventory"]["source"]
    assert KEY not in result.output

    run_dir = Path(data["run_dir"])
    assert run_dir.parent == directory.path / "bench"
    names = {"run.json", "points.csv", "requests.csv", "report.md", "micro.png"}
    assert names <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "micro.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["plan"]["services"][0]["name"] == "micro" and saved["inventory"]["gpus"]
    with (run_dir / "requests.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and all(r["ok"] == "True" for r in rows)
    report = (run_dir / "report.md").read_text()
    assert "## micro" in report and "![micro" in report and "stand-in" in report

    # A second, smaller run; compare prints the differences of the common points.
    result = invoke(tmp_path, "bench", "micro", "-c", "1,2", *sweep)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[:4] == ["SERVICE", "MODE", "CONC", "PROMPT"]
    result = invoke(tmp_path, "bench", "compare", "previous", "latest")
    assert result.exit_code == 0, result.output
    assert "same plan and GPUs" in result.output
    rows_out = [line.split() for line in result.output.splitlines()]
    assert ["micro", "solo", "1", "64"] in [r[:4] for r in rows_out]
    assert "only in A: micro solo c=4 prompt=64" in result.output
    assert "->" in result.output and "%" in result.output
    listing = invoke(tmp_path, "bench", "list", "--json")
    assert len(json.loads(listing.output)["runs"]) == 2

    # tune reads the first run (the latest one measured only up to 2): name it.
    first = data["run_id"]
    result = invoke(tmp_path, "tune", "micro", "--run", first, "--json")
    assert result.exit_code == 0, result.output
    tuned = {s["setting"]: s for s in json.loads(result.output)["suggestions"]}
    seqs = tuned["max_num_seqs"]
    assert (seqs["current"], seqs["suggested"], seqs["changed"]) == (SEQS, 4, True)
    assert "levels off at max_num_seqs 2" in seqs["reason"]
    assert f"{round(two.throughput_tps)}" in seqs["reason"].replace(",", "")
    # the plan's KV capacity (36,864 tokens and 2.25x before memory model v2, issue 11)
    assert "35,872 tokens" in seqs["reason"]
    assert (
        tuned["context"]["changed"] is False and "2.19 full-context" in tuned["context"]["reason"]
    )
    assert set(tuned) == {"max_num_seqs", "context", "gpu_memory_utilization"}

    profile = tmp_path / "tri-tier.yaml"
    profile.write_text((PROFILES_DIR / "tri-tier.yaml").read_text())
    result = invoke(tmp_path, "tune", "micro", "--run", first, "--write-profile", str(profile))
    assert result.exit_code == 0, result.output
    assert "max_num_seqs" in result.output and "wrote" in result.output
    edited = load_profile(str(profile)).service("micro")
    assert edited.max_num_seqs == 4
    assert load_profile(str(profile)).service("mini").max_num_seqs is None
    assert (tmp_path / "tri-tier.yaml.bak").read_text() == (
        PROFILES_DIR / "tri-tier.yaml"
    ).read_text()

    # Ctrl-C during the second point: the first is saved, exit 130 names the run directory.
    def interrupt_in_point_two() -> tuple[Callable[[SweepProgress], None], Callable[[], None]]:
        def show(p: SweepProgress) -> None:
            if p.number == 2 and p.done >= 1:
                raise KeyboardInterrupt

        return show, lambda: None

    monkeypatch.setattr(cmd_bench, "_progress_printer", interrupt_in_point_two)
    result = invoke(tmp_path, "bench", "micro", "-c", "1,2,4", *sweep)
    assert result.exit_code == 130, result.output
    assert "interrupted during micro solo c=2 prompt=64" in result.output
    latest = json.loads(invoke(tmp_path, "bench", "list", "--json").output)["runs"][-1]
    assert latest["points"] == 1 and latest["interrupted"]
    assert str(directory.path / "bench" / latest["run_id"]) in result.output


def test_mixed_load_runs_the_tiers_at_once(
    tmp_path: Path, standin: StartStandin, tri_tier: DeploymentPlan
) -> None:
    fast = {**PACED, "STANDIN_TOKENS_PER_SECOND": "400", "STANDIN_TTFT_MS": "10"}
    services = [start(standin, tri_tier.service(n), fast) for n in ("mini", "micro")]
    deploy(tmp_path, tri_tier, services)
    result = invoke(
        tmp_path,
        "bench",
        "--mixed",
        "-c",
        "1,2",
        "-p",
        "32",
        "--max-tokens",
        "8",
        "--requests-per-point",
        "4",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(points(data)) == {
        (s, mode, c) for s in ("mini", "micro") for mode in ("solo", "mixed") for c in (1, 2)
    }
    rows = data["interference"]
    assert {(r["service"], r["concurrency"]) for r in rows} == {
        (s, c) for s in ("mini", "micro") for c in (1, 2)
    }
    assert all(r["shares_gpu_with"] for r in rows)  # both live on GPU 2
    run_dir = Path(data["run_dir"])
    report = (run_dir / "report.md").read_text()
    assert "## Mixed load" in report and "shares a GPU with micro" in report
    assert {"mini.png", "micro.png"} <= {p.name for p in run_dir.iterdir()}


def test_request_rate_goodput_sharegpt_and_vllm_json_against_a_paced_standin(
    tmp_path: Path, standin: StartStandin, tri_tier: DeploymentPlan
) -> None:
    """Open-loop arrivals, an SLO, ShareGPT prompts and vLLM's JSON, with known figures: the
    stand-in spaces tokens 10 ms apart, so TPOT and ITL are 10 ms and every SLO of 500 ms TTFT
    and 50 ms TPOT is met, one of 1 ms TTFT never."""
    micro = start(standin, tri_tier.service("micro"), PACED)
    deploy(tmp_path, tri_tier, [micro])
    common = ("-p", "32", "--max-tokens", "8", "--requests-per-point", "8", "--json")
    result = invoke(
        tmp_path,
        "bench",
        "micro",
        "--request-rate",
        "20",
        "--max-concurrency",
        "4",
        "--slo",
        "ttft=500ms,tpot=50ms",
        *common,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (point,) = [Point.from_dict(p) for p in data["points"]]
    assert point.rate == 20 and point.concurrency == 4 and point.ok == 8
    assert point.label == "micro solo c=4 prompt=32 rate=20/s"
    assert point.duration_s >= 0.9 * 8 / 20  # 8 arrivals at 20/s span 0.4 s
    assert point.completion_tokens == 8  # ignore_eos: exactly max_tokens
    assert point.tpot_ms.p50 is not None and 8.0 <= point.tpot_ms.p50 <= 14.0
    assert point.slo_met == 1.0 and point.goodput_rps == pytest.approx(point.request_rate, 0.01)
    assert data["options"]["slo"] == {"ttft_ms": 500.0, "tpot_ms": 50.0}
    run_dir = Path(data["run_dir"])
    (vllm_file,) = (run_dir / "vllm").iterdir()
    doc = json.loads(vllm_file.read_text())
    assert doc["request_rate"] == 20 and doc["max_concurrency"] == 4 and doc["completed"] == 8
    assert doc["output_lens"] == [8] * 8
    assert 8.0 <= doc["median_itl_ms"] <= 14.0 and 8.0 <= doc["median_tpot_ms"] <= 14.0
    assert doc["median_ttft_ms"] == pytest.approx(point.ttft_ms.p50, abs=0.05)
    assert "## Goodput" in (run_dir / "report.md").read_text()

    strict = invoke(tmp_path, "bench", "micro", "-c", "1,2", "--slo", "ttft=1ms", *common[:-1])
    assert strict.exit_code == 0, strict.output
    assert "misses the SLO already at 1 concurrent requests (0% of requests met it" in strict.output

    conversations = [
        {
            "conversations": [
                {"from": "human", "value": f"question {i} " * (3 + i)},
                {"from": "gpt", "value": "a"},
            ]
        }
        for i in range(3)
    ]
    dataset = tmp_path / "sharegpt.json"
    dataset.write_text(json.dumps(conversations))
    result = invoke(tmp_path, "bench", "micro", "-c", "2", "--dataset", str(dataset), *common)
    assert result.exit_code == 0, result.output
    (point,) = [Point.from_dict(p) for p in json.loads(result.output)["points"]]
    assert point.dataset == "sharegpt" and point.label == "micro solo c=2 prompt=sharegpt"
    assert point.ok == 8 and point.prompt_tokens is not None and point.prompt_tokens > 7

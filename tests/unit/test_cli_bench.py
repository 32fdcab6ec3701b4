"""`bench` and `tune` through the real entry point, on saved runs (no servers): routing, help,
errors with their exit codes, compare, list, tune and --write-profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from deployer.bench.run import BenchRun
from deployer.bench.samples import PointRecord, RequestSample, aggregate
from deployer.bench.storage import write_run
from deployer.catalog import Catalog
from deployer.cli.main import cli
from deployer.deployment import ENV_FILE, PLAN_FILE, DeploymentDir, render_env
from deployer.errors import ExitCode
from deployer.planner import DeploymentPlan
from deployer.profiles import PROFILES_DIR, load_profile_file
from tests.helpers import tri_tier_plan


def invoke(home: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


@pytest.fixture
def deployed(tmp_path: Path, catalog: Catalog) -> tuple[DeploymentDir, DeploymentPlan]:
    tri = tri_tier_plan(catalog)
    directory = DeploymentDir.named(tmp_path, "qwen3")
    directory.path.mkdir(parents=True)
    directory.file(PLAN_FILE).write_text(json.dumps(tri.to_dict()))
    directory.file(ENV_FILE).write_text(render_env({s.api_key_env: "k" * 12 for s in tri.services}))
    return directory, tri


def save(directory: DeploymentDir, tri: DeploymentPlan, run_id: str, tps: dict[int, float]) -> None:
    """A run of mini alone: 10 output tokens per request, `tps[c]` tokens/s at concurrency c."""
    records = []
    for c, rate in tps.items():
        samples = tuple(
            RequestSample(i, True, None, 0.0, 50.0, 140.0, 1024, 10, (10.0,) * 9) for i in range(8)
        )
        point = aggregate("mini", "solo", c, 1024, 10, samples, 80 / rate)
        records.append(PointRecord(point, samples))
    run = BenchRun(
        run_id=run_id,
        deployment="qwen3",
        started_at="2025-01-31T14:05:02+00:00",
        finished_at="2025-01-31T14:06:02+00:00",
        options={"concurrency": list(tps)},
        plan=tri.to_dict(),
        inventory={"source": "test", "gpus": [g.__dict__ for g in tri.gpus]},
        points=tuple(r.point for r in records),
    )
    write_run(directory, run, records)


def test_every_bench_command_has_help_with_an_example(tmp_path: Path) -> None:
    for args in (["bench"], ["bench", "run"], ["bench", "compare"], ["bench", "list"], ["tune"]):
        result = invoke(tmp_path, *args, "--help")
        assert result.exit_code == 0, result.output
        assert "Example: qwen-deploy " in result.output, args
    assert "run      Sweep" in invoke(tmp_path, "bench", "-h").output


def test_bench_without_a_subcommand_runs_the_sweep(tmp_path: Path) -> None:
    result = invoke(tmp_path, "bench", "mini", "-c", "1,2")
    assert result.exit_code == ExitCode.STATE  # it tried to run: no deployment here
    assert "no deployment 'qwen3'" in result.output
    result = invoke(tmp_path, "bench", "-c", "0")
    assert result.exit_code == ExitCode.USAGE
    assert "'0' is not a positive integer" in result.output
    result = invoke(tmp_path, "bench", "-p", "lots")
    assert result.exit_code == ExitCode.USAGE and "--prompt-tokens" in result.output


def test_bench_refuses_unknown_services_and_missing_keys(
    tmp_path: Path, deployed: tuple[DeploymentDir, DeploymentPlan]
) -> None:
    directory, _ = deployed
    result = invoke(tmp_path, "bench", "nano")
    assert result.exit_code == ExitCode.PROFILE and "no service 'nano'" in result.output
    directory.file(ENV_FILE).write_text(render_env({}))
    result = invoke(tmp_path, "bench", "MINI")
    assert result.exit_code == ExitCode.STATE
    assert (
        "no API key for mini in the deployment's .env (QWEN_DEPLOY_API_KEY_MINI)" in result.output
    )
    directory.file(ENV_FILE).write_text(render_env({"QWEN_DEPLOY_API_KEY_MICRO": "k" * 12}))
    result = invoke(tmp_path, "bench", "micro", "-p", "20000")
    assert result.exit_code == ExitCode.STATE
    assert (
        "nothing to measure: micro: prompt 20000 (20000 tokens) + max_tokens 128" in result.output
    )


def test_list_compare_and_tune_read_saved_runs(
    tmp_path: Path, deployed: tuple[DeploymentDir, DeploymentPlan]
) -> None:
    directory, tri = deployed
    assert "no bench runs in" in invoke(tmp_path, "bench", "list").output
    result = invoke(tmp_path, "bench", "compare")
    assert result.exit_code == ExitCode.STATE and "no bench runs in" in result.output
    result = invoke(tmp_path, "tune", "mini")
    assert result.exit_code == ExitCode.STATE
    assert "no bench run has measured mini (run `qwen-deploy bench mini` first)" in result.output

    save(directory, tri, "20250131-140502", {1: 100, 2: 190, 4: 200, 8: 205})
    save(directory, tri, "20250131-150000", {1: 100, 2: 200, 4: 300})
    listing = invoke(tmp_path, "bench", "list").output.splitlines()
    assert listing[0].split() == ["RUN", "STARTED", "ENGINE", "SERVICES", "POINTS", "MIXED", "NOTE"]
    assert listing[1].split()[:5] == [
        "20250131-140502",
        "2025-01-31T14:05:02+00:00",
        "vllm",
        "mini",
        "4",
    ]

    result = invoke(tmp_path, "bench", "compare", "20250131-14", "latest")
    assert result.exit_code == 0, result.output
    rows = {tuple(line.split()[:4]): line for line in result.output.splitlines()}
    assert "200 -> 300 (+50%)" in rows["mini", "solo", "4", "1024"]
    assert "190 -> 200 (+5%)" in rows["mini", "solo", "2", "1024"]
    assert "only in A: mini solo c=8 prompt=1024" in result.output
    data = json.loads(invoke(tmp_path, "bench", "compare", "previous", "latest", "--json").output)
    assert data["kind"] == "bench-compare" and len(data["points"]) == 3

    # The first run levels off at 2-4 well below max_num_seqs 256: the knee is suggested.
    result = invoke(tmp_path, "tune", "mini", "--run", "previous", "--json")
    assert result.exit_code == 0, result.output
    tuned = {s["setting"]: s for s in json.loads(result.output)["suggestions"]}
    assert tuned["max_num_seqs"]["suggested"] == 2
    assert "93% of the best (205 tok/s) is reached at 2" in tuned["max_num_seqs"]["reason"]
    # 59,328 KV tokens / 2 in 256-token steps (32256 before memory model v2, issue 11)
    assert tuned["context"]["suggested"] == 29440
    text = invoke(tmp_path, "tune", "mini", "--run", "previous").output
    assert text.splitlines()[0].split() == ["SETTING", "CURRENT", "SUGGESTED"]
    assert "max_num_seqs: output tok/s by concurrency at prompt 1024" in text

    profile = tmp_path / "tri-tier.yaml"
    profile.write_text((PROFILES_DIR / "tri-tier.yaml").read_text())
    result = invoke(tmp_path, "tune", "mini", "--run", "previous", "--write-profile", str(profile))
    assert result.exit_code == 0, result.output
    assert f"wrote {profile}: services.mini.max_num_seqs: 2, services.mini.context: 29,440" in (
        result.output.replace("\n", " ")
    )
    mini = load_profile_file(profile).service("mini")
    assert (mini.max_num_seqs, mini.context) == (2, 29440)
    result = invoke(tmp_path, "tune", "medium", "--write-profile", str(tmp_path / "none.yaml"))
    assert result.exit_code == ExitCode.USAGE  # the file must exist

"""Reading vLLM's start-up figures from its log and setting them beside the plan."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from deployer.catalog import Catalog
from deployer.planner import plan
from deployer.profiles import load_profile
from deployer.startup_check import (
    STATE_KEY,
    StartupComparison,
    StartupFigures,
    check_plan,
    compare,
    expected_lines,
    parse_startup_log,
    predicted,
    recorded_figures,
)
from tests.helpers import GPU_FILES, inventory

# Verbatim from a public vLLM log (TP 4; see tests/fixtures/vllm_startups.json, case 23).
TP4_LOG = """\
(Worker_TP0_EP0 pid=2077) INFO 09-24 20:52:10 [gpu_model_runner.py:2338] Model loading took 27.71 GiB and 61.2 seconds
(Worker_TP3_EP3 pid=2081) INFO 09-24 20:52:11 [gpu_model_runner.py:2338] Model loading took 27.72 GiB and 62.0 seconds
(Worker_TP0_EP0 pid=2077) INFO 09-24 20:53:41 [gpu_worker.py:298] Available KV cache memory: 10.70 GiB
(Worker_TP3_EP3 pid=2081) INFO 09-24 20:53:41 [gpu_worker.py:298] Available KV cache memory: 10.65 GiB
(EngineCore_DP0 pid=1944) INFO 09-24 20:53:41 [kv_cache_utils.py:864] GPU KV cache size: 238,208 tokens
(EngineCore_DP0 pid=1944) INFO 09-24 20:53:41 [kv_cache_utils.py:868] Maximum concurrency for 32,768 tokens per request: 7.27x
"""


def test_parses_vllms_lines_across_workers() -> None:
    figures = parse_startup_log(TP4_LOG)
    # The largest load, the smallest KV memory (vLLM cuts every rank to it).
    assert figures == StartupFigures(27.72, 10.65, 238208, 7.27)
    assert figures.complete


def test_parses_0_33s_one_line_capacity_and_a_partial_log() -> None:
    text = (
        "INFO [model_runner.py:431] Model loading took 5.68 GiB memory and 3.1 seconds\n"
        "INFO [kv_cache_utils.py:1150] GPU KV cache size: 59,328 tokens, Maximum concurrency "
        "for 32,768 tokens per request: 1.81x\n"
    )
    figures = parse_startup_log(text)
    assert figures.model_loading_gib == 5.68 and figures.kv_cache_tokens == 59328
    assert figures.max_concurrency == 1.81
    assert figures.available_kv_cache_gib is None and not figures.complete
    assert parse_startup_log("nothing here") == StartupFigures()


def test_the_lines_plan_prints_read_back_as_the_prediction(catalog: Catalog) -> None:
    result = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    for service in result.services:
        figures = parse_startup_log("\n".join(expected_lines(service)))
        assert figures == predicted(service)
        comparison = compare(service, figures)
        assert [f.diff_percent for f in comparison.figures] == [0.0, 0.0, 0.0]
        assert comparison.warnings == ()


def test_a_difference_past_5_percent_warns(catalog: Catalog) -> None:
    mini = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog).service("mini")
    planned = predicted(mini)
    assert planned.kv_cache_tokens is not None and planned.available_kv_cache_gib is not None
    actual = replace(
        planned,
        kv_cache_tokens=int(planned.kv_cache_tokens * 0.9),
        available_kv_cache_gib=round(planned.available_kv_cache_gib * 1.04, 2),
    )
    comparison = compare(mini, actual)
    by_name = {f.figure: f for f in comparison.figures}
    assert by_name["kv_cache_tokens"].diff_percent == -10.0 and by_name["kv_cache_tokens"].warn
    assert not by_name["available_kv_cache_gib"].warn  # 4 % is within the 5 %
    assert len(comparison.warnings) == 1
    assert "mini: kv_cache_tokens planned 59,328 tokens, vLLM printed" in comparison.warnings[0]
    assert "(-10.0%, more than 5%)" in comparison.warnings[0]
    # JSON both ways.
    back = StartupComparison.from_dict(json.loads(json.dumps(comparison.to_dict())))
    assert back == comparison
    assert comparison.to_dict()["figures"][2]["warn"] is True


def test_missing_figures_do_not_warn(catalog: Catalog) -> None:
    micro = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog).service("micro")
    comparison = compare(micro, StartupFigures(model_loading_gib=1.86))
    assert [f.actual for f in comparison.figures] == [1.86, None, None]
    assert comparison.figures[1].diff_percent is None and comparison.warnings == ()


def test_recorded_state_is_read_defensively(catalog: Catalog) -> None:
    result = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    state = {
        STATE_KEY: {
            "mini": StartupFigures(5.7, 8.0, 58000, 1.77).to_dict(),
            "micro": "garbage",
            "gone": StartupFigures(1.0, 1.0, 1, 1.0).to_dict(),
        }
    }
    recorded = recorded_figures(state)
    assert set(recorded) == {"mini", "gone"}
    assert recorded_figures({}) == {} and recorded_figures({STATE_KEY: [1]}) == {}
    checks = check_plan(result.services, recorded)
    assert [c.service for c in checks] == ["mini"]
    assert StartupFigures.from_dict({"kv_cache_tokens": True}).kv_cache_tokens is None


def test_plan_prints_the_lines_and_check_compares_what_was_recorded(
    tmp_path: Path, catalog: Catalog
) -> None:
    from click.testing import CliRunner

    from deployer.cli.main import cli
    from deployer.deployment import DeploymentDir

    box = str(GPU_FILES / "3x-rtx4090.json")
    args = ["--home", str(tmp_path), "-d", "sc", "plan", "-p", "tri-tier", "--gpus-file", box]
    shown = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    mini = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog).service("mini")
    for line in expected_lines(mini):
        assert f"  mini: {line}" in shown.output
    empty = CliRunner().invoke(cli, [*args, "--check"], catch_exceptions=False)
    assert "no start-up figures recorded for deployment 'sc' yet" in empty.output
    directory = DeploymentDir(tmp_path / "sc")
    low = replace(predicted(mini), kv_cache_tokens=50000)  # -15.7 %
    directory.save_state({STATE_KEY: {"mini": low.to_dict()}})
    checked = CliRunner().invoke(cli, [*args, "--check"], catch_exceptions=False)
    assert checked.exit_code == 0, checked.output
    assert "SERVICE  FIGURE" in checked.output and "-15.7%" in checked.output
    assert "warning: mini: kv_cache_tokens planned 59,328 tokens, vLLM printed 50,000" in (
        checked.output
    )
    data = CliRunner().invoke(cli, [*args, "--check", "--json"], catch_exceptions=False).output
    check = json.loads(data)["startup_check"]
    assert [c["service"] for c in check] == ["mini"] and check[0]["figures"][2]["warn"] is True

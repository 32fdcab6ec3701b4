"""`qwen-deploy bench` agrees with vLLM's own `vllm bench serve` (from the CPU build) on the same
stand-in service under the same load: 128-token prompts, 64 output tokens with ignore_eos, 64
requests, 4 at a time. TTFT p50, TPOT p50, ITL p50 and output throughput agree within 10 %, and
both see exactly max_tokens tokens per request.

The stand-in is paced (10 ms a token, 40 ms to the first) and its prefill does not depend on
the prompt's length, because the two tools build their 128-token prompts with different
tokenizers (vLLM's random dataset with the tiny local Qwen3 one; ours one word a token)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from deployer.cli.main import cli
from deployer.deployment import ENV_FILE, PLAN_FILE, DeploymentDir, render_env
from deployer.plan import DeploymentPlan
from deployer.spec import vllm_args
from tests.helpers import tri_tier_plan
from tests.vllm.test_real_vllm_server import (
    LAUNCHER,
    Server,
    _free_port,
    _replace,
    _start,
    _stop,
)

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key-bench-agreement"
PROMPT, OUTPUT, REQUESTS, CONCURRENCY = 128, 64, 64, 4
PACE = {
    "STANDIN_TOKENS_PER_SECOND": "100",
    "STANDIN_TTFT_MS": "40",
    "STANDIN_PREFILL_TOKENS_PER_SECOND": "0",
    "STANDIN_ANSWER_TOKENS": "1000",
    "STANDIN_LOAD_SECONDS": "0",
}
TOLERANCE = 0.10
# `vllm bench serve` rather than `vllm serve` (see LAUNCHER).
BENCH_LAUNCHER = LAUNCHER.replace('["vllm", "serve", *sys.argv[1:]]', '["vllm", *sys.argv[1:]]')


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, DeploymentPlan]]:
    pytest.importorskip("vllm.benchmarks.serve", reason="needs vLLM: scripts/vllm-check.sh")
    work = tmp_path_factory.mktemp("bench-agreement")
    tri_tier = tri_tier_plan(engine="stand-in")
    port = _free_port()
    micro = replace(tri_tier.service("micro"), port=port, bind="127.0.0.1")
    args = _replace(_replace(list(vllm_args(micro)), "--port", str(port)), "--host", "127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "STANDIN_"))}
    env |= {"VLLM_API_KEY": KEY, "STANDIN_LEDGER_DIR": str(work / "ledger"), **PACE}
    standin = ROOT / "deployer" / "standin" / "server.py"
    server = _start(
        "stand-in", [sys.executable, str(standin), "serve", *args], env, port, work / "standin.log"
    )
    one = replace(tri_tier, services=(micro,), start_waves=(("micro",),))
    try:
        yield server, one
    finally:
        _stop(server)


def _vllm_bench(server: Server, model: str, work: Path) -> dict[str, Any]:
    import subprocess

    from tests.vllm.tiny_qwen3 import build_tokenizer

    tokenizer = work / "tokenizer"
    tokenizer.mkdir()
    build_tokenizer(tokenizer)
    (work / "bench_launch.py").write_text(BENCH_LAUNCHER)
    cmd = [
        sys.executable,
        str(work / "bench_launch.py"),
        "bench",
        "serve",
        "--backend",
        "openai-chat",
        "--base-url",
        server.url,
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        model,
        "--tokenizer",
        str(tokenizer),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(PROMPT),
        "--random-output-len",
        str(OUTPUT),
        "--num-prompts",
        str(REQUESTS),
        "--max-concurrency",
        str(CONCURRENCY),
        "--ignore-eos",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--save-detailed",
        "--result-dir",
        str(work),
        "--result-filename",
        "vllm-bench.json",
        "--disable-tqdm",
    ]
    env = {**os.environ, "OPENAI_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads((work / "vllm-bench.json").read_text()))


def _qwen_deploy_bench(home: Path, deployment: DeploymentPlan) -> dict[str, Any]:
    directory = DeploymentDir.named(home, deployment.deployment)
    directory.path.mkdir(parents=True)
    directory.file(PLAN_FILE).write_text(json.dumps(deployment.to_dict()))
    service = deployment.services[0]
    directory.file(ENV_FILE).write_text(render_env({service.api_key_env: KEY}))
    result = CliRunner().invoke(
        cli,
        [
            "--home",
            str(home),
            "bench",
            service.name,
            "-c",
            str(CONCURRENCY),
            "-p",
            str(PROMPT),
            "--max-tokens",
            str(OUTPUT),
            "--requests-per-point",
            str(REQUESTS),
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    (point,) = json.loads(result.output)["points"]
    return dict(point)


def _agree(name: str, ours: float | None, theirs: float) -> None:
    assert ours is not None, f"{name}: qwen-deploy measured nothing"
    assert abs(ours - theirs) <= TOLERANCE * max(abs(ours), abs(theirs)), (
        f"{name}: qwen-deploy {ours:.2f} vs vllm bench serve {theirs:.2f}"
    )


def test_bench_agrees_with_vllm_bench_serve_on_the_same_standin(
    paced: tuple[Server, DeploymentPlan], tmp_path: Path
) -> None:
    server, deployment = paced
    model = deployment.services[0].served_model_name
    theirs = _vllm_bench(server, model, tmp_path)
    ours = _qwen_deploy_bench(tmp_path / "home", deployment)
    assert theirs["completed"] == REQUESTS and theirs["failed"] == 0
    assert ours["ok"] == REQUESTS and ours["errors"] == 0
    assert theirs["output_lens"] == [OUTPUT] * REQUESTS  # ignore_eos: exactly max_tokens
    assert ours["completion_tokens"] == OUTPUT
    _agree("TTFT p50 (ms)", ours["ttft_ms"]["p50"], theirs["median_ttft_ms"])
    _agree("TPOT p50 (ms)", ours["tpot_ms"]["p50"], theirs["median_tpot_ms"])
    _agree("ITL p50 (ms)", ours["itl_ms"]["p50"], theirs["median_itl_ms"])
    _agree("output tok/s", ours["throughput_tps"], theirs["output_throughput"])

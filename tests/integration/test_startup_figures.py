"""Planned against actual (issue 11) on the real engine: once each service is ready, `up`
records the figures its container printed at start-up ("Model loading took", "Available KV
cache memory", "GPU KV cache size") beside the plan's prediction, and `status` shows the
difference and warns past 5 %. The stand-in prints the same lines vLLM does."""

from __future__ import annotations

import json
import re
import stat
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.helpers.deployments import Deployment

pytestmark = pytest.mark.integration

_KV_MEMORY = re.compile(r"Available KV cache memory: ([0-9.]+) GiB")
_KV_TOKENS = re.compile(r"GPU KV cache size: ([0-9,]+) tokens")


def test_up_records_what_each_container_printed_and_status_compares(
    deployment: Deployment,
) -> None:
    # micro's stand-in counts 3 GiB more overhead than the plan: its KV cache comes out smaller.
    deployment.write_profile(micro={"environment": {"STANDIN_OVERHEAD_GIB": "3"}})
    up = deployment.up("--no-verify")
    assert up.exit_code == 0, up.output
    state_file = deployment.home / deployment.name / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    state = json.loads(state_file.read_text())
    assert set(state["startup_figures"]) == {"medium", "mini", "micro"}
    for name, container in deployment.containers().items():
        log = container.logs().decode()
        printed = state["startup_figures"][name]
        assert printed["available_kv_cache_gib"] == float(_KV_MEMORY.findall(log)[-1])
        assert printed["kv_cache_tokens"] == int(_KV_TOKENS.findall(log)[-1].replace(",", ""))
        beside = {f["figure"]: f for f in state["startup_vs_plan"][name]["figures"]}
        assert beside["kv_cache_tokens"]["actual"] == printed["kv_cache_tokens"]
        assert beside["kv_cache_tokens"]["predicted"] > 0
    micro = {f["figure"]: f for f in state["startup_vs_plan"]["micro"]["figures"]}
    assert micro["available_kv_cache_gib"]["diff_percent"] < -5
    assert micro["available_kv_cache_gib"]["warn"] is True

    status = deployment.cli("status")
    assert status.exit_code == 0, status.output
    assert "AT START-UP" in status.stdout and "VLLM PRINTED" in status.stdout
    [row] = [
        line
        for line in status.stdout.splitlines()
        if line.startswith("micro") and "KV cache memory" in line
    ]
    assert f"{micro['available_kv_cache_gib']['diff_percent']:+.1f}%" in row
    assert "warning: micro: available_kv_cache_gib planned" in status.stderr
    data = json.loads(deployment.cli("status", "--json").stdout)
    assert {c["service"] for c in data["startup"]} == {"medium", "mini", "micro"}

    # A second `up` keeps every container: the recorded figures stay as they were.
    again = deployment.up("--no-verify")
    assert again.exit_code == 0, again.output
    assert json.loads(state_file.read_text())["startup_figures"] == state["startup_figures"]

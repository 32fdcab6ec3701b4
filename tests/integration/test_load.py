"""Tri-tier under a bounded load through the stand-in (loopback only): 12 streaming clients for
15 s while `status` and `verify` run beside them. Checks correctness, not speed: every request
sent is either served or an error its client saw, the engines counted exactly the served ones
(plus verify's own), and `status` and `verify` kept answering. The numbers are printed
(`pytest -s`); benchmarks/load_tri_tier.py runs the same load on a deployment of its own."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers.deployments import KEYS, Deployment

pytestmark = pytest.mark.integration

CLIENTS = 12
SECONDS = 15.0
VERIFY_REQUESTS = 3  # verify's chat, stream and thinking checks complete one request each


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "load_tri_tier.py"
    spec = importlib.util.spec_from_file_location("load_tri_tier", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_tri_tier_under_load_loses_no_request_and_keeps_answering(
    deployment: Deployment,
) -> None:
    bench = _bench()
    up = deployment.up("--no-verify")
    assert up.exit_code == 0, up.output
    plan = json.loads((deployment.home / deployment.name / "plan.json").read_text())
    targets = [
        bench.Target(
            s["name"], f"http://127.0.0.1:{s['port']}", KEYS[s["name"]], s["served_model_name"]
        )
        for s in plan["services"]
    ]
    before = {t.service: bench.completed_requests(t.base_url) for t in targets}
    checks: list[tuple[str, int, float, str]] = []

    def beside(stop: threading.Event) -> None:
        while not stop.is_set():
            for command in (("status", "--json"), ("verify",)):
                start = time.perf_counter()
                result = deployment.cli(*command)
                checks.append(
                    (command[0], result.exit_code, time.perf_counter() - start, result.output)
                )
            stop.wait(1)

    report: Any = bench.run_load(targets, CLIENTS, SECONDS, beside)
    print("\n" + bench.format_report(report))

    # status and verify answered, and right, all along.
    for name in ("status", "verify"):
        runs = [c for c in checks if c[0] == name]
        assert len(runs) >= 2, checks
        for _, code, took, output in runs:
            assert code == 0, output
            assert took < 60
    for _, _, _, output in (c for c in checks if c[0] == "status"):
        rows = json.loads(output)["services"]
        assert {r["state"] for r in rows} == {"running"}
    verify_runs = sum(1 for c in checks if c[0] == "verify")

    # No request lost: each one sent was served or failed where its client saw it ...
    for target in targets:
        tally = report.tallies[target.service]
        assert tally.served > 0
        assert report.sent[target.service] == tally.served + tally.error_count
    assert report.errors == 0, bench.format_report(report)
    # ... and the engines completed exactly the served ones, and verify's.
    for target in targets:
        expected = report.tallies[target.service].served + VERIFY_REQUESTS * verify_runs
        deadline = time.monotonic() + 10
        counted = bench.completed_requests(target.base_url) - before[target.service]
        while counted != expected and time.monotonic() < deadline:
            time.sleep(0.5)  # the last counters move just after the last byte was sent
            counted = bench.completed_requests(target.base_url) - before[target.service]
        assert counted == expected, (target.service, counted, expected)
    assert report.latency(95) is not None

"""Time-to-ready of tri-tier with the vLLM stand-in: the real `apply` (services on disjoint GPUs
in parallel, GPU neighbours one after another) against a baseline measured in the same run that
starts every service strictly one after another. Also computes the critical path (the slowest
chain of dependent starts) from the per-service times `apply` measured, and prints
measured/critical-path (how close to the best this order allows) and sequential/measured (what
the parallel start saves).

Run: make bench (needs the Docker engine and the stand-in image: `make images`).
Options: --load-seconds S (stand-in load time, default 3), --repeat N (default 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from deployer import runtime
from deployer.catalog import load_catalog
from deployer.gpus import load_inventory_file
from deployer.planner import DeploymentPlan, PlanOptions, plan
from deployer.profiles import parse_profile
from deployer.spec import container_specs
from deployer.vllm_pin import STANDIN_IMAGE

ROOT = Path(__file__).resolve().parent.parent
BOX = ROOT / "tests" / "fixtures" / "gpus" / "3x-rtx4090.json"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tri_tier(deployment: str, load_seconds: float, home: Path) -> DeploymentPlan:
    """The shipped tri-tier layout, on free ports, with a fixed stand-in load time. The GPUs are
    numbered from a random base: stand-ins share a per-GPU memory ledger on the engine, and a
    running `make demo` holds GPUs 0-2."""
    g = random.randrange(100, 1000, 3)
    box = json.loads(BOX.read_text())
    for offset, gpu in enumerate(box["gpus"]):
        gpu["index"] = g + offset
    gpus_file = home / f"{deployment}-gpus.json"
    gpus_file.write_text(json.dumps(box))
    medium, mini, micro = free_ports(3)
    data = {
        "name": "tri-tier-bench",
        "defaults": {"environment": {"STANDIN_LOAD_SECONDS": str(load_seconds)}},
        "services": {
            "medium": {"model": "Qwen/Qwen3-32B-AWQ", "gpus": [g, g + 1], "port": medium,
                       "context": 32768},
            "mini": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [g + 2], "port": mini,
                     "context": 32768, "share": 2},
            "micro": {"model": "Qwen/Qwen3-1.7B-FP8", "gpus": [g + 2], "port": micro,
                      "context": 16384},
        },
    }  # fmt: skip
    profile = parse_profile(data, "bench")
    options = PlanOptions(deployment=deployment, engine="stand-in")
    return plan(load_inventory_file(gpus_file), profile, load_catalog(), options)


def one_after_another(p: DeploymentPlan) -> DeploymentPlan:
    """The baseline: every service waits for the one before it, whatever its GPUs."""
    names = [s.name for s in p.services]
    services = tuple(
        dataclasses.replace(s, start_after=(names[i - 1],) if i else ())
        for i, s in enumerate(p.services)
    )
    return dataclasses.replace(p, services=services, start_waves=tuple((n,) for n in names))


def run(client: Any, p: DeploymentPlan, home: Path) -> runtime.ApplyResult:
    specs = container_specs(p, str(home / p.deployment))
    keys = {s.api_key_env: f"bench-key-{s.name}" for s in p.services}
    try:
        result = runtime.apply(client, p, specs, keys, poll_s=0.1)
    finally:
        runtime.down(client, p.deployment, p)
    if not result.ok:
        raise SystemExit(f"bench: start failed: {runtime.failure_error(result)}")
    return result


def critical_path(p: DeploymentPlan, result: runtime.ApplyResult) -> float:
    """The slowest chain of start_after dependencies, from each service's own start-to-ready."""
    took = {}
    for outcome in result.outcomes:
        assert outcome.ready_s is not None and outcome.started_s is not None
        took[outcome.service] = outcome.ready_s - outcome.started_s
    finish: dict[str, float] = {}
    for service in p.services:  # start_after only names earlier services
        finish[service.name] = took[service.name] + max(
            (finish[d] for d in service.start_after), default=0.0
        )
    return max(finish.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load-seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.images.get(STANDIN_IMAGE)
    except Exception as exc:  # no engine or no image: say which and stop
        print(f"bench: needs the Docker engine and {STANDIN_IMAGE} ({exc})", file=sys.stderr)
        return 1
    print(f"tri-tier with the stand-in, STANDIN_LOAD_SECONDS={args.load_seconds:g}")
    print(f"{'run':>3}  {'parallel':>9}  {'critical':>9}  {'sequential':>10}  "
          f"{'meas/crit':>9}  {'seq/meas':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        for i in range(1, args.repeat + 1):
            tag = uuid.uuid4().hex[:6]
            parallel_plan = tri_tier(f"bench-par-{tag}", args.load_seconds, home)
            measured = run(client, parallel_plan, home)
            critical = critical_path(parallel_plan, measured)
            sequential_plan = one_after_another(
                tri_tier(f"bench-seq-{tag}", args.load_seconds, home)
            )
            sequential = run(client, sequential_plan, home)
            print(
                f"{i:>3}  {measured.elapsed_s:>8.2f}s  {critical:>8.2f}s  "
                f"{sequential.elapsed_s:>9.2f}s  {measured.elapsed_s / critical:>9.2f}  "
                f"{sequential.elapsed_s / measured.elapsed_s:>8.2f}"
            )
            for outcome in measured.outcomes:
                assert outcome.started_s is not None and outcome.ready_s is not None
                took = outcome.ready_s - outcome.started_s
                print(
                    f"     {outcome.service:<7} start {outcome.started_s:6.2f}s  "
                    f"ready {outcome.ready_s:6.2f}s  took {took:5.2f}s"
                )
    print("meas/crit: 1.00 means the real start took exactly the slowest dependency chain;")
    print("seq/meas: how many times faster than starting every service one after another.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

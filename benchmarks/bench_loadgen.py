"""How much streamed load the bench's load generator sustains, and what it adds to each gap.

Starts the vLLM stand-in as a local process (no Docker) with a fixed token interval, runs the
load generator against it (closed loop, streaming chat completions) and prints:

    output tokens/s sustained             target >= 5,000 on a 2-core box
    ITL p50 - the stand-in's interval      target < 1 ms (the generator's own overhead)

plus the client's CPU time per token. Run: `python benchmarks/bench_loadgen.py` (or `make
bench`); exits 1 when a target is missed. Nothing here is a timed test: the figures depend on
the machine, so they are printed, with the targets beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

from deployer.bench.client import Endpoint, Load
from deployer.bench.loadgen import run_loads
from deployer.bench.samples import percentile
from deployer.catalog import load_catalog
from deployer.gpus import load_inventory_file
from deployer.planner import PlanOptions, plan
from deployer.profiles import load_profile

ROOT = Path(__file__).resolve().parent.parent
BOX = ROOT / "tests" / "fixtures" / "gpus" / "3x-rtx4090.json"
TARGET_TPS = 5000.0
TARGET_OVERHEAD_MS = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_standin(
    model: str, port: int, tokens_per_second: float, ledger: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "STANDIN_TOKENS_PER_SECOND": str(tokens_per_second),
        "STANDIN_TTFT_MS": "5",
        "STANDIN_ANSWER_TOKENS": "100000",
        "STANDIN_LOAD_SECONDS": "0",
        "STANDIN_LEDGER_DIR": ledger,
    }
    args = ["serve", model, "--port", str(port), "--max-model-len", "4096", "--max-num-seqs", "512"]
    process = subprocess.Popen(
        [sys.executable, "-m", "deployer.standin.server", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the stand-in exited with code {process.returncode}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the stand-in did not answer within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens-per-second", type=float, default=250.0, help="per request")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--requests", type=int, default=160)
    args = parser.parse_args()

    service = plan(
        load_inventory_file(BOX),
        load_profile("tri-tier"),
        load_catalog(),
        PlanOptions(engine="stand-in"),
    ).service("micro")
    port = free_port()
    interval_ms = 1000.0 / args.tokens_per_second
    with tempfile.TemporaryDirectory() as ledger:
        process = start_standin(service.model, port, args.tokens_per_second, ledger)
        try:
            endpoint = Endpoint(
                dataclasses.replace(service, served_model_name=service.model, port=port),
                f"http://127.0.0.1:{port}",
                "",
            )
            load = Load(
                endpoint,
                args.concurrency,
                16,
                args.max_tokens,
                args.requests,
                600.0,
                timeout_s=120.0,
            )
            warm = dataclasses.replace(load, concurrency=2, max_requests=4, max_tokens=8)
            run_loads([warm], requests.Session)
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            (result,) = run_loads([load], requests.Session)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            process.terminate()
            process.wait(10)
    good = [s for s in result.samples if s.ok]
    errors = len(result.samples) - len(good)
    tokens = sum(s.completion_tokens for s in good)
    tps = tokens / result.duration_s if result.duration_s > 0 else 0.0
    gaps = [g for s in good for g in s.itl_ms]
    itl_p50 = percentile(gaps, 50) or 0.0
    overhead = itl_p50 - interval_ms
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(
        f"load: {args.concurrency} concurrent streams, {args.requests} requests of "
        f"{args.max_tokens} tokens, stand-in interval {interval_ms:.2f} ms "
        f"({args.tokens_per_second:g} tok/s per request), {os.cpu_count()} CPUs"
    )
    print(
        f"requests: {len(good)} ok, {errors} failed; {tokens:,} tokens in {result.duration_s:.2f} s"
    )
    for kind, count in Counter(s.error for s in result.samples if not s.ok).most_common(3):
        print(f"  {count} x {kind}")
    print(f"output tokens/s sustained: {tps:,.0f} (target >= {TARGET_TPS:,.0f})")
    print(
        f"ITL p50 {itl_p50:.3f} ms - interval {interval_ms:.3f} ms = overhead {overhead:.3f} ms "
        f"(target < {TARGET_OVERHEAD_MS:g} ms); ITL p95 {percentile(gaps, 95) or 0:.3f} ms"
    )
    print(f"client CPU: {cpu_s * 1e6 / max(tokens, 1):.1f} us per token ({cpu_s:.2f} s)")
    ok = errors == 0 and tps >= TARGET_TPS and overhead < TARGET_OVERHEAD_MS
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

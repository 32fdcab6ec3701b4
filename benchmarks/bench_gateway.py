"""What the gateway costs: the same streaming load sent straight to a stand-in tier and through
the gateway, in one run, alternating rounds. Prints output tokens/s through the gateway as a
share of direct (target >= 90 %) and the TTFT the gateway adds at p50 (target <= 5 ms).

The client is this process (asyncio, raw HTTP/1.1, so that the client is not the bottleneck);
the tier and the gateway are their own processes (`python -m deployer.standin.server`,
`python -m deployer.gateway`), on loopback.

Run: python benchmarks/bench_gateway.py [--concurrency 64] [--requests 640] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployer.gateway.config import GatewaySpec, Limits
from tests.integration.gateway_support import start_deployment

COMPLETION = re.compile(rb'"completion_tokens":\s*(\d+)')


@dataclass
class Result:
    ttft_s: float
    tokens: int
    ok: bool


async def one(port: int, path: str, body: bytes, key: str) -> Result:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    writer.write(head + body)
    await writer.drain()
    data = b""
    ttft = 0.0
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
        if not ttft and b"data: {" in data:
            ttft = time.perf_counter() - started
    writer.close()
    found = COMPLETION.findall(data)
    ok = data.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in data and bool(found)
    return Result(ttft, int(found[-1]) if found else 0, ok)


async def load(
    port: int, key: str, model: str, args: argparse.Namespace
) -> tuple[float, list[Result]]:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "benchmark the gateway please"}],
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "chat_template_kwargs": {"enable_thinking": False},
        }
    ).encode()
    queue = iter(range(args.requests))
    results: list[Result] = []

    # Steady concurrency, not lockstep waves: the workers start spread over one stream's
    # duration, so arrivals are spread as a server sees them (both modes alike).
    spread_s = 0.0 if args.lockstep else args.max_tokens / float(args.tokens_per_second)

    async def worker(index: int) -> None:
        await asyncio.sleep(spread_s * index / args.concurrency)
        for _ in queue:
            results.append(await one(port, "/v1/chat/completions", body, key))

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    return time.perf_counter() - started, results


def summary(wall: float, results: list[Result]) -> tuple[float, float, int]:
    good = [r for r in results if r.ok]
    tokens_per_s = sum(r.tokens for r in good) / wall
    return tokens_per_s, statistics.median(r.ttft_s for r in good), len(results) - len(good)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=640, help="per round and mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--tokens-per-second", default="50", help="the stand-in's pace per request")
    parser.add_argument("--ttft-ms", default="20", help="the stand-in's time to first token")
    parser.add_argument(
        "--lockstep", action="store_true", help="start all workers at once (bursts of arrivals)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    tier_env = {
        "STANDIN_TOKENS_PER_SECOND": args.tokens_per_second,
        "STANDIN_TTFT_MS": args.ttft_ms,
    }
    spec = GatewaySpec(limits=Limits(gpu_inflight=4 * args.concurrency))
    deployment = start_deployment(workdir, spec, tier_env={"micro": tier_env})
    tier = deployment.tiers["micro"]
    rows: dict[str, list[tuple[float, float, int]]] = {"direct": [], "gateway": []}
    try:
        for _ in range(args.rounds):
            for mode in ("direct", "gateway"):
                if mode == "direct":
                    port, key, model = tier.port, tier.key, tier.served
                else:
                    port, key, model = deployment.gateway.port, deployment.keys["default"], "micro"
                wall, results = asyncio.run(load(port, key, model, args))
                rows[mode].append(summary(wall, results))
    finally:
        deployment.stop()
    print(
        f"concurrency {args.concurrency}, {args.requests} streams x {args.max_tokens} tokens per "
        f"round, {args.rounds} rounds, stand-in {args.tokens_per_second} tok/s per stream"
    )
    print(f"{'mode':8} {'tok/s':>10} {'TTFT p50':>10} {'failed':>7}")
    for mode, values in rows.items():
        for tokens_per_s, ttft, failed in values:
            print(f"{mode:8} {tokens_per_s:10.0f} {ttft * 1000:8.1f}ms {failed:7}")
    direct = statistics.median(v[0] for v in rows["direct"])
    gateway = statistics.median(v[0] for v in rows["gateway"])
    added_ms = 1000 * (
        statistics.median(v[1] for v in rows["gateway"])
        - statistics.median(v[1] for v in rows["direct"])
    )
    ratio = gateway / direct
    failed = sum(v[2] for values in rows.values() for v in values)
    print(
        f"output tokens/s through the gateway: {100 * ratio:.1f} % of direct (target >= 90 %)"
        f" {'ok' if ratio >= 0.9 else 'MISSED'}"
    )
    verdict = "ok" if added_ms <= 5 else "MISSED"
    print(f"TTFT added at p50: {added_ms:.2f} ms (target <= 5 ms) {verdict}")
    print(f"failed requests: {failed}")


if __name__ == "__main__":
    main()

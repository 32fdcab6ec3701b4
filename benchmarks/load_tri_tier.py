"""Tri-tier under load, through the vLLM stand-in: N concurrent streaming clients for a fixed
time, spread over the three services, while `qwen-deploy status` and `verify` are run beside
them. Every request ends either complete (a finish_reason and `data: [DONE]`) or as an error the
client saw; the engines' own counters (`vllm:request_success_total` on /metrics) must account for
exactly the completed ones, so no request is lost silently. Prints requests served, errors and
latency percentiles per service.

Loopback only (127.0.0.1), bounded: each client has one request in flight, each request a
timeout, the run a fixed duration.

Run: python benchmarks/load_tri_tier.py [--clients 12] [--seconds 15]  (needs the Docker engine and
the stand-in image: `make images`). tests/integration/test_load.py runs the same load and checks
the accounting.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from deployer import openai_wire as wire

ROOT = Path(__file__).resolve().parent.parent
BOX = ROOT / "tests" / "fixtures" / "gpus" / "3x-rtx4090.json"
REQUEST_TIMEOUT_S = 30.0
SUCCESS = re.compile(
    r'^vllm:request_success_total\{[^}]*finished_reason="(stop|length)"[^}]*\}\s+(\S+)'
)


@dataclass(frozen=True)
class Target:
    service: str
    base_url: str  # http://127.0.0.1:PORT
    api_key: str
    model: str


@dataclass
class ServiceTally:
    served: int = 0  # complete answers
    errors: dict[str, int] = field(default_factory=dict)  # what the client was told, counted
    latencies_s: list[float] = field(default_factory=list)  # of the complete ones
    ttft_s: list[float] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class LoadReport:
    clients: int
    duration_s: float
    sent: dict[str, int]
    tallies: dict[str, ServiceTally]

    @property
    def served(self) -> int:
        return sum(t.served for t in self.tallies.values())

    @property
    def errors(self) -> int:
        return sum(t.error_count for t in self.tallies.values())

    def latency(self, q: float, service: str | None = None) -> float | None:
        values = sorted(
            v
            for name, t in self.tallies.items()
            if service is None or name == service
            for v in t.latencies_s
        )
        return percentile(values, q)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of sorted values; None when empty."""
    if not values:
        return None
    rank = max(1, min(len(values), int(-(-q * len(values) // 100))))
    return values[rank - 1]


def stream_chat(
    session: requests.Session, target: Target, prompt: str
) -> tuple[str | None, float, float | None]:
    """One streaming chat completion: (error or None, seconds, seconds to the first token)."""
    start = time.perf_counter()
    first: float | None = None
    body = wire.chat_body(target.model, prompt, max_tokens=48, stream=True, thinking=False)
    finished = done = False
    try:
        with session.post(
            target.base_url + wire.CHAT_PATH,
            json=body,
            headers=wire.auth_headers(target.api_key),
            stream=True,
            timeout=(5, REQUEST_TIMEOUT_S),
        ) as response:
            if response.status_code != 200:
                return f"HTTP {response.status_code}", time.perf_counter() - start, None
            stream = wire.ChunkStream(response.iter_lines())
            for chunk in stream:
                if first is None and wire.delta_text(chunk):
                    first = time.perf_counter() - start
                if wire.finish_reason(chunk):
                    finished = True
            done = stream.done
    except requests.RequestException as exc:
        return f"{type(exc).__name__}", time.perf_counter() - start, first
    except wire.StreamError:
        return "a stream chunk is not JSON", time.perf_counter() - start, first
    elapsed = time.perf_counter() - start
    if not (finished and done):
        return "the stream ended without a finish_reason and [DONE]", elapsed, first
    return None, elapsed, first


def run_load(
    targets: Sequence[Target],
    clients: int,
    duration_s: float,
    beside: Callable[[threading.Event], None] | None = None,
) -> LoadReport:
    """`clients` threads, each sending to targets[i % len(targets)] one request after another
    until `duration_s` has passed (requests in flight then finish). `beside(stop)` runs in the
    calling thread meanwhile, until `stop` is set."""
    tallies = {t.service: ServiceTally() for t in targets}
    sent = {t.service: 0 for t in targets}
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        target = targets[number % len(targets)]
        with requests.Session() as session:
            while not stop.is_set():
                with lock:
                    sent[target.service] += 1
                prompt = f"client {number} request {uuid.uuid4().hex[:8]}: say something short"
                error, elapsed, first = stream_chat(session, target, prompt)
                with lock:
                    tally = tallies[target.service]
                    if error is None:
                        tally.served += 1
                        tally.latencies_s.append(elapsed)
                        if first is not None:
                            tally.ttft_s.append(first)
                    else:
                        tally.errors[error] = tally.errors.get(error, 0) + 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    timer = threading.Timer(duration_s, stop.set)
    timer.start()
    try:
        if beside is not None:
            beside(stop)
        stop.wait()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 10)
    finally:
        stop.set()
        timer.cancel()
    return LoadReport(clients, time.monotonic() - started, sent, tallies)


def completed_requests(base_url: str) -> float:
    """vllm:request_success_total (stop + length) on the engine's /metrics."""
    text = requests.get(base_url + "/metrics", timeout=10).text
    return sum(float(m.group(2)) for m in map(SUCCESS.match, text.splitlines()) if m)


def format_report(report: LoadReport) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    lines = [
        f"{report.clients} streaming clients for {report.duration_s:.1f} s",
        f"{'service':<8} {'sent':>6} {'served':>6} {'errors':>6} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p95 ttft':>8}",
    ]
    for name, tally in report.tallies.items():
        ttft = percentile(sorted(tally.ttft_s), 95)
        lines.append(
            f"{name:<8} {report.sent[name]:>6} {tally.served:>6} {tally.error_count:>6} "
            f"{ms(report.latency(50, name)):>7} {ms(report.latency(95, name)):>7} {ms(ttft):>8}"
        )
    lines.append(
        f"{'all':<8} {sum(report.sent.values()):>6} {report.served:>6} {report.errors:>6} "
        f"{ms(report.latency(50)):>7} {ms(report.latency(95)):>7}"
    )
    for name, tally in report.tallies.items():
        for error, count in tally.errors.items():
            lines.append(f"  {name}: {count} x {error}")
    return "\n".join(lines)


# --- standalone: a deployment of its own ----------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _cli(home: Path, deployment: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "deployer.cli.main", "--home", str(home)]
    return subprocess.run(
        [*command, "--deployment", deployment, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    deployment = f"load-{uuid.uuid4().hex[:6]}"
    first = random.randrange(100, 1000, 3)  # stand-ins share a per-GPU ledger on the engine
    ports = dict(zip(("medium", "mini", "micro"), _free_ports(3), strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        box = json.loads(BOX.read_text())
        for offset, gpu in enumerate(box["gpus"]):
            gpu["index"] = first + offset
        (home / "gpus.json").write_text(json.dumps(box))
        g = first
        services = {
            "medium": {"model": "Qwen/Qwen3-32B-AWQ", "gpus": [g, g + 1], "context": 32768},
            "mini": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [g + 2], "context": 32768, "share": 2},
            "micro": {"model": "Qwen/Qwen3-1.7B-FP8", "gpus": [g + 2], "context": 16384},
        }
        for name, spec in services.items():
            spec.update(port=ports[name], api_key=f"load-key-{name}-0123")
        profile = {
            "name": "tri-tier-load",
            "defaults": {"environment": {"STANDIN_LOAD_SECONDS": "1"}},
            "services": services,
        }
        (home / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
        up = _cli(home, deployment, "up", "-p", str(home / "profile.yaml"), "--gpus-file",
                  str(home / "gpus.json"), "--engine", "stand-in", "--no-verify")  # fmt: skip
        try:
            if up.returncode != 0:
                print(f"load: up failed:\n{up.stderr}", file=sys.stderr)
                return 1
            plan = json.loads((home / deployment / "plan.json").read_text())
            targets = [
                Target(s["name"], f"http://127.0.0.1:{s['port']}", f"load-key-{s['name']}-0123",
                       s["served_model_name"])
                for s in plan["services"]
            ]  # fmt: skip
            before = {t.service: completed_requests(t.base_url) for t in targets}
            checks: list[tuple[str, int, float]] = []

            def beside(stop: threading.Event) -> None:
                while not stop.is_set():
                    for command in (("status", "--json"), ("verify",)):
                        start = time.perf_counter()
                        done = _cli(home, deployment, *command)
                        checks.append((command[0], done.returncode, time.perf_counter() - start))
                    stop.wait(2)

            report = run_load(targets, args.clients, args.seconds, beside)
            print(format_report(report))
            verify_runs = sum(1 for c in checks if c[0] == "verify" and c[1] == 0)
            for target in targets:
                delta = completed_requests(target.base_url) - before[target.service]
                expected = report.tallies[target.service].served + 3 * verify_runs
                print(f"{target.service}: engine counted {delta:.0f} completed, clients + verify "
                      f"{expected}")  # fmt: skip
            for name in ("status", "verify"):
                runs = [c for c in checks if c[0] == name]
                worst = max((c[2] for c in runs), default=0.0)
                ok = sum(1 for c in runs if c[1] == 0)
                print(f"{name}: {ok}/{len(runs)} answered 0 during the load, slowest {worst:.2f} s")
        finally:
            _cli(home, deployment, "down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast the CLI answers: `qwen-deploy --help` and `qwen-deploy status` against `docker ps`,
each timed over the same number of runs in this one process, printed as ratios.

Run: make bench (needs the Docker engine; `status` reads the engine for a deployment that may
or may not exist — an empty deployment still lists the engine's containers)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 7


def timed(cmd: list[str]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    cli = str(Path(sys.executable).with_name("qwen-deploy"))
    if not Path(cli).exists():
        cli = shutil.which("qwen-deploy") or "qwen-deploy"
    docker = shutil.which("docker")
    if docker is None:
        print("docker CLI not found", file=sys.stderr)
        return 1
    baseline = timed([docker, "ps"])
    help_time = timed([cli, "--help"])
    status_time = timed([cli, "--deployment", "bench-cli", "status"])
    print(f"docker ps           {baseline * 1000:8.1f} ms (baseline, median of {RUNS})")
    for name, value in (("qwen-deploy --help", help_time), ("qwen-deploy status", status_time)):
        print(f"{name:<19} {value * 1000:8.1f} ms  ratio {value / baseline:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How fast the CLI answers, as ratios against `docker ps` measured in the same run.

Each round runs every command once, in a rotated order, so that a slow moment of the machine
falls on all of them alike; the ratio is the command's median over the baseline's median.

    qwen-deploy --help                                  <= 3x docker ps
    qwen-deploy plan -p tri-tier --gpus-file 3x-rtx4090 <= 5x
    qwen-deploy status (a deployment with no containers) <= 10x

Two floors are printed beside them, without limits: this interpreter (under make bench, the venv's,
beside qwen-deploy) starting, and importing click (what any click CLI pays before a line of its
own runs), so that a reader can tell how much of a ratio is this project's code.

Run: make bench (needs the Docker engine: `docker ps` and `status` talk to it). Exits 1 when a
ratio is over its limit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPUS_FILE = ROOT / "tests" / "fixtures" / "gpus" / "3x-rtx4090.json"


def qwen_deploy() -> str:
    beside = Path(sys.executable).with_name("qwen-deploy")
    return str(beside) if beside.exists() else shutil.which("qwen-deploy") or "qwen-deploy"


# As installed: Python caches compiled modules (pip compiles a wheel's at install), so the first
# (uncounted) round writes them where a session has turned that off.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def once(cmd: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, env=ENV
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:  # a command that fails early would look fast
        raise SystemExit(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr.decode()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="runs of each command")
    args = parser.parse_args()
    docker = shutil.which("docker")
    if docker is None:
        print("docker CLI not found", file=sys.stderr)
        return 1
    cli = qwen_deploy()
    with tempfile.TemporaryDirectory() as home:
        base = [cli, "--home", home, "--deployment", "bench-cli"]
        commands: dict[str, tuple[list[str], float | None]] = {
            "docker ps": ([docker, "ps"], None),
            "qwen-deploy --help": ([cli, "--help"], 3.0),
            "qwen-deploy plan -p tri-tier": (
                [*base, "plan", "-p", "tri-tier", "--gpus-file", str(GPUS_FILE)],
                5.0,
            ),
            "qwen-deploy status": ([*base, "status"], 10.0),
            "floor: python": ([sys.executable, "-c", "pass"], None),
            "floor: python + import click": ([sys.executable, "-c", "import click"], None),
        }
        names = list(commands)
        for name in names:  # warm the page cache and the .pyc files; not counted
            once(commands[name][0])
        samples: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(once(commands[name][0]))
    baseline = statistics.median(samples["docker ps"])
    print(f"{'docker ps':<30} {baseline * 1000:7.1f} ms  (baseline, median of {args.rounds})")
    missed = 0
    for name in names[1:]:
        value = statistics.median(samples[name])
        limit = commands[name][1]
        ratio = value / baseline
        judged = ""  # a floor has no limit
        if limit is not None:
            verdict = "ok" if ratio <= limit else "OVER"
            missed += verdict != "ok"
            judged = f"  (limit {limit:g}x) {verdict}"
        print(f"{name:<30} {value * 1000:7.1f} ms  {ratio:5.2f}x{judged}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Bench runs on disk: `<deployment dir>/bench/<run-id>/` holds run.json (options, plan, GPU
inventory, points), points.csv, requests.csv, report.md, one PNG chart per tier and vllm/, the
points in `vllm bench serve`'s result JSON. A run is written into a hidden staging folder and
renamed into place, so readers never see half a run; each text file goes through
`deployment.write_atomic`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from deployer.bench.report import points_csv, requests_csv, to_markdown
from deployer.bench.run import BenchRun
from deployer.bench.samples import PointRecord
from deployer.bench.vllm_format import results as vllm_results
from deployer.deployment import DeploymentDir, write_atomic
from deployer.errors import BenchError

BENCH_DIR = "bench"
RUN_FILE = "run.json"
POINTS_CSV = "points.csv"
REQUESTS_CSV = "requests.csv"
REPORT_FILE = "report.md"
VLLM_DIR = "vllm"  # one `vllm bench serve` result JSON per point
RUN_ID = re.compile(r"^\d{8}-\d{6}(-\d+)?$")


def bench_root(directory: DeploymentDir) -> Path:
    return directory.path / BENCH_DIR


def new_run_id(now: datetime, root: Path) -> str:
    """`20250131-140502` (UTC), with `-2`, `-3`… when that second already has a run."""
    base = now.strftime("%Y%m%d-%H%M%S")
    run_id, n = base, 1
    while (root / run_id).exists() or (root / f".{run_id}.tmp").exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def write_run(
    directory: DeploymentDir,
    run: BenchRun,
    records: Sequence[PointRecord],
    *,
    vllm_json: bool = False,
) -> Path:
    """Write the run's files into a staging folder, then rename it to bench/<run-id>; with
    `vllm_json`, also vllm/ (what `bench run` writes)."""
    root = bench_root(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / run.run_id
    if final.exists():
        raise BenchError(f"bench run {run.run_id} already exists at {final}")
    staging = root / f".{run.run_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        try:
            from deployer.bench.charts import render_charts

            charts = render_charts(run, staging) if run.points else []
        except ImportError:
            charts = []
            run = replace(
                run,
                notes=(
                    *run.notes,
                    "charts not drawn: matplotlib is not installed (pip install matplotlib)",
                ),
            )
        write_atomic(staging / RUN_FILE, json.dumps(run.to_dict(), indent=2) + "\n", 0o644)
        write_atomic(staging / POINTS_CSV, points_csv(run.points), 0o644)
        write_atomic(staging / REQUESTS_CSV, requests_csv(records), 0o644)
        write_atomic(staging / REPORT_FILE, to_markdown(run, charts), 0o644)
        if vllm_json:
            (staging / VLLM_DIR).mkdir()
            for name, document in vllm_results(run, records).items():
                write_atomic(staging / VLLM_DIR / name, json.dumps(document) + "\n", 0o644)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fd = os.open(root, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def run_ids(directory: DeploymentDir) -> list[str]:
    """Saved runs, oldest first (ids are UTC timestamps)."""
    root = bench_root(directory)
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if RUN_ID.match(p.name) and (p / RUN_FILE).is_file()]
    return sorted(found, key=_sort_key)


def _sort_key(run_id: str) -> tuple[str, int]:
    return (run_id[:15], int(run_id[16:] or 1))


def resolve_run(directory: DeploymentDir, ref: str) -> str:
    """A run id from `latest`, `previous`, an id or a unique prefix of one."""
    ids = run_ids(directory)
    if not ids:
        raise BenchError(
            f"no bench runs in {bench_root(directory)}",
            hint="run `qwen-deploy bench` first",
        )
    if ref == "latest":
        return ids[-1]
    if ref == "previous":
        if len(ids) < 2:
            raise BenchError("there is only one bench run, so no previous one")
        return ids[-2]
    if ref in ids:
        return ref
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(ids[-5:])
    if matches:
        raise BenchError(f"bench run {ref!r} is ambiguous: {', '.join(matches)}")
    raise BenchError(f"no bench run {ref!r}", hint=f"latest runs: {shown}; or latest, previous")


def load_run(directory: DeploymentDir, ref: str) -> BenchRun:
    run_id = resolve_run(directory, ref)
    path = bench_root(directory) / run_id / RUN_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path} is not a JSON object")
    return BenchRun.from_dict(data, str(path))


def list_runs(directory: DeploymentDir) -> list[BenchRun]:
    """Every readable run, oldest first (unreadable ones are left out)."""
    runs = []
    for run_id in run_ids(directory):
        with contextlib.suppress(BenchError):
            runs.append(load_run(directory, run_id))
    return runs

"""Bench runs on disk: `<deployment dir>/bench/<run-id>/` holds run.json (options, plan, GPU
inventory, points), points.csv, requests.csv, report.md and one PNG chart per tier. A run is
written into a hidden staging folder and renamed into place, so readers never see half a run;
each text file goes through `deployment.write_atomic`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from deployer.benchstats import (
    BenchError,
    BenchRun,
    Point,
    interference,
    where_it_hurts,
)
from deployer.deployment import DeploymentDir, write_atomic
from deployer.loadgen import PointRecord, iter_samples

BENCH_DIR = "bench"
RUN_FILE = "run.json"
POINTS_CSV = "points.csv"
REQUESTS_CSV = "requests.csv"
REPORT_FILE = "report.md"
RUN_ID = re.compile(r"^\d{8}-\d{6}(-\d+)?$")
SUMMARY_FIELDS = ("mean", "p50", "p95", "p99", "max")


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


# --- tables shared by the terminal and the Markdown report -----------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _triple(values: tuple[float | None, ...]) -> str:
    return "/".join(_n(v) for v in values)


POINT_HEADERS = [
    "SERVICE",
    "MODE",
    "CONC",
    "PROMPT",
    "OK/REQ",
    "TOK/S",
    "REQ/S",
    "DECODE/S",
    "TTFT P50/95/99 MS",
    "ITL P50/95/99 MS",
    "E2E P50/95/99 MS",
    "KV PEAK",
]


def point_row(p: Point) -> list[str]:
    """One point as table cells (TOK/S: all requests together; DECODE/S: one request's p50)."""
    return [
        p.service,
        p.mode,
        str(p.concurrency),
        _n(p.prompt_tokens) if p.prompt_tokens is not None else str(p.prompt_target),
        f"{p.ok}/{p.requests}",
        _n(p.throughput_tps, 1),
        _n(p.request_rate, 2),
        _n(p.decode_tps.p50, 1),
        _triple((p.ttft_ms.p50, p.ttft_ms.p95, p.ttft_ms.p99)),
        _triple((p.itl_ms.p50, p.itl_ms.p95, p.itl_ms.p99)),
        _triple((p.e2e_ms.p50, p.e2e_ms.p95, p.e2e_ms.p99)),
        "-" if p.kv_usage_peak is None else f"{p.kv_usage_peak * 100:.1f}%",
    ]


def error_lines(points: Sequence[Point]) -> list[str]:
    return [
        f"{p.label}: {count} x {kind}" for p in points for kind, count in p.error_kinds if p.errors
    ]


# --- CSV ------------------------------------------------------------------------------------


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return out.getvalue()


def points_csv(points: Sequence[Point]) -> str:
    scalars = [
        "service",
        "mode",
        "concurrency",
        "prompt_target",
        "prompt_tokens",
        "completion_tokens",
        "max_tokens",
        "requests",
        "ok",
        "errors",
        "duration_s",
        "stopped_by",
        "output_tokens",
        "throughput_tps",
        "request_rate",
        "kv_usage_peak",
        "running_peak",
        "waiting_peak",
    ]
    summaries = ["ttft_ms", "itl_ms", "e2e_ms", "decode_tps"]
    header = scalars + [f"{s}_{f}" for s in summaries for f in SUMMARY_FIELDS]
    rows = []
    for p in points:
        data = p.to_dict()
        rows.append(
            [data[k] for k in scalars] + [data[s][f] for s in summaries for f in SUMMARY_FIELDS]
        )
    return _csv(header, rows)


def requests_csv(records: Sequence[PointRecord]) -> str:
    header = [
        "service",
        "mode",
        "concurrency",
        "prompt_target",
        "index",
        "ok",
        "error",
        "start_s",
        "ttft_ms",
        "e2e_ms",
        "prompt_tokens",
        "completion_tokens",
        "decode_tps",
        "itl_mean_ms",
        "itl_max_ms",
    ]
    rows = []
    for point, s in iter_samples(records):
        itl = s.itl_ms
        rows.append(
            [
                point.service,
                point.mode,
                point.concurrency,
                point.prompt_target,
                s.index,
                s.ok,
                s.error,
                s.start_s,
                s.ttft_ms,
                s.e2e_ms,
                s.prompt_tokens,
                s.completion_tokens,
                None if s.decode_tps is None else round(s.decode_tps, 2),
                round(sum(itl) / len(itl), 3) if itl else None,
                max(itl) if itl else None,
            ]
        )
    return _csv(header, rows)


# --- Markdown ---------------------------------------------------------------------------------


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*lines, ""]


def to_markdown(run: BenchRun, charts: Sequence[str]) -> str:
    """The run as a report: what was measured on what, a table and chart per tier, mixed load."""
    plan = run.plan
    opts = run.options
    out = [
        f"# Bench run `{run.run_id}` of deployment `{run.deployment}`",
        "",
        f"Profile `{plan.get('profile')}`, engine {run.engine} "
        f"(vLLM {plan.get('vllm_version')}, image `{plan.get('image')}`), "
        f"{run.started_at} to {run.finished_at}.",
        "",
        "Options: concurrency {c}; prompts {p}; max_tokens {m}; {r} requests per service per "
        "point, at most {d} s each; thinking {t}; mixed load {x}.".format(
            c=", ".join(map(str, opts.get("concurrency", []))),
            p=", ".join(map(str, opts.get("prompt_tokens", []))),
            m=opts.get("max_tokens"),
            r=opts.get("requests_per_point") or "4 x concurrency (at least 16)",
            d=opts.get("duration_per_point_s"),
            t="on" if opts.get("thinking") else "off",
            x="on" if opts.get("mixed") else "off",
        ),
        "",
    ]
    if run.interrupted:
        out += [
            f"**Interrupted** (Ctrl-C) during {run.interrupted}: the points before it are kept.",
            "",
        ]
    if run.engine == "stand-in":
        out += [
            "> Engine stand-in: these figures are the stand-in's configured token rate and "
            "delays, not a GPU's.",
            "",
        ]
    out += [
        "TOK/S is the output tokens per second of all requests of a point together; DECODE/S "
        "one request's speed after its first token (p50); TTFT, ITL (between tokens) and E2E in "
        "ms as p50/p95/p99; KV PEAK the highest KV-cache usage /metrics reported.",
        "",
        f"## GPUs ({run.inventory.get('source', '?')})",
        "",
    ]
    users: dict[int, list[str]] = {}
    for s in plan.get("services", []):
        for g in s.get("gpus", []):
            users.setdefault(int(g), []).append(str(s["name"]))
    out += _md_table(
        ["GPU", "Name", "Memory", "Used", "Services"],
        [
            [
                str(g["index"]),
                str(g["name"]),
                f"{g['memory_total_mib']:,} MiB",
                f"{g.get('memory_used_mib', 0):,} MiB",
                ", ".join(users.get(int(g["index"]), [])) or "-",
            ]
            for g in run.inventory.get("gpus", [])
        ],
    )
    out += ["## Plan", ""]
    out += _md_table(
        ["Service", "Model", "GPUs", "Context", "max_num_seqs", "GPU mem", "KV tokens", "Full ctx"],
        [
            [
                str(s["name"]),
                f"`{s['served_model_name']}`",
                ",".join(map(str, s["gpus"])),
                f"{s['max_model_len']:,}",
                str(s["max_num_seqs"]),
                str(s["gpu_memory_utilization"]),
                f"{s['kv_cache_tokens']:,}",
                f"{s['max_concurrency']}x",
            ]
            for s in plan.get("services", [])
            if s["name"] in run.services
        ],
    )
    headers = [
        "Mode",
        "Conc",
        "Prompt",
        "OK/req",
        "tok/s",
        "req/s",
        "Decode tok/s",
        "TTFT ms p50/95/99",
        "ITL ms p50/95/99",
        "E2E ms p50/95/99",
        "KV peak",
    ]
    for service in run.services:
        out += [f"## {service}", ""]
        if f"{service}.png" in charts:
            out += [f"![{service}: throughput and latency by concurrency]({service}.png)", ""]
        mine = [p for p in run.points if p.service == service]
        out += _md_table(headers, [point_row(p)[1:] for p in mine])
        errors = error_lines(mine)
        if errors:
            out += ["Errors:", "", *[f"- {line}" for line in errors], ""]
    rows = interference(run.points, run.shared())
    if rows:
        out += ["## Mixed load: tiers slowing each other", ""]
        out += _md_table(
            [
                "Service",
                "Conc",
                "Prompt",
                "Shares GPU with",
                "tok/s solo -> mixed",
                "TTFT p95",
                "ITL p50",
            ],
            [
                [
                    r.service,
                    str(r.concurrency),
                    str(r.prompt_target),
                    ", ".join(r.shares_gpu_with) or "-",
                    f"{_n(r.solo_tps)} -> {_n(r.mixed_tps)} ({_ratio(r.tps_ratio)})",
                    f"{_n(r.solo_ttft_p95_ms)} -> {_n(r.mixed_ttft_p95_ms)} ms",
                    f"{_n(r.solo_itl_p50_ms, 1)} -> {_n(r.mixed_itl_p50_ms, 1)} ms",
                ]
                for r in rows
            ],
        )
        out += [f"- {line}" for line in where_it_hurts(rows)] + [""]
    if run.skipped or run.notes:
        out += ["## Notes", "", *[f"- {line}" for line in (*run.skipped, *run.notes)], ""]
    out += [
        "## Next",
        "",
        "`qwen-deploy tune SERVICE` suggests max_num_seqs, context and gpu_memory_utilization "
        f"from this run; `qwen-deploy bench compare {run.run_id} latest` shows what changed.",
    ]
    return "\n".join(out) + "\n"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# --- charts -------------------------------------------------------------------------------------


def render_charts(run: BenchRun, folder: Path) -> list[str]:
    """One PNG per tier: throughput, TTFT p95 and ITL p50 against concurrency, a line per
    prompt length (dashed: mixed load). Raises ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = []
    for service in run.services:
        mine = [p for p in run.points if p.service == service]
        fig = Figure(figsize=(13, 3.8), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3)
        panels: tuple[tuple[str, Callable[[Point], float | None]], ...] = (
            ("output tokens/s (all requests)", lambda p: p.throughput_tps),
            ("TTFT p95 (ms)", lambda p: p.ttft_ms.p95),
            ("inter-token latency p50 (ms)", lambda p: p.itl_ms.p50),
        )
        levels = sorted({p.concurrency for p in mine})
        prompts = sorted({p.prompt_target for p in mine})
        for ax, (title, value) in zip(axes, panels, strict=True):
            top = 0.0
            for mode in ("solo", "mixed"):
                for prompt in prompts:
                    line = sorted(
                        (p for p in mine if p.mode == mode and p.prompt_target == prompt),
                        key=lambda p: p.concurrency,
                    )
                    xy = [(p.concurrency, y) for p in line if (y := value(p)) is not None]
                    if not xy:
                        continue
                    top = max(top, *(y for _, y in xy))
                    ax.plot(
                        [x for x, _ in xy],
                        [y for _, y in xy],
                        marker="o",
                        color=f"C{prompts.index(prompt) % 10}",
                        linestyle="-" if mode == "solo" else "--",
                        label=f"{mode}, prompt {prompt}",
                    )
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("concurrent requests")
            if len(levels) > 1:
                ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(c) for c in levels])
            ax.set_ylim(0, top * 1.12 or 1)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        model = next(
            (s["served_model_name"] for s in run.plan.get("services", []) if s["name"] == service),
            "",
        )
        fig.suptitle(f"{service} ({model}), run {run.run_id}, engine {run.engine}", fontsize=11)
        fig.savefig(folder / f"{service}.png")
        names.append(f"{service}.png")
    return names


# --- writing and reading runs -------------------------------------------------------------------


def write_run(directory: DeploymentDir, run: BenchRun, records: Sequence[PointRecord]) -> Path:
    """Write the run's files into a staging folder, then rename it to bench/<run-id>."""
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

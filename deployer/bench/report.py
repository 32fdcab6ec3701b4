"""A run as text, pure: the point table shared by the terminal and the Markdown report, the
points and requests CSVs, and report.md."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from deployer.bench.interference import interference, where_it_hurts
from deployer.bench.run import BenchRun
from deployer.bench.samples import Point, PointRecord, Slo, iter_samples
from deployer.bench.slo import DEFAULT_TARGET, slo_limits

SUMMARY_FIELDS = ("mean", "p50", "p95", "p99", "max")


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _triple(values: tuple[float | None, ...], digits: int = 0) -> str:
    return "/".join(_n(v, digits) for v in values)


def _load(p: Point) -> str:
    """The CONC cell: the concurrency, or for an open loop its rate (and cap)."""
    if p.rate is None:
        return str(p.concurrency)
    cap = f" max {p.concurrency}" if p.concurrency else ""
    return f"{p.rate:g}/s{cap}"


def slo_lines(run: BenchRun) -> list[str]:
    """The SLO asked for and, per curve, the highest load that kept it (empty without one)."""
    slo = Slo.from_dict(run.options.get("slo"))
    if slo is None:
        return []
    target = float(run.options.get("goodput_target") or DEFAULT_TARGET)
    return [f"SLO {slo}: {limit.text(target)}" for limit in slo_limits(run.points, target)]


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
    "TPOT P50/95/99 MS",
    "ITL P50/95/99 MS",
    "E2E P50/95/99 MS",
    "KV PEAK",
]


def point_row(p: Point) -> list[str]:
    """One point as table cells (TOK/S: all requests together; DECODE/S: one request's p50)."""
    return [
        p.service,
        p.mode,
        _load(p),
        _n(p.prompt_tokens) if p.prompt_tokens is not None else str(p.prompt_target),
        f"{p.ok}/{p.requests}",
        _n(p.throughput_tps, 1),
        _n(p.request_rate, 2),
        _n(p.decode_tps.p50, 1),
        _triple((p.ttft_ms.p50, p.ttft_ms.p95, p.ttft_ms.p99)),
        _triple((p.tpot_ms.p50, p.tpot_ms.p95, p.tpot_ms.p99), 1),
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
    # Columns added since the first version go last, so older readers keep their positions.
    summaries = ["ttft_ms", "itl_ms", "e2e_ms", "decode_tps", "tpot_ms"]
    later = ["rate", "burstiness", "dataset", "slo_met", "goodput_rps"]
    header = scalars + [f"{s}_{f}" for s in summaries for f in SUMMARY_FIELDS] + later
    rows = []
    for p in points:
        data = p.to_dict()
        rows.append(
            [data[k] for k in scalars]
            + [data[s][f] for s in summaries for f in SUMMARY_FIELDS]
            + [data[k] for k in later]
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
        "tpot_ms",
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
                None if s.tpot_ms is None else round(s.tpot_ms, 3),
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
    if opts.get("request_rates"):
        out += [
            "Open loop: request rates {r} per second, burstiness {b} (1 = Poisson arrivals), "
            "at most {c} requests in flight; the concurrency list is not used.".format(
                r=", ".join(map(str, opts["request_rates"])),
                b=opts.get("burstiness"),
                c=opts.get("max_concurrency") or "any number of",
            ),
            "",
        ]
    if opts.get("dataset"):
        out += [f"Prompts from the ShareGPT file `{opts['dataset'].get('path')}`.", ""]
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
        "The metrics are defined as `vllm bench serve` defines them: TTFT from sending to the "
        "first token (answer or reasoning), TPOT = (E2E - TTFT) / (output tokens - 1), "
        "excluding the first token, ITL each gap between tokens, E2E (vLLM's E2EL) to the "
        "stream's end. `vllm/` holds each point in `vllm bench serve`'s result JSON.",
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
        "TPOT ms p50/95/99",
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
                    f"{_n(r.solo_tps)} -> {_n(r.mixed_tps)} ({_times(r.tps_ratio)})",
                    f"{_n(r.solo_ttft_p95_ms)} -> {_n(r.mixed_ttft_p95_ms)} ms",
                    f"{_n(r.solo_itl_p50_ms, 1)} -> {_n(r.mixed_itl_p50_ms, 1)} ms",
                ]
                for r in rows
            ],
        )
        out += [f"- {line}" for line in where_it_hurts(rows)] + [""]
    goodput = slo_lines(run)
    if goodput:
        out += ["## Goodput", "", *[f"- {line}" for line in goodput], ""]
    if run.skipped or run.notes:
        out += ["## Notes", "", *[f"- {line}" for line in (*run.skipped, *run.notes)], ""]
    out += [
        "## Next",
        "",
        "`qwen-deploy tune SERVICE` suggests max_num_seqs, context and gpu_memory_utilization "
        f"from this run; `qwen-deploy bench compare {run.run_id} latest` shows what changed.",
    ]
    return "\n".join(out) + "\n"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"

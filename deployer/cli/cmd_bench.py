"""`bench` (run, compare, list) and `tune`: measure what each tier delivers under load, and turn
the measurements into settings."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from deployer import __version__
from deployer.cli.common import (
    AppContext,
    is_terminal,
    json_option,
    pass_app,
    print_json,
    table,
    use_color,
)

if TYPE_CHECKING:
    from deployer.bench.compare import Comparison, MetricDelta
    from deployer.bench.run import BenchRun
    from deployer.bench.runner import SweepProgress
    from deployer.bench.samples import Slo
    from deployer.bench.suggest import Suggestion

DEFAULT_CONCURRENCY = "1,2,4,8,16,32"
DEFAULT_PROMPTS = "128,1024,25%"


class BenchGroup(click.Group):
    """`bench [SERVICE…] [OPTIONS]` is `bench run …`: arguments that do not start with a
    subcommand name (or ask for help) go to `run`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(
    cls=BenchGroup,
    invoke_without_command=True,
    subcommand_metavar="[SERVICE]... [RUN OPTIONS] | COMMAND [ARGS]...",
)
def bench() -> None:
    """Measure each tier under load: throughput, TTFT, ITL, latency per concurrency.

    `qwen-deploy bench [SERVICE…] [OPTIONS]` runs the sweep (it is `bench run`; see
    `qwen-deploy bench run --help`); `bench list` shows saved runs; `bench compare A B`
    prints what changed between two.

    Example: qwen-deploy bench mini --concurrency 1,4,16 --prompt-tokens 512
    """


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    from deployer.bench.sweep import parse_concurrency
    from deployer.errors import BenchError

    try:
        return parse_concurrency(value, f"--{param.name}")
    except BenchError as exc:
        raise click.BadParameter(exc.message) from None


def _prompt_specs(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from deployer.bench.sweep import parse_prompt_specs
    from deployer.errors import BenchError

    try:
        return parse_prompt_specs(value)
    except BenchError as exc:
        raise click.BadParameter(exc.message) from None


def _rates(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...]:
    from deployer.bench.sweep import parse_rates
    from deployer.errors import BenchError

    if value is None:
        return ()
    try:
        return parse_rates(value)
    except BenchError as exc:
        raise click.BadParameter(exc.message) from None


def _slo(ctx: click.Context, param: click.Parameter, value: str | None) -> Slo | None:
    from deployer.bench.slo import parse_slo
    from deployer.errors import BenchError

    if value is None:
        return None
    try:
        return parse_slo(value)
    except BenchError as exc:
        raise click.BadParameter(exc.message) from None


def _progress_printer() -> tuple[Callable[[SweepProgress], None] | None, Callable[[], None]]:
    """A one-line progress display on stderr when it is a terminal; and a function to clear it."""
    if not is_terminal(sys.stderr):
        return None, lambda: None
    width = [0]

    def show(p: SweepProgress) -> None:
        line = (
            f"[{p.number}/{p.total}] {p.label}: {p.done}/{p.limit} requests, "
            f"{p.elapsed_s:.0f}/{p.duration_s:.0f} s"
        )
        click.echo("\r" + line.ljust(width[0]), err=True, nl=False)
        width[0] = max(width[0], len(line))

    def clear() -> None:
        if width[0]:
            click.echo("\r" + " " * width[0] + "\r", err=True, nl=False)

    return show, clear


def render_run(run: BenchRun, path: Path) -> str:
    """The terminal summary of a run: one row per point, errors, mixed-load findings, where."""
    from deployer.bench.interference import interference, where_it_hurts
    from deployer.bench.report import POINT_HEADERS, error_lines, point_row, slo_lines

    lines = [table(POINT_HEADERS, [point_row(p) for p in run.points])]
    errors = error_lines(run.points)
    if errors:
        lines += ["", "errors:", *[f"  {e}" for e in errors]]
    hurts = where_it_hurts(interference(run.points, run.shared()))
    if hurts:
        lines += ["", "mixed load:", *[f"  {h}" for h in hurts]]
    goodput = slo_lines(run)
    if goodput:
        lines += ["", "goodput:", *[f"  {g}" for g in goodput]]
    for note in (*run.skipped, *run.notes):
        lines.append(f"note: {note}")
    lines += ["", f"run {run.run_id} saved in {path} (report.md, run.json, CSV, charts)"]
    return "\n".join(lines)


@bench.command("run")
@click.argument("services", nargs=-1)
@click.option(
    "--concurrency",
    "-c",
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    callback=_int_list,
    help="Concurrent requests per service, comma-separated: one point each.",
)
@click.option(
    "--prompt-tokens",
    "-p",
    default=DEFAULT_PROMPTS,
    show_default=True,
    callback=_prompt_specs,
    help="Prompt lengths: tokens, a percentage of each service's context (25%), or max "
    "(context minus --max-tokens). Exact on the stand-in; vLLM's own count is recorded.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Output tokens per request (sent with ignore_eos, so vLLM produces all of them).",
)
@click.option(
    "--requests-per-point",
    type=click.IntRange(min=1),
    default=None,
    help="Requests per service per point [default: 4 per concurrent request, at least 16].",
)
@click.option(
    "--duration-per-point",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds after which a point sends no new requests (running ones finish).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds one request may take before it counts as an error.",
)
@click.option(
    "--request-rate",
    "request_rates",
    default=None,
    callback=_rates,
    metavar="RATES",
    help="Open loop instead of concurrency: requests per second, comma-separated (inf: all "
    "at once), one point each, as `vllm bench serve --request-rate`.",
)
@click.option(
    "--burstiness",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="With --request-rate: 1 sends Poisson arrivals, below 1 burstier, above 1 steadier.",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1, max=1024),
    default=None,
    help="With --request-rate: at most this many requests in flight [default: no cap].",
)
@click.option(
    "--slo",
    default=None,
    callback=_slo,
    metavar="OBJECTIVES",
    help="Service-level objectives, e.g. ttft=500ms,tpot=50ms,e2el=10s: reports the share "
    "of requests meeting them (goodput) and the highest load that keeps --goodput-target.",
)
@click.option(
    "--goodput-target",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=0.9,
    show_default=True,
    help="With --slo: the share of requests that must meet it.",
)
@click.option(
    "--dataset",
    "dataset_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Prompts from a ShareGPT-format JSON file instead of synthetic ones (--prompt-tokens "
    "is then not used).",
)
@click.option("--mixed", is_flag=True, help="Also load all the services at once, point by point.")
@click.option("--thinking", is_flag=True, help="Leave Qwen3 thinking on (off by default).")
@click.option(
    "--host",
    default=None,
    help="Host to reach the services at [default: each service's bind address, or "
    "127.0.0.1 when it binds every interface].",
)
@json_option
@pass_app
@click.pass_context
def run_cmd(
    ctx: click.Context,
    app: AppContext,
    services: tuple[str, ...],
    concurrency: tuple[int, ...],
    prompt_tokens: tuple[str, ...],
    max_tokens: int,
    requests_per_point: int | None,
    duration_per_point: float,
    timeout_s: float,
    request_rates: tuple[float, ...],
    burstiness: float,
    max_concurrency: int | None,
    slo: Slo | None,
    goodput_target: float,
    dataset_path: Path | None,
    mixed: bool,
    thinking: bool,
    host: str | None,
    as_json: bool,
) -> None:
    """Sweep concurrency x prompt length against the deployment's endpoints and save the run.

    Streams chat completions with the deployment's keys and measures, per request, TTFT,
    TPOT, ITL and E2EL as `vllm bench serve` defines them; saves JSON, CSV, a Markdown
    report, charts and each point in `vllm bench serve`'s JSON under the deployment's bench/
    folder. --request-rate runs an open loop (Poisson or bursty arrivals) instead of fixed
    concurrency; --slo reports goodput. Ctrl-C stops and keeps the points already measured.

    Example: qwen-deploy bench mini micro --mixed --concurrency 1,2,4,8
    """
    import requests

    from deployer.bench.runner import BenchRequest, run_bench

    request = BenchRequest(
        services=services,
        concurrency=concurrency,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        requests_per_point=requests_per_point,
        duration_per_point_s=duration_per_point,
        timeout_s=timeout_s,
        mixed=mixed,
        thinking=thinking,
        host=host,
        request_rates=request_rates,
        burstiness=burstiness,
        max_concurrency=max_concurrency,
        slo=slo,
        goodput_target=goodput_target,
        dataset_path=dataset_path,
    )

    def session_factory() -> requests.Session:
        session = requests.Session()
        session.headers["User-Agent"] = f"qwen-deploy/{__version__} bench"
        return session

    show, clear = _progress_printer()
    try:
        outcome = run_bench(app.deployment_dir, request, session_factory, on_progress=show)
    finally:
        clear()
    if outcome.run is None or outcome.path is None:
        click.echo("interrupted before any point was measured; nothing saved", err=True)
        ctx.exit(130)
        return
    run, path = outcome.run, outcome.path
    if as_json:
        print_json("bench-run", {"run_dir": str(path), **run.to_dict()})
    else:
        click.echo(render_run(run, path))
    if outcome.interrupted:
        click.echo(
            f"interrupted during {outcome.interrupted}: {len(run.points)} point(s) measured "
            f"before it are saved in {path}",
            err=True,
        )
        ctx.exit(130)


def _delta_cell(d: MetricDelta, color: bool) -> str:
    def n(v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"

    if d.metric == "errors":
        return f"{n(d.a)} -> {n(d.b)}".replace(".0", "")
    change = d.change_pct
    text = f"{n(d.a)} -> {n(d.b)}"
    if change is not None:
        text += " (0%)" if abs(change) < 0.5 else f" ({change:+.0f}%)"
    if color and d.better is not None and change is not None and abs(change) >= 5:
        return click.style(text, fg="green" if d.better else "red")
    return text


def render_comparison(cmp: Comparison, a: BenchRun, b: BenchRun, color: bool = False) -> str:
    from deployer.bench.compare import COMPARED

    lines = [
        f"A: {a.run_id} ({a.engine}, {len(a.points)} points)   "
        f"B: {b.run_id} ({b.engine}, {len(b.points)} points)"
    ]
    for label, changes in (("plan", cmp.settings), ("GPUs", cmp.inventory)):
        lines += [f"{label} changed: {c}" for c in changes]
    if not cmp.settings and not cmp.inventory:
        lines.append("same plan and GPUs")
    lines.append("")
    if cmp.points:
        headers = [
            "SERVICE",
            "MODE",
            "CONC",
            "PROMPT",
            *[title.upper() for _, title, _ in COMPARED],
        ]
        rows = [
            [p.service, p.mode, str(p.concurrency), str(p.prompt_target)]
            + [_delta_cell(p.metric(name), color) for name, _, _ in COMPARED]
            for p in cmp.points
        ]
        lines.append(table(headers, rows))
    else:
        lines.append("no point was measured in both runs")
    for label, only in (("only in A", cmp.only_a), ("only in B", cmp.only_b)):
        if only:
            more = f"; and {len(only) - 6} more" if len(only) > 6 else ""
            lines.append(f"{label}: {'; '.join(only[:6])}{more}")
    return "\n".join(lines)


@bench.command("compare")
@click.argument("run_a", default="previous")
@click.argument("run_b", default="latest")
@json_option
@pass_app
def compare_cmd(app: AppContext, run_a: str, run_b: str, as_json: bool) -> None:
    """Print how two saved runs differ, point by point, and what changed in plan and GPUs.

    RUN_A and RUN_B are run ids (or unique prefixes), `latest` or `previous`; without them,
    the previous run is compared with the latest.

    Example: qwen-deploy bench compare 20250131-140502 latest
    """
    from deployer.bench.compare import compare_runs
    from deployer.bench.storage import load_run

    directory = app.deployment_dir
    a, b = load_run(directory, run_a), load_run(directory, run_b)
    cmp = compare_runs(a, b)
    if as_json:
        print_json("bench-compare", cmp.to_dict())
    else:
        click.echo(render_comparison(cmp, a, b, color=use_color()))


@bench.command("list")
@json_option
@pass_app
def list_cmd(app: AppContext, as_json: bool) -> None:
    """List the saved bench runs of the deployment, oldest first.

    Example: qwen-deploy bench list
    """
    from deployer.bench.storage import bench_root, list_runs

    directory = app.deployment_dir
    runs = list_runs(directory)
    if as_json:
        print_json(
            "bench-list",
            {
                "directory": str(bench_root(directory)),
                "runs": [
                    {
                        "run_id": r.run_id,
                        "started_at": r.started_at,
                        "engine": r.engine,
                        "services": list(r.services),
                        "points": len(r.points),
                        "mixed": bool(r.options.get("mixed")),
                        "interrupted": r.interrupted,
                    }
                    for r in runs
                ],
            },
        )
        return
    if not runs:
        click.echo(f"no bench runs in {bench_root(directory)}; run `qwen-deploy bench`")
        return
    rows = [
        [
            r.run_id,
            r.started_at,
            r.engine,
            ",".join(r.services),
            str(len(r.points)),
            "yes" if r.options.get("mixed") else "no",
            "interrupted" if r.interrupted else "",
        ]
        for r in runs
    ]
    click.echo(table(["RUN", "STARTED", "ENGINE", "SERVICES", "POINTS", "MIXED", "NOTE"], rows))


# --- tune ---------------------------------------------------------------------------------------


def render_suggestions(suggestions: Sequence[Suggestion], notes: Sequence[str]) -> str:
    from deployer.bench.textfmt import setting_value

    rows = [
        [s.setting, setting_value(s.current), setting_value(s.suggested) if s.changed else "(keep)"]
        for s in suggestions
    ]
    lines = [table(["SETTING", "CURRENT", "SUGGESTED"], rows), ""]
    for s in suggestions:
        lines.append(
            click.wrap_text(
                f"{s.setting}: {s.reason}.", width=100, subsequent_indent="  ", initial_indent=""
            )
        )
    lines += ["", *notes]
    return "\n".join(line for line in lines).rstrip("\n")


@click.command()
@click.argument("service")
@click.option(
    "--run",
    "run_ref",
    default=None,
    help="Bench run to use: an id, `latest` or `previous` [default: the latest run that "
    "measured SERVICE].",
)
@click.option(
    "--prompt-tokens",
    "prompt_target",
    type=click.IntRange(min=1),
    default=None,
    help="Use the points of this prompt length [default: the one measured at most "
    "concurrency levels].",
)
@click.option(
    "--write-profile",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Write the changed settings into this profile YAML (the old file is kept as .bak).",
)
@json_option
@pass_app
def tune(
    app: AppContext,
    service: str,
    run_ref: str | None,
    prompt_target: int | None,
    write_profile: Path | None,
    as_json: bool,
) -> None:
    """Suggest max_num_seqs, context and gpu_memory_utilization for SERVICE from a bench run.

    Each suggestion is explained in numbers: the measured throughput knee, TTFT and ITL
    growth, the plan's KV capacity and the KV usage measured. --write-profile applies them.

    Example: qwen-deploy tune mini --write-profile profiles/tri-tier.yaml
    """
    from deployer.bench.tune import TuneRequest
    from deployer.bench.tune import tune as tune_service

    request = TuneRequest(service, run_ref, prompt_target, write_profile)
    result = tune_service(app.deployment_dir, request)
    if as_json:
        print_json("tune", result.to_dict())
    else:
        click.echo(render_suggestions(result.suggestions, result.notes))


COMMANDS = [bench, tune]

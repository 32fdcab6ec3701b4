"""The pure half of the pipeline: plan and render (nothing is started)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from deployer.cli.common import (
    AppContext,
    allow_unauthenticated_option,
    json_option,
    make_plan,
    pass_app,
    plan_input_options,
    print_json,
    table,
    warn_unauthenticated,
)
from deployer.cli.targets import render_kubernetes_dir, render_target_options
from deployer.gpus import GIB

if TYPE_CHECKING:
    from deployer.startup_check import StartupComparison


@click.command()
@plan_input_options
@json_option
@click.option(
    "--check",
    is_flag=True,
    help="Compare the plan with the start-up figures vLLM printed for this deployment "
    "(recorded by `up`); warn past 5 %.",
)
@pass_app
def plan(
    app: AppContext,
    profile_name: str,
    gpus_file: Path | None,
    engine: str,
    models_files: tuple[Path, ...],
    image: str | None,
    as_json: bool,
    check: bool,
) -> None:
    """Show placement, tensor parallel, memory fraction and context per service.

    Nothing is started or written. Fails with the reason in numbers, and the fixes
    that would work, when the profile does not fit the GPUs.

    Example: qwen-deploy plan --profile tri-tier --gpus-file box.json
    """
    from deployer.startup_check import check_plan, expected_lines, recorded_figures

    planned = make_plan(app, profile_name, gpus_file, engine, models_files, image)
    result = planned.plan
    checks = (
        check_plan(result.services, recorded_figures(app.deployment_dir.load_state()))
        if check
        else ()
    )
    if as_json:
        extra: dict[str, object] = {"startup_check": [c.to_dict() for c in checks]} if check else {}
        if result.nodes:
            extra["ledger"] = [
                {**dataclasses.asdict(row), "spare": row.spare} for row in result.ledger()
            ]
        print_json("plan", {**result.to_dict(), "auto_reasons": list(planned.reasons), **extra})
        return
    for reason in planned.reasons:
        click.echo(reason)
    gpu_count = len(result.gpus) + sum(len(n.gpus) for n in result.nodes)
    boxes = f" on {len(result.nodes)} node(s)" if result.nodes else ""
    click.echo(
        f"profile {result.profile} on {gpu_count} GPU(s){boxes}, vLLM {result.vllm_version} "
        f"({result.image})"
    )
    rows = []
    for s in result.services:
        rows.append(
            ([s.node or "-"] if result.nodes else [])
            + [
                s.name,
                s.model,
                ",".join(map(str, s.gpus)),
                str(s.tensor_parallel_size),
                f"{s.gpu_memory_utilization:g}" + ("" if s.utilization_planned else " (fixed)"),
                str(s.max_model_len),
                str(s.max_num_seqs),
                s.kv_cache_dtype,
                f"{s.kv_cache_tokens:,}",
                f"{s.max_concurrency:.2f}x",
                str(s.port),
            ]
        )
    headers = ["SERVICE", "MODEL", "GPUS", "TP", "GPU-MEM", "CONTEXT", "SEQS", "KV-DTYPE",
               "KV-TOKENS", "FULL-CTX", "PORT"]  # fmt: skip
    headers = (["NODE"] if result.nodes else []) + headers
    click.echo(table(headers, rows))
    click.echo(
        "\nmemory per GPU (GiB): budget = weights + activations + non-torch + graphs + "
        "sampler state + KV"
    )
    for s in result.services:
        m = s.memory
        click.echo(
            f"  {s.name}: {m.budget / GIB:.2f} = {m.weights / GIB:.2f} + "
            f"{m.activation_peak / GIB:.2f} + {m.non_torch / GIB:.2f} + "
            f"{m.cuda_graphs / GIB:.2f} + {m.sampler_state / GIB:.2f} + {m.kv_cache / GIB:.2f}"
        )
    click.echo("\nvLLM should print at start-up (compare with `docker logs`):")
    for s in result.services:
        for line in expected_lines(s):
            click.echo(f"  {s.name}: {line}")
    if result.nodes:
        click.echo("\nledger per node and GPU (GiB): free = what the services ask + spare")
        for row in result.ledger():
            asks = " + ".join(f"{name} {size / GIB:.2f}" for name, size in row.asks)
            click.echo(
                f"  {row.node} GPU {row.index} ({row.name}): {row.free / GIB:.2f} = {asks} + "
                f"{row.spare / GIB:.2f}"
            )
    order = " -> ".join("[" + ", ".join(wave) + "]" for wave in result.start_waves)
    if result.gateway is not None:
        order += " -> [gateway]"
    click.echo(f"start order: {order}")
    if result.gateway is not None:
        gateway = result.gateway
        keys = ", ".join(
            f"{k.name} ({'all tiers' if k.tiers is None else '/'.join(k.tiers)}"
            f"{', admin' if k.admin else ''})"
            for k in gateway.keys
        )
        click.echo(
            f"gateway: {gateway.bind}:{gateway.port} in front of "
            f"{', '.join(s.name for s in result.services)}, no GPU; keys {keys}"
        )
    for warning in result.warnings:
        click.echo(f"note: {warning}")
    if check:
        _print_checks(app.deployment, checks)


def _print_checks(deployment: str, checks: tuple[StartupComparison, ...]) -> None:
    if not checks:
        click.echo(
            f"\nno start-up figures recorded for deployment {deployment!r} yet (`up` records "
            "them when vLLM is the engine)"
        )
        return
    rows = [
        [
            c.service,
            f.figure,
            f"{f.predicted:,.2f}",
            "-" if f.actual is None else f"{f.actual:,.2f}",
            "-" if f.diff_percent is None else f"{f.diff_percent:+.1f}%",
        ]
        for c in checks
        for f in c.figures
    ]
    click.echo("\n" + table(["SERVICE", "FIGURE", "PLANNED", "VLLM", "DIFF"], rows))
    for c in checks:
        for warning in c.warnings:
            click.echo(f"warning: {warning}")


@click.command()
@plan_input_options
@allow_unauthenticated_option
@render_target_options
@pass_app
def render(
    app: AppContext,
    profile_name: str,
    gpus_file: Path | None,
    engine: str,
    models_files: tuple[Path, ...],
    image: str | None,
    allow_unauthenticated: bool,
    target: str,
    output: Path | None,
    model_cache: str,
    storage_class: str | None,
    pin_gpu_product: bool,
) -> None:
    """Write the deployment directory (compose.yaml, .env, plan.json); start nothing.

    The compose file works on its own: `docker compose up -d` in that directory on a GPU
    host. API keys go only to .env (mode 0600).

    With --target kubernetes: manifests and a kustomization.yaml in kubernetes/ (or
    --output DIR) for `kubectl apply -k`; keys only in its secrets.env (mode 0600).

    Example: qwen-deploy render --profile tri-tier --gpus-file box.json
    """
    from deployer.render import render_deployment

    planned = make_plan(app, profile_name, gpus_file, engine, models_files, image)
    if planned.plan.nodes and target != "kubernetes":
        from deployer.errors import TargetUnsupported

        raise TargetUnsupported(
            f"a plan over {len(planned.plan.nodes)} nodes cannot be one compose file: compose "
            "runs on one host",
            hint="render it with --target kubernetes, or plan one box (one --gpus-file)",
        )
    if target == "kubernetes":
        render_kubernetes_dir(
            app, planned, allow_unauthenticated, output, model_cache, storage_class,
            pin_gpu_product,
        )  # fmt: skip
        return
    from deployer.hostnet import check_binds_here

    check_binds_here(planned.plan)  # the directory is on this host: so are its ports
    directory = app.deployment_dir
    result = render_deployment(
        directory, planned.plan, planned.profile, os.environ, allow_unauthenticated
    )
    # The same notes as `plan` and `up` (an open bind, a shared GPU), once the files are there.
    for warning in result.warnings:
        click.echo(f"note: {warning}", err=True)
    warn_unauthenticated(planned.plan)
    click.echo(f"wrote {directory.path}/compose.yaml, .env and plan.json")
    # Both compose versions find compose.yaml, and the project name in .env, from there.
    click.echo(f"start it with: cd {directory.path} && docker compose up -d (or docker-compose)")


COMMANDS = [plan, render]

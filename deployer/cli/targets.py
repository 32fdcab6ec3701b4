"""Options and output of `render --target kubernetes` (the shell over deployer.targets)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from deployer.cli.common import AppContext, PlannedProfile, warn_unauthenticated
from deployer.targets import Target

if TYPE_CHECKING:
    from deployer.plan import DeploymentPlan

F = TypeVar("F", bound=Callable[..., Any])


def _model_cache(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value != "pvc" and not value.startswith("/"):
        raise click.BadParameter(f"{value!r} is neither 'pvc' nor an absolute host path")
    return value


def render_target_options(func: F) -> F:
    """--target, --output and the Kubernetes choices the plan does not make."""
    options = [
        click.option(
            "--target",
            type=click.Choice(["compose", "kubernetes"]),
            default="compose",
            show_default=True,
            help="compose: compose.yaml for one box; kubernetes: manifests and a "
            "kustomization.yaml for `kubectl apply -k`.",
        ),
        click.option(
            "--output",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Directory for the kubernetes target [default: kubernetes/ in the deployment "
            "directory].",
        ),
        click.option(
            "--model-cache",
            default="pvc",
            callback=_model_cache,
            show_default=True,
            help="kubernetes: 'pvc' (one PersistentVolumeClaim per checkpoint, sized from its "
            "weights) or an absolute host path mounted on every GPU node.",
        ),
        click.option(
            "--storage-class",
            default=None,
            help="kubernetes: storageClassName of the model-cache claims.",
        ),
        click.option(
            "--pin-gpu-product",
            is_flag=True,
            help="kubernetes: also require the planned GPU's product name "
            "(nvidia.com/gpu.product), not just its memory and compute capability.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def render_kubernetes_dir(
    app: AppContext,
    planned: PlannedProfile,
    allow_unauthenticated: bool,
    output: Path | None,
    model_cache: str,
    storage_class: str | None,
    pin_gpu_product: bool,
) -> None:
    """Keys into the deployment's .env (kept across runs), manifests into the output directory."""
    from deployer.deployment import ENV_FILE, render_env, resolve_api_keys
    from deployer.targets.kubernetes import KUBERNETES_DIR, KubernetesOptions, render_kubernetes
    from deployer.targets.output import write_kubernetes

    directory = app.deployment_dir
    options = KubernetesOptions(
        model_cache=model_cache, storage_class=storage_class, pin_gpu_product=pin_gpu_product
    )
    with directory.lock():
        keys = resolve_api_keys(
            planned.plan, planned.profile, directory.read_env(), os.environ, allow_unauthenticated
        )
        result = render_kubernetes(planned.plan, keys, options)  # refuses before any write
        warn_unauthenticated(planned.plan)
        directory.write_files({ENV_FILE: render_env(keys)})
        target_dir = output or directory.path / KUBERNETES_DIR
        write_kubernetes(result, target_dir)
    click.echo(f"wrote {len(result.manifests)} manifests and kustomization.yaml to {target_dir}")
    for requirement in result.requirements:
        click.echo(f"the cluster needs: {requirement}")
    click.echo(f"deploy it with: kubectl apply -k {target_dir}")


# --- up --target swarm and the commands that follow it -------------------------------------


def up_target_options(func: F) -> F:
    """--target and --skip-gpu-check of `up`."""
    func = click.option(
        "--skip-gpu-check",
        is_flag=True,
        help="swarm, stand-in engine only: do not require the node's NVIDIA-GPU generic "
        "resources and nvidia default runtime (the stand-in uses no GPU).",
    )(func)
    return click.option(
        "--target",
        type=click.Choice(["compose", "swarm"]),
        default=None,
        help="compose: containers on this engine; swarm: services on the swarm this engine "
        "manages [default: the deployment's recorded target, else compose].",
    )(func)


def up_target(app: AppContext, requested: str | None, engine: str, skip_gpu_check: bool) -> Target:
    """The target `up` deploys to: as asked, else as recorded. Switching target is refused
    while the other one still runs something of this deployment."""
    from deployer.cli.common import docker_client
    from deployer.errors import StateError
    from deployer.targets.record import read_target

    if skip_gpu_check and engine != "stand-in":
        raise click.UsageError("--skip-gpu-check is only for --engine stand-in (it uses no GPU)")
    recorded, _ = read_target(app.deployment_dir.path)
    target = Target(requested) if requested else recorded
    if skip_gpu_check and target != Target.SWARM:
        raise click.UsageError("--skip-gpu-check is only for --target swarm")
    if target != recorded and _running_on(docker_client(), app.deployment, recorded):
        raise StateError(
            f"deployment {app.deployment!r} runs on {recorded}; it cannot move to {target} "
            "while it does",
            hint=f"`qwen-deploy down` first, then `qwen-deploy up --target {target}`",
        )
    return target


def runtime_for(
    app: AppContext,
    target: str | None = None,
    engine: str = "",
    skip_gpu_check: bool = False,
    plan: DeploymentPlan | None = None,
) -> Any:
    """deployer.runtime, or its Swarm counterpart (same functions) when `up --target swarm`
    or the deployment's recorded target says so. A plan over several boxes (`plan`, from
    `up`) runs only on Swarm: one engine cannot start another box's containers."""
    from deployer import runtime
    from deployer.errors import TargetUnsupported

    chosen = up_target(app, target, engine, skip_gpu_check)
    if plan is not None and plan.nodes and chosen != Target.SWARM:
        raise TargetUnsupported(
            f"a plan placed on named nodes ({', '.join(plan.node_names())}) cannot run on "
            f"one Docker engine ({chosen})",
            hint="deploy it with `up --target swarm` (each node a member of the swarm), or "
            "render it with `render --target kubernetes`",
        )
    if chosen == Target.SWARM:
        from deployer.targets.swarm_runtime import SwarmRuntime

        return SwarmRuntime(skip_gpu_check)
    return runtime


def status_client(runtime: Any) -> Any:
    """The client `status` reads through: the compose runtime's containers through the small
    Engine API client where it can (the Docker SDK would be most of the command's start-up),
    Swarm's services through the SDK."""
    from deployer import runtime as compose
    from deployer.cli.common import docker_client, engine_client

    return engine_client() if runtime is compose else docker_client()


def _running_on(client: Any, deployment: str, target: Target) -> bool:
    if target == Target.SWARM:
        from deployer.targets.swarm import existing_services

        swarm = (client.info().get("Swarm") or {}).get("LocalNodeState") == "active"
        return swarm and bool(existing_services(client, deployment))
    from deployer.runtime.observed import containers

    return bool(containers(client, deployment))

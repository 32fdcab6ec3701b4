"""`up`, `down`, `status`, `logs` and `restart`: the commands that touch containers."""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from deployer.cli.common import (
    AppContext,
    FiniteFloat,
    allow_unauthenticated_option,
    docker_client,
    is_terminal,
    json_option,
    make_plan,
    pass_app,
    plan_input_options,
    print_json,
    use_color,
    warn_unauthenticated,
)
from deployer.cli.runtime_view import (
    ProgressPrinter,
    dry_run_table,
    echo_failures,
    result_table,
    say_interrupted,
    startup_table,
    status_table,
    summary,
)
from deployer.cli.targets import runtime_for, status_client, up_target_options

if TYPE_CHECKING:
    from collections.abc import Callable

    from deployer.deployment import DeploymentDir
    from deployer.plan import DeploymentPlan
    from deployer.runtime import ApplyResult
    from deployer.spec import ContainerSpec

T = TypeVar("T")


def wait_option(func: Any) -> Any:
    return click.option(
        "--wait",
        "wait_s",
        type=FiniteFloat(min=0),
        default=0,
        show_default=True,
        metavar="SECONDS",
        help="Wait this long for another qwen-deploy command on the deployment to finish.",
    )(func)


def timeout_option(func: Any) -> Any:
    return click.option(
        "--timeout",
        "timeout_s",
        type=FiniteFloat(min=1),
        default=None,
        metavar="SECONDS",
        help="Seconds each service may take to answer /v1/models once started "
        "[default: the profile's startup_timeout_s].",
    )(func)


def _read_token_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> str | None:
    if value is None:
        return None
    try:
        token = value.read_text().strip()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise click.BadParameter(f"{value} is not a text file") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise click.BadParameter(f"{value} must hold one token on one line")
    return token


def hf_token_file_option(func: Any) -> Any:
    return click.option(
        "--hf-token-file",
        "hf_token",
        type=click.Path(dir_okay=False, path_type=Path),
        callback=_read_token_file,
        envvar="QWEN_DEPLOY_HF_TOKEN_FILE",
        metavar="FILE",
        help="Read the Hugging Face token (gated models) from FILE instead of $HF_TOKEN; it is "
        "passed to the containers and never written to compose.yaml, .env or labels.",
    )(func)


@click.command()
@plan_input_options
@click.option(
    "--dry-run", is_flag=True, help="Print what would be created, recreated, kept and removed."
)
@timeout_option
@wait_option
@click.option("--no-verify", is_flag=True, help="Skip the smoke requests once services are up.")
@click.option(
    "--share-name",
    is_flag=True,
    help="Deploy even though containers of another compose project (not made by qwen-deploy) "
    "carry this deployment's name; they are shown as foreign and left alone.",
)
@allow_unauthenticated_option
@hf_token_file_option
@up_target_options
@pass_app
def up(
    app: AppContext,
    profile_name: str,
    gpus_file: Path | None,
    engine: str,
    models_files: tuple[Path, ...],
    image: str | None,
    dry_run: bool,
    timeout_s: float | None,
    wait_s: float,
    no_verify: bool,
    share_name: bool,
    allow_unauthenticated: bool,
    hf_token: str | None,
    target: str | None,
    skip_gpu_check: bool,
) -> None:
    """Render the deployment and start it, touching only what changed; then verify it.

    Services on separate GPUs start in parallel; services sharing a GPU start one after
    another, each once the previous one answers /v1/models. Running `up` again with the same
    plan changes nothing. Ctrl-C stops waiting; started containers keep running.

    With --target swarm: services on the swarm this engine manages (see the README).

    Example: qwen-deploy up --profile tri-tier
    """
    planned = make_plan(app, profile_name, gpus_file, engine, models_files, image)
    plan = planned.plan
    from deployer.hostnet import check_binds_here

    check_binds_here(plan)  # before anything is written or created (D10)
    runtime = runtime_for(app, target, engine, skip_gpu_check, plan=plan)
    request = runtime.UpRequest(
        directory=app.deployment_dir,
        profile=planned.profile,
        plan=plan,
        timeout_s=timeout_s,
        wait_s=wait_s,
        allow_unauthenticated=allow_unauthenticated,
        hf_token=hf_token,
        share_name=share_name,
    )
    if dry_run:
        actions = runtime.up_dry_run(docker_client(), request)
        _notes(plan)
        click.echo(dry_run_table(actions))
        click.echo("dry run: nothing was changed")
        return
    client = docker_client()
    printer = ProgressPrinter(list(plan.unit_names()))
    with _sigterm_interrupts():
        # Notes only for a plan that passed the checks and is going to be applied: errors
        # stay one line.
        done = _interruptible(
            printer, lambda: runtime.up(client, request, printer, lambda _: _notes(plan))
        )
        _report(done.result, plan)
        if not no_verify:
            _verify(app.deployment_dir, plan, done.keys)


def _interruptible(printer: ProgressPrinter, run: Callable[[], T]) -> T:
    """Run an up or restart; Ctrl-C or SIGTERM names what was started before it propagates."""
    from deployer.runtime import Terminated

    try:
        return run()
    except Terminated:
        say_interrupted(printer.board, terminated=True)
        raise
    except KeyboardInterrupt:
        say_interrupted(printer.board)
        raise


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (systemd, `timeout`, a cancelled CI job) stops `up`/`restart` the way Ctrl-C
    does instead of killing it mid-way; it exits 143 after saying what was left running."""
    from deployer.errors import ExitCode
    from deployer.runtime import Terminated

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        yield
        return
    try:
        yield
    except Terminated:
        click.echo("terminated", err=True)
        raise SystemExit(ExitCode.TERMINATED) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(result: ApplyResult, plan: DeploymentPlan) -> None:
    """Print an up's or restart's table and summary; raise DeployFailed on failure."""
    from deployer import runtime

    click.echo(result_table(result, plan))
    click.echo(summary(result))
    if not result.ok:
        echo_failures(result)
        raise runtime.failure_error(result)


def _notes(plan: DeploymentPlan) -> None:
    for warning in plan.warnings:
        click.echo(f"note: {warning}", err=True)
    warn_unauthenticated(plan)


def _verify(directory: DeploymentDir, plan: DeploymentPlan, keys: Mapping[str, str]) -> None:
    from deployer.cli.cmd_verify import render_report_table, run_verification
    from deployer.verify import failure_error

    report = run_verification(directory, plan, keys)
    click.echo("")
    click.echo(render_report_table(report, color=use_color()))
    if not report.ok:
        raise failure_error(report)


@click.command()
@wait_option
@pass_app
def down(app: AppContext, wait_s: float) -> None:
    """Stop and remove the deployment's containers and network.

    The model cache volume and the deployment directory (compose.yaml, .env, plan.json)
    stay, so `up` starts it again without downloading anything.

    Example: qwen-deploy down
    """
    runtime = runtime_for(app)
    from deployer.errors import StateError
    from deployer.spec import HF_CACHE_VOLUME

    directory = app.deployment_dir
    plan = None
    if directory.exists():
        try:
            plan = directory.load_plan()
        except StateError as exc:  # a broken plan.json must not keep the containers running
            click.echo(f"warning: {exc}; stopping the containers by their labels", err=True)
    client = docker_client()
    if directory.path.is_dir():
        with directory.lock(wait_s):
            result = runtime.down(client, app.deployment, plan)
    else:
        result = runtime.down(client, app.deployment, plan)
    for name in result.left:
        click.echo(f"left {name} alone")
    if not result.removed and not result.networks:
        click.echo(f"{app.deployment}: nothing to remove")
        return
    for name in result.removed:
        click.echo(f"removed container {name}")
    for name in result.networks:
        click.echo(f"removed network {name}")
    kept = f"kept volume {HF_CACHE_VOLUME}"
    if directory.path.is_dir():
        kept += f" and {directory.path}"
    click.echo(kept)


def _status_once(app: AppContext, as_json: bool, json_lines: bool = False) -> None:
    runtime = runtime_for(app)
    directory = app.deployment_dir
    plan = directory.load_plan() if directory.exists() else None
    specs: tuple[ContainerSpec, ...] = ()
    if plan:
        from deployer.spec import deployment_specs

        specs = deployment_specs(plan, str(directory.path))
    state = directory.load_state()
    verify = state.get("verify", {})
    now = datetime.now(timezone.utc)
    rows = runtime.service_statuses(
        status_client(runtime),  # after the plan: its errors come first
        app.deployment,
        plan,
        specs=specs,
        # A lost .env is not status's business: it shows what runs (read_env explains elsewhere).
        env=runtime.runtime_env(directory.read_env(missing_ok=True)) if plan else None,
        verify=verify if isinstance(verify, dict) else {},
        now=now,
    )
    summary = runtime.status_summary(app.deployment, rows)
    # Planned against actual (issue 11), for services whose container is there.
    present = {r.service for r in rows if r.container and r.in_plan}
    # Without a plan there is nothing to compare (nor startup_check to import).
    comparisons = runtime.startup_comparisons(plan, state) if plan else ()
    startup = [c for c in comparisons if c.service in present]
    if as_json:
        print_json(
            "status",
            {
                "deployment": app.deployment,
                "at": now.isoformat(timespec="seconds"),
                "services": [r.to_dict() for r in rows],
                "summary": summary,
                "startup": [c.to_dict() for c in startup],
            },
            one_line=json_lines,  # --watch --json: JSON Lines, one document per refresh
        )
        return
    if not rows:
        click.echo(f"{app.deployment}: no plan and no containers (run `qwen-deploy up`)")
        return
    click.echo(status_table(rows, use_color(), now))
    if plan and not directory.file(".env").exists():  # D11: say what happened, not "older"
        click.echo(
            "* .env is missing: the containers still run with their keys; `qwen-deploy "
            "endpoints` says how to restore it (or delete plan.json and `up` for new keys)"
        )
    elif any(r.up_to_date is False for r in rows):
        click.echo("* the container runs an older configuration than plan.json")
    click.echo(summary)
    if startup:
        click.echo("")
        click.echo(startup_table(startup, use_color()))
        for comparison in startup:
            for warning in comparison.warnings:
                click.echo(f"warning: {warning}", err=True)


@click.command()
@json_option
@click.option(
    "--watch",
    "watch_s",
    type=FiniteFloat(min=0.5),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C.",
)
@pass_app
def status(app: AppContext, as_json: bool, watch_s: float | None) -> None:
    """Show each service's container: state, health, uptime, restarts, last verification.

    Read from the engine's labels, so it is right after a reboot or when containers died;
    planned services without a container show as missing.

    Example: qwen-deploy status --watch 2
    """
    if watch_s is None:
        _status_once(app, as_json)
        return
    try:
        while True:
            if is_terminal() and not as_json:
                click.clear()
            _status_once(app, as_json, json_lines=True)
            time.sleep(watch_s)
    except KeyboardInterrupt:
        return


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str, now: datetime | None = None) -> datetime | int:
    """`10m`, `2h`, `30s`, `1d`, a Unix time or an ISO 8601 date/time."""
    now = now or datetime.now(timezone.utc)
    hint = "use 10m, 2h, 30s, 1d, a Unix time or an ISO date/time"
    try:
        match = _RELATIVE.match(text.strip())
        if match:
            unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
            return now - timedelta(**{unit: float(match.group(1))})
        if text.strip().isdigit():
            datetime.fromtimestamp(int(text), timezone.utc)  # in range for the engine too
            return int(text)
        try:
            stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(f"{text!r}: {hint}", param_hint="--since") from None
        return stamp if stamp.tzinfo else stamp.astimezone()
    except (OverflowError, OSError, ValueError):
        # A time before year 1 or after 9999 (`99999999999d`): no log line is that old.
        raise click.BadParameter(
            f"{text!r} is out of range: {hint}", param_hint="--since"
        ) from None


@click.command()
@click.argument("services", nargs=-1)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option(
    "--tail",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Only the last N lines of each container [default: all].",
)
@click.option("--since", default=None, help="Only lines since 10m, 2h, 30s, 1d or a date/time.")
@pass_app
def logs(
    app: AppContext, services: tuple[str, ...], follow: bool, tail: int | None, since: str | None
) -> None:
    """Print the logs of one service (name or alias), or of all, each line prefixed with its
    service.

    Example: qwen-deploy logs mini --tail 50 -f
    """
    runtime = runtime_for(app)

    directory = app.deployment_dir
    names = list(services)
    if directory.exists():
        plan = directory.load_plan()
        names = list(dict.fromkeys(plan.unit_name(n) for n in services))
    since_value = parse_since(since) if since else None
    client = docker_client()
    try:
        for line in runtime.logs(
            client, app.deployment, names, follow=follow, tail=tail, since=since_value
        ):
            click.echo(line)
    except KeyboardInterrupt:
        return


@click.command()
@click.argument("services", nargs=-1)
@timeout_option
@wait_option
@pass_app
def restart(
    app: AppContext, services: tuple[str, ...], timeout_s: float | None, wait_s: float
) -> None:
    """Restart services (names or aliases; all when none is given) in start order, and wait
    until each answers /v1/models again.

    Example: qwen-deploy restart mini
    """
    runtime = runtime_for(app)

    directory = app.deployment_dir
    plan = directory.load_plan()
    chosen = list(dict.fromkeys(plan.unit_name(n) for n in services))
    client = docker_client()
    request = runtime.RestartRequest(directory, plan, chosen, timeout_s=timeout_s, wait_s=wait_s)
    printer = ProgressPrinter(chosen or list(plan.unit_names()))
    with _sigterm_interrupts():
        result = _interruptible(
            printer, lambda: runtime.restart_deployment(client, request, printer)
        )
        _report(result, plan)


COMMANDS = [up, down, status, logs, restart]

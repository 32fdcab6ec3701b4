"""`verify` and `endpoints`: smoke requests against the running services, and their usage guide."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import click

from deployer import __version__
from deployer.cli.common import (
    AppContext,
    FiniteFloat,
    json_option,
    pass_app,
    print_json,
    table,
    use_color,
)
from deployer.deployment import ENV_FILE, DeploymentDir

if TYPE_CHECKING:
    from deployer.plan import DeploymentPlan
    from deployer.verify import CheckResult, VerificationReport

DEFAULT_DEADLINE_S = 120.0  # same as deployer.verify's; kept here so --help imports no requests


def run_verification(
    directory: DeploymentDir,
    plan: DeploymentPlan,
    keys: Mapping[str, str],
    services: list[str] | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    host: str | None = None,
) -> VerificationReport:
    """Verify the services (all when None) and record the result in the deployment's state;
    `up` calls this after starting containers."""
    import requests

    from deployer.verify import record, verify_plan

    states = container_states(plan.deployment)
    with requests.Session() as session:
        session.headers["User-Agent"] = f"qwen-deploy/{__version__} verify"
        report = verify_plan(
            session,
            plan,
            keys,
            services,
            host=host,
            deadline_s=deadline_s,
            container_states=states,
        )
    record(directory, report)
    return report


def container_states(deployment: str) -> dict[str, str] | None:
    """Service -> the engine's state of its container, or None where no engine answers:
    verification works without Docker, the states only sharpen its advice."""
    from deployer.errors import DeployError

    try:
        from deployer import runtime
        from deployer.cli.common import docker_client

        return {o.service: str(o.state) for o in runtime.observe(docker_client(), deployment)}
    except DeployError:
        return None


def _result_cell(result: CheckResult, color: bool) -> str:
    if result.skipped:
        text, fg = ("skip" if result.ok else "not run"), "yellow"
    elif result.ok:
        text, fg = "ok", "green"
    else:
        text, fg = "FAIL", "red"
    return click.style(text, fg=fg, bold=not result.ok) if color else text


def _time_cell(result: CheckResult) -> str:
    if result.skipped:
        return "-"
    ms = result.elapsed_ms
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def render_report_table(report: VerificationReport, color: bool = False) -> str:
    """One row per service x check with its result, time and detail; then a summary line."""
    rows = [
        [s.service, c.check, _result_cell(c, color), _time_cell(c), c.detail]
        for s in report.services
        for c in s.checks
    ]
    lines = [table(["SERVICE", "CHECK", "RESULT", "TIME", "DETAIL"], rows), ""]
    total = sum(len(s.checks) for s in report.services)
    failed = len(report.failures)
    seconds = report.elapsed_ms / 1000
    if report.ok:
        lines.append(f"{len(report.services)} service(s), {total} checks passed in {seconds:.1f} s")
    else:
        lines.append(f"{failed} of {total} checks failed in {seconds:.1f} s")
    return "\n".join(lines)


@click.command()
@click.argument("services", nargs=-1)
@json_option
@click.option(
    "--deadline",
    "deadline_s",
    type=FiniteFloat(min=1),
    default=DEFAULT_DEADLINE_S,
    show_default=True,
    help="Seconds each service gets, retries included (one still loading is retried until then).",
)
@click.option(
    "--host",
    default=None,
    help="Host to reach the services at [default: each service's bind address, or "
    "127.0.0.1 when it binds every interface].",
)
@pass_app
def verify(
    app: AppContext, services: tuple[str, ...], as_json: bool, deadline_s: float, host: str | None
) -> None:
    """Check each service with real requests: health, models, auth, chat, streaming, thinking.

    Retries while a service is still loading, up to --deadline. Exits non-zero when any
    check fails; the result is saved for `status`.

    Example: qwen-deploy verify mini --deadline 300
    """
    from deployer.verify import failure_error

    directory = app.deployment_dir
    plan = directory.load_plan()
    for name in services:  # unknown names fail before any request
        plan.unit_name(name)
    report = run_verification(
        directory, plan, directory.read_env(), list(services) or None, deadline_s, host
    )
    if as_json:
        print_json("verification", report.to_dict())
    else:
        click.echo(render_report_table(report, color=use_color()))
    if not report.ok:
        raise failure_error(report)


@click.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "json"]),
    default="markdown",
    show_default=True,
    help="Markdown usage guide, or the same content as JSON.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the same as --format json).")
@click.option("--show-keys", is_flag=True, help="Print the API keys in full (masked otherwise).")
@click.option(
    "--host",
    default=None,
    help="Host name clients use in the URLs [default: each service's bind address, or "
    "127.0.0.1 when it binds every interface].",
)
@pass_app
def endpoints(app: AppContext, fmt: str, as_json: bool, show_keys: bool, host: str | None) -> None:
    """Print the usage guide of the deployment: URLs, models, keys, examples, advice.

    Example: qwen-deploy endpoints --format markdown > ENDPOINTS.md
    """
    from deployer.endpoints import endpoints_guide, to_markdown

    directory = app.deployment_dir
    env_file = str(directory.file(ENV_FILE))
    guide = endpoints_guide(directory.load_plan(), directory.read_env(), show_keys, host, env_file)
    if fmt == "json" or as_json:
        print_json("endpoints", guide)
    else:
        click.echo(to_markdown(guide), nl=False)


COMMANDS = [verify, endpoints]

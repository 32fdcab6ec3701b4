"""What every command shares: the context object, common options and the pipeline steps that
turn options into library inputs. Heavy imports (docker, requests) stay inside functions so
that `--help` and `status` start fast."""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    import docker

    from deployer.catalog import Catalog
    from deployer.deployment import DeploymentDir
    from deployer.gpus import GpuInventory
    from deployer.planner import DeploymentPlan
    from deployer.profiles import Profile
    from deployer.runtime.observed import EngineClient

F = TypeVar("F", bound=Callable[..., Any])
JSON_SCHEMA_VERSION = 1


class FiniteFloat(click.FloatRange):
    """A FloatRange that refuses NaN and infinities (FloatRange lets NaN through: every
    comparison with it is false) with one usage line, before a command can crash on them."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@dataclass
class AppContext:
    """What every command gets from the group: the home, the deployment's name, --debug."""

    home: Path
    deployment: str
    debug: bool

    @property
    def deployment_dir(self) -> DeploymentDir:
        from deployer.deployment import DeploymentDir

        return DeploymentDir.named(self.home, self.deployment)


pass_app = click.make_pass_decorator(AppContext)


# One box: a path. Several (plan, render, up): one NODE=FILE per node, named after the node.
GpusFiles = Path | tuple[tuple[str, Path], ...] | None
SEVERAL_BOX_COMMANDS = ("plan", "render", "up")  # up: with --target swarm


class _GpusFile(click.types.StringParamType):
    name = "[NODE=]FILE"
    envvar_list_splitter = os.path.pathsep  # QWEN_DEPLOY_GPUS_FILE=a=one.json:b=two.json


def _gpus_files(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> GpusFiles:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return Path(values[0])
    if ctx.info_name not in SEVERAL_BOX_COMMANDS:
        raise click.BadParameter(
            "one file only here; several (NODE=FILE, one per node) work with `plan` and `render`, "
            "and with `up --target swarm`",
            ctx,
            param,
        )
    named: list[tuple[str, Path]] = []
    for value in values:
        node, sep, path = value.partition("=")
        if not sep:
            node, path = Path(value).stem, value
        if node in {n for n, _ in named}:
            raise click.BadParameter(f"node {node!r} is named twice", ctx, param)
        named.append((node, Path(path)))
    return tuple(named)


def gpus_file_option(func: F) -> F:
    return click.option(
        "--gpus-file",
        "gpus_file",
        type=_GpusFile(),
        multiple=True,
        callback=_gpus_files,
        envvar="QWEN_DEPLOY_GPUS_FILE",
        help="Read the GPU inventory from this JSON file (as `gpus --json` prints), not NVML. "
        "`plan` and `render` take it once per node as NODE=FILE for a plan over several boxes.",
    )(func)


def models_file_option(func: F) -> F:
    return click.option(
        "--models-file",
        "models_files",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Extra model catalog YAML (same shape as the built-in one); repeatable.",
    )(func)


def profile_option(func: F) -> F:
    return click.option(
        "--profile",
        "-p",
        "profile_name",
        required=True,
        envvar="QWEN_DEPLOY_PROFILE",
        help="Profile name (see `qwen-deploy profiles`), a YAML file, or 'auto'.",
    )(func)


def engine_option(func: F) -> F:
    return click.option(
        "--engine",
        type=click.Choice(["vllm", "stand-in"]),
        default="vllm",
        envvar="QWEN_DEPLOY_ENGINE",
        show_default=True,
        help="vllm serves the real models; stand-in runs the project's vLLM stand-in image "
        "(no GPU needed: demos and tests).",
    )(func)


def image_option(func: F) -> F:
    return click.option(
        "--image",
        default=None,
        envvar="QWEN_DEPLOY_IMAGE",
        help="Run this image instead of the engine's pinned one (a mirror or a local build of "
        "the same vLLM release).",
    )(func)


def plan_input_options(func: F) -> F:
    """What a plan is made from: --profile, --gpus-file, --engine, --models-file, --image."""
    for option in (
        image_option,
        models_file_option,
        engine_option,
        gpus_file_option,
        profile_option,
    ):
        func = option(func)
    return func


def allow_unauthenticated_option(func: F) -> F:
    return click.option(
        "--allow-unauthenticated",
        is_flag=True,
        help="Confirm that services with `auth: none` in the profile are served without an "
        "API key (refused otherwise).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        func
    )


def profiles_dir() -> Path:
    from deployer.resources import profiles_dir as shipped_profiles

    return Path(os.environ.get("QWEN_DEPLOY_PROFILES_DIR", shipped_profiles()))


def load_inventory(gpus_file: Path | None) -> GpuInventory:
    if isinstance(gpus_file, tuple):  # several boxes reach only make_plan (plan, render)
        raise click.UsageError("this command reads one --gpus-file")
    if gpus_file is not None:
        from deployer.gpus import load_inventory_file

        return load_inventory_file(gpus_file)
    from deployer.nvml import read_inventory

    return read_inventory()


def load_catalog(models_files: tuple[Path, ...] = ()) -> Catalog:
    from deployer.catalog import load_catalog as _load

    return _load(models_files)


@dataclass(frozen=True)
class PlannedProfile:
    """A profile, the plan made from it, and why an automatic choice chose it."""

    profile: Profile
    plan: DeploymentPlan
    reasons: tuple[str, ...] = ()


def make_plan(
    app: AppContext,
    profile_name: str,
    gpus_file: GpusFiles,
    engine: str,
    models_files: tuple[Path, ...] = (),
    image: str | None = None,
) -> PlannedProfile:
    """Inventory + profile (or 'auto') + catalog -> plan; several NODE=FILE: one per node."""
    from deployer.planner import PlanOptions, choose_profile, plan
    from deployer.profiles import load_all_profiles, load_profile

    catalog = load_catalog(models_files)
    options = PlanOptions(deployment=app.deployment, engine=engine, image=image or None)
    if isinstance(gpus_file, tuple):
        from deployer.gpus import load_inventory_file
        from deployer.multibox import plan_boxes

        if profile_name == "auto":
            raise click.UsageError("--profile auto plans one box; name a profile for several")
        boxes = {node: load_inventory_file(path) for node, path in gpus_file}
        profile = load_profile(profile_name, profiles_dir())
        return PlannedProfile(profile, plan_boxes(boxes, profile, catalog, options))
    inventory = load_inventory(gpus_file)
    if profile_name == "auto":
        profiles = load_all_profiles(profiles_dir())
        choice = choose_profile(inventory, profiles, catalog, options)
        chosen = next(p for p in profiles if p.name == choice.plan.profile)
        return PlannedProfile(chosen, choice.plan, choice.reasons)
    profile = load_profile(profile_name, profiles_dir())
    return PlannedProfile(profile, plan(inventory, profile, catalog, options))


def docker_client() -> docker.DockerClient:
    """The one place a Docker SDK client is built; errors become DockerUnavailable."""
    from deployer.runtime.engine_api import unreachable

    try:
        import docker as docker_sdk

        client = docker_sdk.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # docker raises several unrelated types here
        raise unreachable(exc) from None
    return client


def engine_client() -> EngineClient:
    """A client for reading containers (`status`): the Engine API client on the standard
    library where DOCKER_HOST lets it (the SDK would be most of the command's start-up), else
    the SDK's. Either one's engine has answered a ping; DockerUnavailable otherwise."""
    from deployer.runtime.engine_api import connect, engine_address

    address = engine_address(os.environ)
    return docker_client() if address is None else connect(address)


def warn_unauthenticated(plan: DeploymentPlan) -> None:
    """The warning `up` and `render` print for every service confirmed to run without a key."""
    for service in plan.services:
        if service.auth == "none":
            click.echo(
                f"warning: {service.name} serves {service.bind}:{service.port} WITHOUT an API "
                "key (auth: none, --allow-unauthenticated)",
                err=True,
            )


def json_document(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The --json envelope: its own kind and schema version, then the payload's fields. A
    payload's own `kind` or `schema_version` (a file format's, such as plan.json's) stays beside
    them as `payload_kind` / `payload_schema_version` instead of replacing the envelope's."""
    payload = dict(data)
    document: dict[str, Any] = {"kind": kind, "schema_version": JSON_SCHEMA_VERSION}
    for key in ("kind", "schema_version"):
        if key in payload:
            document[f"payload_{key}"] = payload.pop(key)
    return {**document, **payload}


def print_json(kind: str, data: Mapping[str, Any], one_line: bool = False) -> None:
    """Every --json document carries its kind and a schema version. one_line: a JSON Lines
    record (for a stream of documents, as `status --watch --json` prints)."""
    document = json_document(kind, data)
    click.echo(
        json.dumps(document, separators=(",", ":")) if one_line else json.dumps(document, indent=2)
    )


def is_terminal(stream: IO[str] | None = None) -> bool:
    """The one place that decides whether output (stdout unless told) goes to a terminal: live
    progress, clearing the screen and colour depend on it."""
    return (stream if stream is not None else sys.stdout).isatty()


def use_color(stream: IO[str] | None = None) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to anything (no-color.org)."""
    return is_terminal(stream) and not os.environ.get("NO_COLOR")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width table (no colour codes in the width calculation)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(click.unstyle(cell)))
    lines = []
    for row in [headers, *rows]:
        cells = [c + " " * (widths[i] - len(click.unstyle(c))) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def json_requested(args: list[str]) -> bool:
    """Whether the command line asks for JSON (`--json`, or `--format json`), so that an error
    is a JSON document on stdout too and `… --json | jq` never reads an empty stream."""
    words = args[: args.index("--")] if "--" in args else args
    if "--json" in words or "--format=json" in words:
        return True
    return any(pair == ("--format", "json") for pair in itertools.pairwise(words))


def print_json_error(message: str, hint: str | None, code: int) -> None:
    """The error as a --json document on stdout (the `error:` line still goes to stderr)."""
    from deployer.errors import ExitCode

    name = ExitCode(code).name.lower() if code in ExitCode._value2member_map_ else "error"
    document = json_document(
        "error", {"error": {"message": message, "hint": hint, "exit_code": code, "class": name}}
    )
    click.echo(json.dumps(document, indent=2))

"""The qwen-deploy entry point: the group, its global options and the one error handler."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from deployer import __version__
from deployer.cli.common import AppContext
from deployer.errors import DeployError, ExitCode

# Command modules, imported lazily so `--help` stays fast: each exposes COMMANDS.
COMMAND_MODULES = (
    "deployer.cli.cmd_inventory",
    "deployer.cli.cmd_plan",
    "deployer.cli.cmd_runtime",
    "deployer.cli.cmd_verify",
    "deployer.cli.cmd_bench",
)


class DeployGroup(click.Group):
    """Turns every DeployError into one line on stderr and its exit code, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeployError as exc:
            self._fail(ctx, f"error: {exc}", exc.exit_code)
        except KeyboardInterrupt:
            self._fail(ctx, "interrupted", ExitCode.INTERRUPTED)
        except BrokenPipeError:  # `qwen-deploy plan | head`: the reader left, not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(ExitCode.OK)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # one line too, like every other error
            self._fail(ctx, usage_line(exc), ExitCode.USAGE)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: say so plainly, details with --debug
            self._fail(
                ctx,
                f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug)",
                ExitCode.ERROR,
            )

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # the group's own options (`--bogus`)
            click.echo(usage_line(exc), err=True)
            raise click.exceptions.Exit(ExitCode.USAGE) from None

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int) -> None:
        obj = ctx.find_object(AppContext)
        if obj is not None and obj.debug:
            traceback.print_exc()
        click.echo(message, err=True)
        ctx.exit(code)


def usage_line(exc: click.UsageError) -> str:
    """click's three-line usage error as one line that says where the help is."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    return f"error: {message}{where}"


@click.group(
    cls=DeployGroup,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "QWEN_DEPLOY"},
)
@click.version_option(__version__, prog_name="qwen-deploy")
@click.option(
    "--deployment",
    "-d",
    default="qwen3",
    show_default=True,
    envvar="QWEN_DEPLOY_DEPLOYMENT",
    help="Name of the deployment to manage (one host can run several).",
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="QWEN_DEPLOY_HOME",
    help="Where deployment directories live [default: ~/.local/share/qwen-deploy].",
)
@click.option("--debug", is_flag=True, envvar="QWEN_DEPLOY_DEBUG", help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, deployment: str, home: Path | None, debug: bool) -> None:
    """Turn a box of NVIDIA GPUs into verified, OpenAI-compatible Qwen3 endpoints.

    Inspect GPUs, plan placement and memory, render compose files, start the
    containers, verify them with real requests.

    Example: qwen-deploy up --profile tri-tier
    """
    from deployer.deployment import default_home

    ctx.obj = AppContext(home=home or default_home(), deployment=deployment, debug=debug)


def _register() -> None:
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="qwen-deploy")


if __name__ == "__main__":
    main()

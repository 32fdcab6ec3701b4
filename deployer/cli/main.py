"""The qwen-deploy entry point: the group, its global options and the one error handler."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from deployer import __version__
from deployer.cli.common import AppContext, json_requested, print_json_error
from deployer.errors import DeployError, ExitCode


@dataclass(frozen=True)
class LazyCommand:
    """A command known by name before its module is imported."""

    module: str  # the deployer.cli module whose COMMANDS list holds the command
    summary: str  # its help's first sentence, for the group's --help


# Every command, loaded only when it runs, so that `--help` imports no command module and a
# command imports only its own (Docker, jinja2, matplotlib stay out of `plan`). A unit test
# checks this table against the modules' COMMANDS: a new command adds its line here (and
# regenerates help.txt, which `--help` prints without importing click: see entry.py).
LAZY_COMMANDS: dict[str, LazyCommand] = {
    "bench": LazyCommand(
        "cmd_bench", "Measure each tier under load: throughput, TTFT, ITL, latency per concurrency."
    ),
    "down": LazyCommand("cmd_runtime", "Stop and remove the deployment's containers and network."),
    "endpoints": LazyCommand(
        "cmd_verify",
        "Print the usage guide of the deployment: URLs, models, keys, examples, advice.",
    ),
    "gateway": LazyCommand(
        "cmd_gateway", "Run the deployment's gateway: one URL and key in front of every tier."
    ),
    "gpus": LazyCommand(
        "cmd_inventory", "Show what NVML sees: name, memory, compute capability, processes."
    ),
    "logs": LazyCommand(
        "cmd_runtime",
        "Print the logs of one service (name or alias), or of all, each line prefixed with its "
        "service.",
    ),
    "models": LazyCommand(
        "cmd_inventory",
        "List the model catalog: Qwen3 checkpoints, quantization, weight size, KV cost.",
    ),
    "plan": LazyCommand(
        "cmd_plan", "Show placement, tensor parallel, memory fraction and context per service."
    ),
    "profiles": LazyCommand(
        "cmd_inventory", "List the deployment profiles and how many GPUs each needs."
    ),
    "render": LazyCommand(
        "cmd_plan", "Write the deployment directory (compose.yaml, .env, plan.json); start nothing."
    ),
    "restart": LazyCommand(
        "cmd_runtime",
        "Restart services (names or aliases; all when none is given) in start order, and wait "
        "until each answers /v1/models again.",
    ),
    "status": LazyCommand(
        "cmd_runtime",
        "Show each service's container: state, health, uptime, restarts, last verification.",
    ),
    "tune": LazyCommand(
        "cmd_bench",
        "Suggest max_num_seqs, context and gpu_memory_utilization for SERVICE from a bench run.",
    ),
    "up": LazyCommand(
        "cmd_runtime",
        "Render the deployment and start it, touching only what changed; then verify it.",
    ),
    "verify": LazyCommand(
        "cmd_verify",
        "Check each service with real requests: health, models, auth, chat, streaming, thinking.",
    ),
}
# The command modules, each exposing COMMANDS. A command of theirs missing from the table
# still runs (they are all searched for it) but --help does not list it, and a unit test fails.
COMMAND_MODULES = tuple(sorted({f"deployer.cli.{c.module}" for c in LAZY_COMMANDS.values()}))


class DeployGroup(click.Group):
    """Loads commands lazily, and turns every DeployError into one line on stderr and its exit
    code, in one place."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*LAZY_COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            lazy = LAZY_COMMANDS.get(cmd_name)
            for module in (f"deployer.cli.{lazy.module}",) if lazy else COMMAND_MODULES:
                self._load(module)
        return self.commands.get(cmd_name)

    def _load(self, module_name: str) -> None:
        for command in importlib.import_module(module_name).COMMANDS:
            self.add_command(command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the table, as click would print it, importing nothing."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.commands:
                if self.commands[name].hidden:
                    continue
                summary = self.commands[name].get_short_help_str(limit)
            else:
                # click shortens the summary the same way as the real command's help.
                stand_in = click.Command(name, help=LAZY_COMMANDS[name].summary)
                summary = stand_in.get_short_help_str(limit)
            rows.append((name, summary))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        # Read before click consumes them: with --json an error is a JSON document too.
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
        ctx.meta["qwen_deploy.json"] = json_requested(args)
        try:
            return super().invoke(ctx)
        except DeployError as exc:
            self._fail(ctx, f"error: {exc}", exc.exit_code, exc.message, exc.hint)
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
    def _fail(
        ctx: click.Context,
        message: str,
        code: int,
        text: str | None = None,
        hint: str | None = None,
    ) -> None:
        obj = ctx.find_object(AppContext)
        if obj is not None and obj.debug:
            import traceback

            traceback.print_exc()
        if ctx.meta.get("qwen_deploy.json"):
            print_json_error(text or message.removeprefix("error: "), hint, int(code))
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
    from deployer.resources import default_home

    ctx.obj = AppContext(home=home or default_home(), deployment=deployment, debug=debug)


def load_all_commands() -> click.Group:
    """The group with every command imported (for tests and documentation, never at start)."""
    for module_name in COMMAND_MODULES:
        cli._load(module_name)
    return cli


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="qwen-deploy")


if __name__ == "__main__":
    main()

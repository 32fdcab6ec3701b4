"""`gateway serve`: the deployment's gateway in the foreground on this host."""

from __future__ import annotations

import click

from deployer.cli.common import AppContext, pass_app


@click.group()
def gateway() -> None:
    """Run the deployment's gateway: one URL and key in front of every tier.

    Example: qwen-deploy gateway serve --port 19100
    """


@gateway.command()
@click.option("--bind", "host", help="Address to listen on [default: the profile's gateway.bind].")
@click.option("--port", type=click.IntRange(1, 65535), help="Port [default: gateway.port, 19100].")
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@pass_app
def serve(app: AppContext, host: str | None, port: int | None, log_level: str) -> None:
    """Serve the gateway in the foreground, reaching the tiers on their host ports.

    Reads the deployment's plan.json and .env (writing missing gateway keys into .env);
    Ctrl-C stops it. `endpoints --show-keys` prints the key.

    Example: qwen-deploy gateway serve --port 19100
    """
    from deployer.gateway.config import GatewaySpec, plan_gateway
    from deployer.gateway.server import (
        config_for_directory,
        ensure_gateway_keys,
        serve,
        with_listen,
    )

    directory = app.deployment_dir
    spec = plan_gateway(directory.load_plan()) or GatewaySpec()
    with directory.lock():
        added = ensure_gateway_keys(directory, spec)
    for var in added:
        click.echo(f"wrote a new gateway key {var} to {directory.path}/.env", err=True)
    config = with_listen(config_for_directory(directory, spec), host, port)
    tiers = ", ".join(t.name for t in config.tiers)
    click.echo(f"gateway for {config.deployment} ({tiers}) on http://{config.bind}:{config.port}")
    serve(config, log_level)


COMMANDS = [gateway]

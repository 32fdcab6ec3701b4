"""Load the gateway's config for a deployment and run the app under uvicorn (foreground)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from deployer.deployment import ENV_FILE, PLAN_FILE, DeploymentDir
from deployer.errors import StateError
from deployer.gateway.config import (
    GATEWAY_KEY_VAR_PREFIX,
    GatewayConfig,
    GatewaySpec,
    build_config,
    config_from_public,
    plan_gateway,
    resolve_gateway_keys,
)
from deployer.gateway.spec import CONFIG_ENV
from deployer.safeload import load_json
from deployer.statefs import os_errors, read_private, replace_together


def ensure_gateway_keys(directory: DeploymentDir, spec: GatewaySpec) -> list[str]:
    """Append missing gateway keys to the deployment's .env (0600, atomically); returns the
    variables added. The lines already there, tier keys included, stay as they are."""
    env = directory.read_env()
    keys = resolve_gateway_keys(spec, env, os.environ)
    added = {var: value for var, value in keys.items() if var not in env}
    if added:
        path = directory.file(ENV_FILE)
        # read_env checked the directory and the file; read_private opens it again without
        # following a link, and replace_together refuses a file someone swapped in meanwhile.
        with os_errors("add the gateway's keys to the .env file", path):
            text = read_private(path, "the .env file") or ""
            if text and not text.endswith("\n"):
                text += "\n"
            text += "".join(f"{var}={value}\n" for var, value in added.items())
            replace_together(directory.path, {ENV_FILE: text})
    return list(added)


def config_for_directory(
    directory: DeploymentDir,
    spec: GatewaySpec | None = None,
    upstream: str = "host",
) -> GatewayConfig:
    plan = directory.load_plan()
    spec = spec or plan_gateway(plan) or GatewaySpec()
    return build_config(plan, spec, directory.read_env(), upstream)


ENV_FILE_VAR = "QWEN_DEPLOY_ENV_FILE"  # the keys' file beside --plan


def config_for_files(
    plan_path: Path, environ: Mapping[str, str], upstream: str = "network"
) -> GatewayConfig:
    """`--plan DIR/plan.json` (and $QWEN_DEPLOY_ENV_FILE, DIR/.env or another deployment
    directory's): read through DeploymentDir like every command reads them, so a file that is
    a link, another user's, writable by others, oversized, not UTF-8 or not a valid plan gets
    the same one-line state error here. Keys in the environment count too."""
    plan = _deployment_of(plan_path, PLAN_FILE, "--plan").load_plan()
    secrets = dict(environ)
    env_file = environ.get(ENV_FILE_VAR)
    if env_file:
        env_dir = _deployment_of(Path(env_file), ENV_FILE, f"${ENV_FILE_VAR}")
        secrets.update(env_dir.read_env(missing_ok=True))
    return build_config(plan, plan_gateway(plan) or GatewaySpec(), secrets, upstream)


def _deployment_of(path: Path, name: str, origin: str) -> DeploymentDir:
    if path.name != name:
        raise StateError(
            f"{origin} {path}: expected a deployment directory's {name}",
            hint=f"name DIR/{name} of the deployment (`qwen-deploy render` writes it)",
        )
    return DeploymentDir(path.absolute().parent)


def config_from_environment(environ: Mapping[str, str], var: str = CONFIG_ENV) -> GatewayConfig:
    """In the gateway's container: the public config in `var`, the secrets beside it."""
    if var not in environ:
        raise StateError(f"${var} does not hold the gateway's config (it is not set)")
    doc = load_json(environ[var], f"${var}", StateError)
    return config_from_public(doc, environ)


def with_listen(config: GatewayConfig, host: str | None, port: int | None) -> GatewayConfig:
    return replace(config, bind=host or config.bind, port=port or config.port)


def serve(config: GatewayConfig, log_level: str = "info") -> None:
    """Run the gateway until SIGINT/SIGTERM."""
    import uvicorn

    from deployer.gateway.app import build_app

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s gateway: %(message)s")
    uvicorn.run(
        build_app(config),
        host=config.bind,
        port=config.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


__all__ = [
    "GATEWAY_KEY_VAR_PREFIX",
    "config_for_directory",
    "config_for_files",
    "ensure_gateway_keys",
    "serve",
    "with_listen",
]

"""Load the gateway's config for a deployment and run the app under uvicorn (foreground)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from deployer.deployment import ENV_FILE, DeploymentDir, parse_env, plan_from_dict, write_atomic
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
from deployer.plan import DeploymentPlan


def ensure_gateway_keys(directory: DeploymentDir, spec: GatewaySpec) -> list[str]:
    """Append missing gateway keys to the deployment's .env (0600, atomically); returns the
    variables added. The lines already there, tier keys included, stay as they are."""
    env = directory.read_env()
    keys = resolve_gateway_keys(spec, env, os.environ)
    added = {var: value for var, value in keys.items() if var not in env}
    if added:
        path = directory.file(ENV_FILE)
        text = path.read_text() if path.is_file() else ""
        if text and not text.endswith("\n"):
            text += "\n"
        text += "".join(f"{var}={value}\n" for var, value in added.items())
        write_atomic(path, text, 0o600)
    return list(added)


def config_for_directory(
    directory: DeploymentDir,
    spec: GatewaySpec | None = None,
    upstream: str = "host",
) -> GatewayConfig:
    plan = directory.load_plan()
    spec = spec or plan_gateway(plan) or GatewaySpec()
    return build_config(plan, spec, directory.read_env(), upstream)


def config_for_files(
    plan_path: Path, environ: Mapping[str, str], upstream: str = "network"
) -> GatewayConfig:
    """In the gateway's container: plan.json mounted read-only, the keys in the environment."""
    import json

    try:
        data = json.loads(plan_path.read_text())
        plan: DeploymentPlan = plan_from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{plan_path}: cannot read the plan ({exc})") from None
    env_file = environ.get("QWEN_DEPLOY_ENV_FILE")
    secrets = dict(environ)
    if env_file and Path(env_file).is_file():
        secrets.update(parse_env(Path(env_file).read_text(), env_file))
    raw = data.get("gateway") if isinstance(data, dict) else None
    spec = plan_gateway(plan) or (GatewaySpec.from_dict(raw) if raw else GatewaySpec())
    return build_config(plan, spec, secrets, upstream)


CONFIG_ENV = "QWEN_DEPLOY_GATEWAY"  # the public config as JSON, in the gateway's container


def config_from_environment(environ: Mapping[str, str], var: str = CONFIG_ENV) -> GatewayConfig:
    """In the gateway's container: the public config in `var`, the secrets beside it."""
    import json

    try:
        doc = json.loads(environ[var])
    except (KeyError, ValueError) as exc:
        raise StateError(f"${var} does not hold the gateway's config ({exc})") from None
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

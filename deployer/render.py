"""Render a plan into the files of a deployment directory: compose.yaml, .env and plan.json.

Pure: the compose file is the jinja2 template in `compose_templates/` applied to the same
ContainerSpecs the Docker runtime starts, so `docker compose up -d` and `qwen-deploy up` run the
same containers. `render_deployment` is `qwen-deploy render` as a library call: the one function
here that writes (through DeploymentDir, under its lock).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import yaml

from deployer.deployment import COMPOSE_FILE, ENV_FILE, PLAN_FILE, DeploymentDir, render_env
from deployer.planner import DeploymentPlan
from deployer.profiles import API_KEY_PATTERN, Profile
from deployer.resources import templates_dir
from deployer.spec import LABEL_PREFIX, ContainerSpec, container_specs, project_name

TEMPLATES_DIR = templates_dir()  # in a wheel or a checkout
COMPOSE_TEMPLATE = "compose.yaml.j2"

# Plain YAML keys that every YAML 1.1 or 1.2 parser reads back as the same string.
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML11_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null"}


def yaml_str(value: object) -> str:
    """One double-quoted YAML scalar on one line, whatever the characters."""
    text = yaml.dump(str(value), default_style='"', allow_unicode=True, width=1 << 30)
    text = text.rstrip("\n")
    if "\n" in text:  # pragma: no cover - PyYAML escapes every line break in this style
        raise ValueError(f"cannot render {value!r} as a one-line YAML scalar")
    return text


def literal(value: object) -> str:
    """A string compose must pass through unchanged: `$` doubled so it is not interpolated."""
    return yaml_str(str(value).replace("$", "$$"))


def yaml_key(value: object) -> str:
    text = str(value)
    if _PLAIN_KEY.match(text) and text.lower() not in _YAML11_WORDS:
        return text
    return literal(text)


def comment(value: object) -> str:
    """Text safe inside a `#` comment line."""
    return " ".join(str(value).split())


def interpolation(var: str, required: bool) -> str:
    """`${VAR}` for compose to fill in from .env or the shell; never the value itself."""
    if required:
        # An empty VLLM_API_KEY would serve without authentication: refuse to start instead.
        return f"${{{var}:?run qwen-deploy render to write the .env file beside compose.yaml}}"
    return f"${{{var}:-}}"


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = literal
    env.filters["ref"] = yaml_str  # `${VAR}` interpolations, the one place `$` stays live
    env.filters["key"] = yaml_key
    env.filters["comment"] = comment
    return env


def _context(plan: DeploymentPlan, specs: tuple[ContainerSpec, ...]) -> dict[str, Any]:
    required = {service.api_key_env for service in plan.services if service.auth != "none"}
    volumes: list[str] = []
    for spec in specs:
        volumes += [name for name, _ in spec.volumes if name not in volumes]
    networks = {spec.network for spec in specs}
    if len(networks) != 1:
        raise ValueError(f"services of one deployment are on different networks: {networks}")
    return {
        "plan": plan,
        "project": project_name(plan),
        "network": networks.pop(),
        "volumes": volumes,
        "services": [
            {
                "spec": spec,
                "plan": service,
                "secrets": [
                    (name, interpolation(var, var in required)) for name, var in spec.secret_env
                ],
                # compose sets its own com.docker.compose.* labels; it refuses ours.
                "labels": [(k, v) for k, v in spec.labels if k.startswith(LABEL_PREFIX)],
            }
            for service, spec in zip(plan.services, specs, strict=True)
        ],
    }


def render_compose(plan: DeploymentPlan, deployment_dir: str) -> str:
    """The compose.yaml text for this plan."""
    from deployer.gateway.service import compose_entry

    specs = container_specs(plan, deployment_dir)
    template = _environment().get_template(COMPOSE_TEMPLATE)
    context = _context(plan, specs)
    context["gateway"] = compose_entry(plan, deployment_dir, interpolation)
    return template.render(context)


def render_files(
    plan: DeploymentPlan, deployment_dir: str, api_keys: Mapping[str, str]
) -> dict[str, str]:
    """Every file of the deployment directory, by name; .env holds only the services' keys
    (and the gateway's)."""
    keys: dict[str, str] = {}
    for service in plan.services:
        if service.auth == "none":  # served without a key: nothing for .env
            continue
        var = service.api_key_env
        key = api_keys.get(var)
        if key is None:
            raise ValueError(f"no API key for service {service.name!r} ({var})")
        if not API_KEY_PATTERN.match(key):
            raise ValueError(f"the API key in {var} would break the .env file")
        keys[var] = key
    if plan.gateway is not None:
        from deployer.gateway.service import env_keys

        keys.update(env_keys(plan, api_keys))
    # Written in this order: .env first so a new compose.yaml never lacks its keys, plan.json
    # last because its presence is what makes the deployment exist.
    return {
        ENV_FILE: render_env(keys, project_name(plan)),
        COMPOSE_FILE: render_compose(plan, deployment_dir),
        PLAN_FILE: json.dumps(plan.to_dict(), indent=2) + "\n",
    }


@dataclass(frozen=True)
class RenderResult:
    """What `render` wrote: the directory, its files, and the notes the plan carries."""

    directory: str
    files: tuple[str, ...]
    generated_keys: tuple[str, ...]  # services whose key was generated by this render
    warnings: tuple[str, ...]
    generated_gateway_keys: tuple[str, ...] = ()  # the gateway's keys, by name


def render_deployment(
    directory: DeploymentDir,
    plan: DeploymentPlan,
    profile: Profile,
    environ: Mapping[str, str],
    allow_unauthenticated: bool = False,
    wait_s: float = 0.0,
) -> RenderResult:
    """The library half of `qwen-deploy render`: under the deployment's lock, resolve the keys
    (.env's, the profile's, the environment's, or new ones) and replace the files together."""
    from deployer.deployment import resolve_api_keys

    with directory.lock(wait_s):
        existing = directory.read_env()
        keys = resolve_api_keys(plan, profile, existing, environ, allow_unauthenticated)
        files = render_files(plan, str(directory.path), keys)
        directory.write_files(files)
    generated = tuple(
        s.name
        for s in plan.services
        if s.auth != "none"
        and not profile.service(s.name).api_key
        and not profile.service(s.name).api_key_env
        and s.api_key_env not in existing
    )
    generated_gateway = tuple(
        k.name
        for k in (profile.gateway.keys if profile.gateway else ())
        if not k.api_key and not k.api_key_env and k.env_var not in existing
    )
    return RenderResult(
        str(directory.path), tuple(files), generated, plan.warnings, generated_gateway
    )

"""`up` and `restart` as library operations on a deployment directory: typed inputs, typed
results, no printing. The CLI parses options, calls one of them and renders the result."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import docker
import requests

from deployer.deployment import DeploymentDir, resolve_api_keys
from deployer.gateway.spec import GATEWAY_SERVICE
from deployer.plan import DeploymentPlan
from deployer.profiles import Profile
from deployer.runtime.convergence import Action
from deployer.runtime.environment import runtime_env
from deployer.runtime.preflight import MemoryProbe, plan_actions, preflight
from deployer.runtime.progress import ProgressCallback
from deployer.runtime.results import ApplyResult
from deployer.runtime.start import StartOptions, apply_with, restart_with
from deployer.runtime.startup_record import record_startup
from deployer.runtime.states import ActionKind
from deployer.spec import ContainerSpec, container_specs, deployment_specs


@dataclass(frozen=True)
class UpRequest:
    """What `up` starts: a plan of a profile, in a deployment directory."""

    directory: DeploymentDir
    profile: Profile
    plan: DeploymentPlan
    timeout_s: float | None = None  # per service; the profile's startup_timeout_s when None
    wait_s: float = 0.0  # for the deployment's lock
    allow_unauthenticated: bool = False
    hf_token: str | None = None
    share_name: bool = False  # deploy beside another compose project of the same name
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    session: requests.Session | None = None
    memory_probe: MemoryProbe | None = None
    poll_s: float = 1.0


@dataclass(frozen=True)
class UpResult:
    """What `up` did, and the API keys it started the services with (for verification)."""

    result: ApplyResult
    keys: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return self.result.ok


def _inputs(request: UpRequest) -> tuple[dict[str, str], list[ContainerSpec], dict[str, str]]:
    """(keys, specs, env) of a request; reads the directory's .env."""
    plan, directory = request.plan, request.directory
    keys = resolve_api_keys(
        plan,
        request.profile,
        directory.read_env(),
        request.environ,
        request.allow_unauthenticated,
    )
    specs = list(deployment_specs(plan, str(directory.path)))
    return keys, specs, runtime_env(keys, request.hf_token)


def up_dry_run(client: docker.DockerClient, request: UpRequest) -> tuple[Action, ...]:
    """What `up` would do now; changes nothing (no lock, no files, no containers)."""
    _, specs, env = _inputs(request)
    return plan_actions(client, request.plan, specs, env, share_name=request.share_name)


def up(
    client: docker.DockerClient,
    request: UpRequest,
    progress: ProgressCallback | None = None,
    on_checked: Callable[[Sequence[Action]], None] | None = None,
) -> UpResult:
    """Under the deployment's lock: check host ports and images, then write compose.yaml,
    .env and plan.json, then converge the containers and wait until each service is ready.
    `on_checked` runs once the checks passed, before anything changes."""
    from deployer.gateway import lifecycle  # it imports runtime modules: loaded once they are
    from deployer.render import render_files  # jinja2, only for the commands that render

    directory = request.directory
    with directory.lock(request.wait_s):
        keys, specs, env = _inputs(request)
        lifecycle.ensure_image(client, request.plan)  # built here: no registry has it
        # Host ports and images are checked before the directory or any container changes.
        actions = preflight(
            client, request.plan, specs, env, progress, share_name=request.share_name
        )
        if on_checked is not None:
            on_checked(actions)
        directory.write_files(render_files(request.plan, str(directory.path), keys))
        options = StartOptions(
            progress, request.timeout_s, request.session, request.memory_probe, request.poll_s
        )
        result = apply_with(client, request.plan, specs, env, options, actions)
        # The gateway once the tiers are done: it fronts them and needs no GPU.
        result = lifecycle.with_gateway(client, request.plan, specs, env, result, progress)
        record_startup(directory, request.plan, result)
    return UpResult(result, keys)


@dataclass(frozen=True)
class RestartRequest:
    """Which services of a deployment `restart` stops and starts again (all when empty)."""

    directory: DeploymentDir
    plan: DeploymentPlan
    services: Sequence[str] = ()
    timeout_s: float | None = None
    wait_s: float = 0.0
    session: requests.Session | None = None
    memory_probe: MemoryProbe | None = None
    poll_s: float = 1.0


def restart_deployment(
    client: docker.DockerClient,
    request: RestartRequest,
    progress: ProgressCallback | None = None,
) -> ApplyResult:
    """Under the deployment's lock: restart the services in start order and wait until each
    answers /v1/models again."""
    from deployer.gateway import lifecycle

    directory, plan = request.directory, request.plan
    has_gateway = plan.gateway is not None
    tiers = [n for n in request.services if not (has_gateway and n == GATEWAY_SERVICE)]
    gateway_too = has_gateway and (not request.services or len(tiers) < len(request.services))
    with directory.lock(request.wait_s):
        began = time.monotonic()
        env = runtime_env(directory.read_env())
        result = ApplyResult(plan.deployment, (), (), 0.0)
        if tiers or not request.services:
            specs = container_specs(plan, str(directory.path))
            options = StartOptions(
                progress, request.timeout_s, request.session, request.memory_probe, request.poll_s
            )
            result = restart_with(client, plan, specs, env, tiers, options)
            record_startup(directory, plan, result)
        if gateway_too:
            failed = tuple(o.service for o in result.failed)
            outcome = lifecycle.restart_gateway(
                client, plan, str(directory.path), env, progress, tiers_failed=failed
            )
            asked = Action(GATEWAY_SERVICE, ActionKind.RESTART, "asked for")
            result = replace(
                result,
                actions=(*result.actions, asked),
                outcomes=(*result.outcomes, outcome),
                elapsed_s=time.monotonic() - began,
            )
        return result

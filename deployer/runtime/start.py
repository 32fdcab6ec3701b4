"""Ordered start: `apply` and `restart` act on the chosen services, services on disjoint GPUs
in parallel threads, services sharing a GPU one after another, each only once the one before
answers `GET /v1/models` with its key (vllm#55827: two engines profiling one GPU at once
mis-size each other).

A container starts with restart policy `no` and gets the spec's (`always`) once it is ready, so
a failing start exits once with its own logs instead of crash-looping; a failed container is
stopped and kept for `logs`, and the services that start after it on its GPU are not started.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import docker
import docker.errors
import requests

from deployer import diagnose
from deployer.errors import DeployError, DeployFailed, StateError
from deployer.plan import DeploymentPlan, ServicePlan
from deployer.runtime import containers as engine
from deployer.runtime.convergence import Action
from deployer.runtime.engine_errors import docker_errors
from deployer.runtime.observed import observe
from deployer.runtime.preflight import MemoryProbe, check_memory, preflight, probe_for, pull_missing
from deployer.runtime.progress import Progress, ProgressCallback
from deployer.runtime.readiness import readiness
from deployer.runtime.results import ApplyResult, ServiceOutcome
from deployer.runtime.states import ActionKind, ContainerState, Stage
from deployer.spec import ContainerSpec
from deployer.startup_check import StartupFigures, parse_startup_log

EXCERPT_LINES = 15
STARTUP_LOG_LINES = 5000  # of one start attempt: vLLM prints its figures before it is ready

_STOPPED_FIRST = (ActionKind.RECREATE, ActionKind.RESTART, ActionKind.REMOVE)
_CREATED = (ActionKind.CREATE, ActionKind.RECREATE)


@dataclass(frozen=True)
class StartOptions:
    """How `apply` and `restart` run: progress callback, readiness timeout, HTTP session,
    GPU memory probe and poll interval."""

    progress: ProgressCallback | None = None
    timeout_override: float | None = None  # seconds; the profile's startup_timeout_s if None
    session: requests.Session | None = None  # one is made (and closed) when None
    memory_probe: MemoryProbe | None = None
    poll_s: float = 1.0


class _Cancelled(Exception):
    pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, `timeout`, a cancelled CI job) while `up` or `restart` works; the CLI's
    signal handler raises it. Handled like Ctrl-C, and moreover the containers started by then
    get their restart policy: no one is there to run `up` again before dockerd next restarts."""


ARM_WAIT_S = 5.0  # how long a terminated run lets threads finish the Docker call they are in


class _Run:
    """One `apply` or `restart`: a thread per service, each waiting for the service that starts
    before it on a shared GPU to be ready (or to have failed and been stopped)."""

    def __init__(
        self,
        client: docker.DockerClient,
        plan: DeploymentPlan,
        specs: Sequence[ContainerSpec],
        env: Mapping[str, str],
        options: StartOptions,
        session: requests.Session,
        t0: float,
    ) -> None:
        self.client = client
        self.plan = plan
        self.specs = {s.service: s for s in specs}
        self.env = env
        self.options = options
        self.session = session
        self.cancel = threading.Event()
        self.done = {s.name: threading.Event() for s in plan.services}
        self.outcomes: dict[str, ServiceOutcome] = {}
        self.started: dict[str, Any] = {}  # service -> its container, started by this run
        self.lock = threading.Lock()
        self.t0 = t0  # when the command began: outcome times are relative to it

    def report(self, service: str, stage: Stage, since: float, detail: str = "") -> None:
        callback = self.options.progress
        if callback is None:
            return
        with self.lock:  # the callback sees one call at a time
            callback(Progress(service, stage, time.monotonic() - since, detail))

    def sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise _Cancelled

    def run(self, actions: Mapping[str, Action]) -> tuple[ServiceOutcome, ...]:
        threads = []
        for service in self.plan.services:
            action = actions.get(service.name)
            if action is None:
                self.done[service.name].set()
                continue
            thread = threading.Thread(
                target=self._service, args=(service, action), name=f"up-{service.name}", daemon=True
            )
            threads.append(thread)
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt as exc:
            # What started keeps running: containers are Docker's, not this process's.
            self.cancel.set()
            if isinstance(exc, Terminated):
                self._arm_started(threads)
            raise
        return tuple(self.outcomes[s.name] for s in self.plan.services if s.name in self.outcomes)

    def _arm_started(self, threads: Sequence[threading.Thread]) -> None:
        """Give the containers this run started their spec's restart policy, once the threads
        are out of the Docker call they were in (they stop at their next wait)."""
        deadline = time.monotonic() + ARM_WAIT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            started = dict(self.started)
        for name, container in started.items():
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                engine.set_restart_policy(container, self.specs[name].restart_policy)

    def _service(self, service: ServicePlan, action: Action) -> None:
        try:
            for before in service.start_after:
                if not self.done[before].is_set():
                    waited = time.monotonic()
                    while not self.done[before].is_set():
                        self.report(service.name, Stage.WAITING, waited, f"for {before}")
                        self.sleep(self.options.poll_s)
            failed = [b for b in service.start_after if not self._ok(b)]
            if failed and action.kind != ActionKind.NOOP:
                # Its container would only wait in its start gate for a neighbour that is down.
                message = (
                    f"not started: it starts after {failed[0]} on a shared GPU, and "
                    f"{failed[0]} did not become ready"
                )
                self.report(service.name, Stage.NOT_STARTED, time.monotonic(), message)
                self.outcomes[service.name] = ServiceOutcome(
                    service.name,
                    action.kind,
                    False,
                    Stage.NOT_STARTED,
                    message,
                    started_s=time.monotonic() - self.t0,
                )
                return
            self.outcomes[service.name] = self._act(service, action)
        except _Cancelled:
            self.outcomes[service.name] = ServiceOutcome(
                service.name, action.kind, False, Stage.INTERRUPTED, "interrupted"
            )
        except BaseException as exc:  # a bug must not leave the others waiting forever
            self.outcomes[service.name] = ServiceOutcome(
                service.name,
                action.kind,
                False,
                Stage.FAILED,
                f"unexpected {type(exc).__name__}: {exc}",
            )
        finally:
            self.done[service.name].set()

    def _ok(self, service: str) -> bool:
        outcome = self.outcomes.get(service)
        return outcome is None or outcome.ok  # None: not part of this run

    def _act(self, service: ServicePlan, action: Action) -> ServiceOutcome:
        began = time.monotonic()
        noop = action.kind == ActionKind.NOOP
        # Logs of this attempt only (second precision); all of a container left running.
        wall = time.time() - 1 if not noop else 0.0
        started_s = began - self.t0
        spec = self.specs[service.name]
        container = None
        try:
            with docker_errors(""):
                if not noop:
                    check_memory(service, self.options.memory_probe)
                # Restart policy `no` until the service is ready: a failing start exits once,
                # with its exit code and one run of logs, instead of crash-looping.
                if action.kind in _CREATED:
                    self.report(service.name, Stage.CREATING, began)
                    kwargs = engine.create_kwargs(self.client, spec, self.env, restart_policy="no")
                    container = self.client.containers.create(**kwargs)
                else:
                    container = self.client.containers.get(action.container or spec.container_name)
                if not noop:
                    self.report(service.name, Stage.STARTING, began)
                    engine.set_restart_policy(container, "no")
                    container.start()
                    with self.lock:
                        self.started[service.name] = container
                self._wait_ready(service, container, began)
                engine.set_restart_policy(container, spec.restart_policy)
        except DeployError as exc:
            return self._failed(service, action, container, exc, started_s, wall)
        ready_s = time.monotonic() - self.t0
        startup = None if noop else _startup_figures(container, wall)
        self.report(service.name, Stage.HEALTHY, began, "unchanged" if noop else "")
        return ServiceOutcome(
            service.name,
            action.kind,
            True,
            Stage.HEALTHY,
            started_s=started_s,
            ready_s=ready_s,
            startup=startup,
        )

    def _wait_ready(self, service: ServicePlan, container: Any, began: float) -> None:
        timeout = self.options.timeout_override or service.startup_timeout_s
        key = self.env.get(service.api_key_env, "")
        container.reload()
        restarts = int(container.attrs.get("RestartCount") or 0)
        detail = ""
        while True:
            container.reload()
            state = container.attrs.get("State") or {}
            status = ContainerState.parse(state.get("Status"))
            code = state.get("ExitCode")
            if status in (ContainerState.EXITED, ContainerState.DEAD):
                raise DeployFailed(f"the container exited with code {code}")
            restarted = int(container.attrs.get("RestartCount") or 0) > restarts
            if status == ContainerState.RESTARTING or restarted:
                raise DeployFailed("the container crashed and Docker restarted it")
            ready, detail = readiness(self.session, service, key)
            if ready:
                return
            elapsed = time.monotonic() - began
            if elapsed >= timeout:
                raise DeployFailed(
                    f"not ready after {elapsed:.0f} s (GET /v1/models: {detail})",
                    hint="raise startup_timeout_s in the profile or pass --timeout",
                )
            self.report(service.name, Stage.LOADING, began, detail)
            self.sleep(self.options.poll_s)

    def _failed(
        self,
        service: ServicePlan,
        action: Action,
        container: Any,
        exc: DeployError,
        started_s: float,
        since: float,
    ) -> ServiceOutcome:
        lines: list[str] = []
        with self.lock:  # stopped and disarmed below: a terminated run must not arm it
            self.started.pop(service.name, None)
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                lines = engine.log_lines(container, since)
                engine.stop(container)  # a failed service must not crash-loop next to healthy ones
        findings = tuple(diagnose.diagnose(lines))
        excerpt = tuple(diagnose.excerpt(lines, EXCERPT_LINES))
        message = str(exc)
        if findings:
            message = f"{exc.message}: {findings[0].summary}"
        self.report(service.name, Stage.FAILED, self.t0 + started_s, message)
        return ServiceOutcome(
            service.name,
            action.kind,
            False,
            Stage.FAILED,
            message,
            started_s=started_s,
            log_excerpt=excerpt,
            findings=findings,
        )


def _startup_figures(container: Any, since: float) -> StartupFigures:
    """The memory figures this start of the container printed (issue 11: planned against
    actual); empty figures when its log cannot be read."""
    with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
        lines = engine.log_lines(container, since, tail=STARTUP_LOG_LINES)
        return parse_startup_log("\n".join(lines))
    return StartupFigures()


def _stop_first(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    actions: Sequence[Action],
    progress: ProgressCallback | None,
) -> None:
    """Stop before anything starts, later services first: a GPU's memory is free before the
    first instance on it loads, and nothing is stopped under a loading neighbour (vllm#56830:
    free memory growing during profiling aborts vLLM's start)."""
    order = [s.name for s in plan.services]
    stopping = sorted(
        (a for a in actions if a.kind in _STOPPED_FIRST and a.container),
        key=lambda a: -order.index(a.service) if a.service in order else 1,
    )
    for action in stopping:
        if progress is not None:
            progress(Progress(action.service, Stage.STOPPING, 0.0, action.reason))
        try:
            container = client.containers.get(action.container)
        except docker.errors.NotFound:
            continue
        if action.kind == ActionKind.RESTART:
            engine.stop(container, disarm=False)
        else:
            engine.remove(container)


def _execute(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    actions: tuple[Action, ...],
    options: StartOptions,
) -> ApplyResult:
    t0 = time.monotonic()
    session = options.session or requests.Session()
    try:
        with docker_errors(f"deployment {plan.deployment!r}"):
            for name in sorted({s.network for s in specs}):
                engine.ensure_network(client, name, plan.deployment)
            pull_missing(client, plan, specs, actions, options.progress, t0)
            _stop_first(client, plan, actions, options.progress)
        runner = _Run(client, plan, specs, env, options, session, t0)
        planned = {a.service: a for a in actions if a.kind != ActionKind.REMOVE}
        outcomes = runner.run(planned)
    finally:
        if options.session is None:
            session.close()
    return ApplyResult(plan.deployment, actions, outcomes, time.monotonic() - t0)


def apply(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    progress: ProgressCallback | None = None,
    timeout_override: float | None = None,
    *,
    session: requests.Session | None = None,
    memory_probe: MemoryProbe | None = None,
    poll_s: float = 1.0,
    actions: tuple[Action, ...] | None = None,
) -> ApplyResult:
    """Converge the engine on the plan: create, recreate, start or restart what differs, leave
    the rest, remove containers of services no longer planned, then wait until every planned
    service answers /v1/models. A failed service is stopped (kept for `logs`), the others
    keep going. `env` holds the .env keys and HF_TOKEN. Ctrl-C leaves started containers up.
    `actions` is what `preflight` returned when the caller already ran it."""
    options = StartOptions(progress, timeout_override, session, memory_probe, poll_s)
    return apply_with(client, plan, specs, env, options, actions)


def apply_with(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    options: StartOptions,
    actions: tuple[Action, ...] | None = None,
) -> ApplyResult:
    """`apply` with its options in one object."""
    options = replace(options, memory_probe=probe_for(plan, options.memory_probe))
    if actions is None:
        actions = preflight(client, plan, specs, env, options.progress)
    return _execute(client, plan, specs, env, actions, options)


def restart_actions(
    client: docker.DockerClient, plan: DeploymentPlan, services: Sequence[str]
) -> tuple[Action, ...]:
    """A restart of the named services (names or aliases; all when empty) on their existing
    containers; refuses one whose predecessor on a shared GPU is down and not restarted too."""
    chosen = {plan.service(n).name for n in services} or {s.name for s in plan.services}
    observed = {o.service: o for o in observe(client, plan.deployment)}
    missing = sorted(n for n in chosen if n not in observed)
    if missing:
        raise StateError(
            f"no container for {', '.join(missing)} in deployment {plan.deployment!r}",
            hint="`qwen-deploy up` creates it",
        )
    for service in plan.services:
        for before in service.start_after if service.name in chosen else ():
            found = observed.get(before)
            if before not in chosen and (found is None or found.state != ContainerState.RUNNING):
                raise StateError(
                    f"{service.name} starts after {before} on a shared GPU, and {before} is "
                    f"{found.state if found else 'missing'}",
                    hint=f"restart both (`qwen-deploy restart {before} {service.name}`) or run "
                    "`qwen-deploy up`",
                )
    return tuple(
        Action(s.name, ActionKind.RESTART, "asked for", observed[s.name].name)
        for s in plan.services
        if s.name in chosen
    )


def restart(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    services: Sequence[str],
    progress: ProgressCallback | None = None,
    timeout_override: float | None = None,
    *,
    session: requests.Session | None = None,
    memory_probe: MemoryProbe | None = None,
    poll_s: float = 1.0,
) -> ApplyResult:
    """Stop and start the named services (names or aliases; all when empty) in start order,
    each on its existing container, and wait until they answer /v1/models."""
    options = StartOptions(progress, timeout_override, session, memory_probe, poll_s)
    return restart_with(client, plan, specs, env, services, options)


def restart_with(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    services: Sequence[str],
    options: StartOptions,
) -> ApplyResult:
    """`restart` with its options in one object."""
    options = replace(options, memory_probe=probe_for(plan, options.memory_probe))
    actions = restart_actions(client, plan, services)
    return _execute(client, plan, specs, env, actions, options)

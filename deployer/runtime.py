"""Run a plan's containers through the Docker SDK: converge, start in order, inspect, stop.

Every container is created from its `ContainerSpec` (deployer/spec.py), the same description
the compose file is rendered from, and stamped with a hash of it in the compose config-hash
label. `up` compares that label with the plan and decides per service create | recreate |
start | restart | noop (docker/compose v1 `service.py::convergence_plan`), then acts: services
on disjoint GPUs start in parallel threads, services sharing a GPU one after another, each
only once the one before answers `GET /v1/models` with its key (vllm#55827: two engines
profiling one GPU at once mis-size each other).

A container starts with restart policy `no` and gets the spec's (`always`) once it is ready, so
a failing start exits once with its own logs instead of crash-looping; a failed container is
stopped and kept for `logs`, and the services that start after it on its GPU are not started.

Functions take a `docker.DockerClient`; only the CLI builds one. docker.errors are turned into
DeployError subclasses in one place, `docker_errors()`. Nothing here prints: progress goes to a
callback, results come back as dataclasses.
"""

from __future__ import annotations

import contextlib
import errno
import math
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import docker
import docker.errors
import requests
from docker.types import DeviceRequest

from deployer import diagnose
from deployer.endpoints import base_url_for
from deployer.errors import DeployError, DeployFailed, DockerUnavailable, StateError
from deployer.gpus import GIB, MIB, GpuInventory
from deployer.planner import DeploymentPlan, ServicePlan
from deployer.spec import (
    LABEL_CONFIG_HASH,
    LABEL_ENGINE,
    LABEL_GPUS,
    LABEL_MAX_MODEL_LEN,
    LABEL_MODEL,
    LABEL_ONEOFF,
    LABEL_PORT,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LABEL_UTILIZATION,
    ContainerSpec,
)

STATUS_SCHEMA_VERSION = 1
STOP_TIMEOUT_S = 30  # vLLM shuts down cleanly on SIGTERM well within this
LOG_TAIL_ON_FAILURE = 200
EXCERPT_LINES = 15
# vLLM creates its CUDA context (a few hundred MiB) before it compares free memory with its
# request, so the request alone is not enough to start.
CUDA_CONTEXT_BYTES = 512 * MIB

# Stages a service goes through while `up` or `restart` works on it.
WAITING = "waiting"  # for the service that starts before it on a shared GPU
PULLING = "pulling image"
STOPPING = "stopping"
CREATING = "creating"
STARTING = "starting"
LOADING = "loading model"
HEALTHY = "healthy"
FAILED = "failed"
NOT_STARTED = "not started"  # the service it starts after did not become ready

ACTIONS = ("create", "recreate", "start", "restart", "noop", "remove")


# --- errors at the boundary -----------------------------------------------------------------


@contextlib.contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Turn Docker SDK and transport errors into DeployError subclasses a user can act on."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except DeployError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise DeployFailed(
            f"{prefix}image not found ({_explanation(exc)})",
            hint="build the stand-in with `make images`, or `docker pull` the image",
        ) from None
    except docker.errors.NotFound as exc:
        raise StateError(
            f"{prefix}{_explanation(exc)}",
            hint="the container or network went away meanwhile; run the command again",
        ) from None
    except docker.errors.APIError as exc:
        text = _explanation(exc)
        hint = None
        if "could not select device driver" in text:
            hint = "install the NVIDIA Container Toolkit and restart dockerd"
        elif "port is already allocated" in text or "address already in use" in text:
            hint = "another process or container holds that host port: stop it or change `port:`"
        elif "Conflict" in text and "already in use" in text:
            hint = "a container with that name exists outside this deployment's labels: remove it"
        raise DeployFailed(f"{prefix}Docker refused: {text}", hint=hint) from None
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        raise DockerUnavailable(
            f"{prefix}lost the connection to the Docker engine ({exc})",
            hint="is dockerd running? check DOCKER_HOST",
        ) from None


def _explanation(exc: docker.errors.APIError) -> str:
    text = exc.explanation or str(exc)
    return text.decode() if isinstance(text, bytes) else str(text)


# --- observing the engine -------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """One container of the deployment as the engine describes it (from its labels)."""

    service: str
    id: str
    name: str
    state: str  # created | running | paused | restarting | removing | exited | dead
    health: str | None  # starting | healthy | unhealthy; None without a healthcheck
    config_hash: str
    labels: Mapping[str, str]
    image: str
    image_id: str  # what the container runs; differs from the tag's once the tag moves
    restart_count: int
    exit_code: int | None
    started_at: str | None
    restart_policy: str

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Observed:
        config = attrs.get("Config") or {}
        labels = config.get("Labels") or {}
        state = attrs.get("State") or {}
        health = state.get("Health") or {}
        host = attrs.get("HostConfig") or {}
        return cls(
            service=labels.get(LABEL_SERVICE, ""),
            id=attrs.get("Id", ""),
            name=str(attrs.get("Name", "")).lstrip("/"),
            state=state.get("Status", "unknown"),
            health=health.get("Status"),
            config_hash=labels.get(LABEL_CONFIG_HASH, ""),
            labels=dict(labels),
            image=config.get("Image", ""),
            image_id=str(attrs.get("Image", "")),
            restart_count=int(attrs.get("RestartCount") or 0),
            exit_code=state.get("ExitCode"),
            started_at=state.get("StartedAt"),
            restart_policy=(host.get("RestartPolicy") or {}).get("Name") or "no",
        )


def _project_filter(deployment: str) -> dict[str, list[str]]:
    return {"label": [f"{LABEL_PROJECT}={deployment}", f"{LABEL_ONEOFF}=False"]}


def _containers(client: docker.DockerClient, deployment: str) -> list[Any]:
    return list(client.containers.list(all=True, filters=_project_filter(deployment)))


def observe(client: docker.DockerClient, deployment: str) -> list[Observed]:
    """The deployment's containers, found by the compose project label."""
    with docker_errors(f"listing the containers of {deployment!r}"):
        return [Observed.from_attrs(c.attrs) for c in _containers(client, deployment)]


# --- deciding what to do ----------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    service: str
    kind: str  # one of ACTIONS
    reason: str
    container: str | None = None  # name of the existing container it acts on


# Labels that describe a service well enough to say why its hash changed.
_EXPLAINED_LABELS = (
    (LABEL_MODEL, "model"),
    (LABEL_GPUS, "GPUs"),
    (LABEL_PORT, "port"),
    (LABEL_MAX_MODEL_LEN, "max-model-len"),
    (LABEL_UTILIZATION, "gpu-memory-utilization"),
    (LABEL_ENGINE, "engine"),
)


def _changes(old: Observed, spec: ContainerSpec) -> str:
    new = dict(spec.labels)
    parts = [
        f"{name} {old.labels.get(key, '?')} -> {new.get(key, '?')}"
        for key, name in _EXPLAINED_LABELS
        if old.labels.get(key) != new.get(key)
    ]
    if old.image != spec.image:
        parts.append(f"image {old.image} -> {spec.image}")
    return ", ".join(parts) or "configuration changed (command, environment or keys)"


def _memory_changed(old: Observed, spec: ContainerSpec) -> bool:
    new = dict(spec.labels)
    return any(old.labels.get(k) != new.get(k) for k in (LABEL_GPUS, LABEL_UTILIZATION))


def _dependents(plan: DeploymentPlan, name: str) -> list[str]:
    """Services that start after `name`, directly or through others, in plan order."""
    after: set[str] = {name}
    for service in plan.services:  # start_after only names services earlier in the plan
        if set(service.start_after) & after:
            after.add(service.name)
    return [s.name for s in plan.services if s.name in after and s.name != name]


def converge_actions(
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    observed: Sequence[Observed],
    image_ids: Mapping[str, str] | None = None,
) -> tuple[Action, ...]:
    """What `up` does per service, from the engine's containers; pure. Plan order, then
    removals. A service whose GPU memory changes takes the services that start after it on
    its GPUs with it, so they start again, in order, on the memory it leaves. `image_ids`
    (image name -> local image id) recreates containers whose tag now names another image."""
    by_service: dict[str, list[Observed]] = {}
    for item in observed:
        by_service.setdefault(item.service, []).append(item)
    actions: dict[str, Action] = {}
    extra: list[Action] = []
    memory_moved: list[str] = []
    for spec in specs:
        found = by_service.pop(spec.service, [])
        current = next((o for o in found if o.name == spec.container_name), None)
        if current is None and found:
            current = found[0]
        extra += [
            Action(o.service, "remove", "a second container of the service", o.name)
            for o in found
            if o is not current
        ]
        if current is None:
            actions[spec.service] = Action(spec.service, "create", "no container")
            memory_moved.append(spec.service)
            continue
        name = current.name
        if current.config_hash != spec.config_hash(dict(env)):
            actions[spec.service] = Action(spec.service, "recreate", _changes(current, spec), name)
            if _memory_changed(current, spec):
                memory_moved.append(spec.service)
        elif (image_ids or {}).get(spec.image, current.image_id) != current.image_id:
            actions[spec.service] = Action(
                spec.service, "recreate", f"image {spec.image} was updated", name
            )
            memory_moved.append(spec.service)
        elif current.state in ("dead", "removing"):
            actions[spec.service] = Action(
                spec.service, "recreate", f"container {current.state}", name
            )
        elif current.state == "running":
            actions[spec.service] = Action(spec.service, "noop", "up to date", name)
        elif current.state in ("restarting", "paused"):
            reason = "crash-looping" if current.state == "restarting" else "paused"
            actions[spec.service] = Action(spec.service, "restart", reason, name)
        else:  # created, exited
            code = f" (exit code {current.exit_code})" if current.state == "exited" else ""
            actions[spec.service] = Action(spec.service, "start", f"{current.state}{code}", name)
    for moved in memory_moved:
        for dependent in _dependents(plan, moved):
            action = actions.get(dependent)
            if action is not None and action.kind == "noop":
                actions[dependent] = Action(
                    dependent,
                    "restart",
                    f"starts after {moved} on a shared GPU, whose memory changed",
                    action.container,
                )
    for service, leftovers in sorted(by_service.items()):
        extra += [Action(service, "remove", "not in the plan any more", o.name) for o in leftovers]
    return (*(actions[s.service] for s in specs), *extra)


def plan_actions(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
) -> tuple[Action, ...]:
    """What `up` would do now (for `up --dry-run`); changes nothing."""
    return converge_actions(
        plan, specs, env, observe(client, plan.deployment), _local_image_ids(client, specs)
    )


def _local_image_ids(client: docker.DockerClient, specs: Sequence[ContainerSpec]) -> dict[str, str]:
    """Image name -> id of the local image the name points at now (absent when not pulled)."""
    ids = {}
    for image in sorted({s.image for s in specs}):
        try:
            ids[image] = client.images.get(image).id
        except docker.errors.ImageNotFound:
            continue
    return ids


# --- GPU memory before each start -------------------------------------------------------------


MemoryProbe = Callable[[], GpuInventory | None]


def nvml_probe() -> GpuInventory | None:
    """The GPUs as NVML sees them now, or None where NVML is not available."""
    from deployer.errors import InventoryError

    try:
        from deployer.nvml import read_inventory

        return read_inventory()
    except (InventoryError, ImportError, OSError):
        return None


def memory_shortfall(service: ServicePlan, inventory: GpuInventory) -> str | None:
    """Why `service` cannot start on the GPUs as they are now, with numbers; None if it can."""
    problems = []
    for index in service.gpus:
        gpu = next((g for g in inventory.gpus if g.index == index), None)
        if gpu is None:
            problems.append(f"GPU {index} is not there (NVML sees {inventory.indices_text()})")
            continue
        asked = math.ceil(gpu.total_bytes * service.gpu_memory_utilization)
        if gpu.free_bytes >= asked + CUDA_CONTEXT_BYTES:
            continue
        users = ", ".join(
            f"{p.name}[{p.pid}] {p.used_memory_mib / 1024:.1f} GiB" for p in gpu.processes
        )
        problems.append(
            f"GPU {index} has {gpu.free_bytes / GIB:.1f} GiB free of {gpu.total_bytes / GIB:.1f} "
            f"GiB; {service.name} asks {asked / GIB:.1f} GiB (gpu_memory_utilization "
            f"{service.gpu_memory_utilization:g}) + {CUDA_CONTEXT_BYTES / GIB:.1f} GiB CUDA "
            "context" + (f"; in use by {users}" if users else "")
        )
    return "; ".join(problems) or None


# --- readiness --------------------------------------------------------------------------------


def readiness(
    session: requests.Session, service: ServicePlan, api_key: str, timeout_s: float = 3.0
) -> tuple[bool, str]:
    """(ready, detail): ready once GET /v1/models answers 200 with the service's key and lists
    its model; loaded weights and KV cache, not just a live process as /health says."""
    url = base_url_for(service) + "/v1/models"
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}  # none: auth: none
        response = session.get(url, headers=headers, timeout=timeout_s)
    except requests.RequestException:
        return False, "not answering yet"
    with response:
        if response.status_code in (401, 403):
            raise DeployFailed(
                f"/v1/models refused the deployment's key (HTTP {response.status_code})",
                hint="another container may hold the port, or it runs with an older key",
            )
        if response.status_code != 200:
            return False, f"HTTP {response.status_code}"
        try:
            served = [str(m.get("id")) for m in response.json().get("data", [])]
        except (ValueError, AttributeError):
            return False, "answer is not a model list"
    if service.served_model_name not in served:
        raise DeployFailed(
            f"port {service.port} serves {', '.join(served) or 'nothing'}, not "
            f"{service.served_model_name}",
            hint="another process answers on that port: stop it or change `port:`",
        )
    return True, "ready"


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One report from `apply`/`restart`: where a service is and for how long."""

    service: str
    stage: str
    elapsed_s: float  # since work on this service began (waiting for others excluded)
    detail: str = ""


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ServiceOutcome:
    service: str
    action: str
    ok: bool
    stage: str  # the last one reached
    message: str = ""
    started_s: float | None = None  # since apply began: when work on it began
    ready_s: float | None = None  # since apply began: when it answered /v1/models
    log_excerpt: tuple[str, ...] = ()
    findings: tuple[diagnose.Finding, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["log_excerpt"] = list(self.log_excerpt)
        data["findings"] = [asdict(f) for f in self.findings]
        return data


@dataclass(frozen=True)
class ApplyResult:
    deployment: str
    actions: tuple[Action, ...]
    outcomes: tuple[ServiceOutcome, ...]
    elapsed_s: float

    @property
    def failed(self) -> tuple[ServiceOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def ok(self) -> bool:
        return not self.failed

    def outcome(self, service: str) -> ServiceOutcome:
        for outcome in self.outcomes:
            if outcome.service == service:
                return outcome
        raise KeyError(service)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "ok": self.ok,
            "elapsed_s": round(self.elapsed_s, 2),
            "actions": [asdict(a) for a in self.actions],
            "services": [o.to_dict() for o in self.outcomes],
        }


def failure_error(result: ApplyResult) -> DeployFailed:
    """The error `up` and `restart` raise when a service did not become ready."""
    failed = result.failed
    if len(failed) == 1:
        message = f"{failed[0].service} did not become ready: {failed[0].message}"
    else:
        message = f"{len(failed)} services did not become ready: " + "; ".join(
            f"{o.service}: {o.message}" for o in failed
        )
    advice = [f.advice for o in failed for f in o.findings]
    hint = "; ".join(dict.fromkeys(advice)) or "see `qwen-deploy logs " + failed[0].service + "`"
    return DeployFailed(message, hint=hint)


# --- acting -------------------------------------------------------------------------------------


class _Cancelled(Exception):
    pass


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def create_kwargs(
    client: docker.DockerClient,
    spec: ContainerSpec,
    env: Mapping[str, str],
    restart_policy: str | None = None,
) -> dict[str, Any]:
    """The `containers.create` arguments for a spec; secrets from `env` (the .env keys and
    HF_TOKEN), empty ones left out; `restart_policy` overrides the spec's."""
    environment = dict(spec.environment)
    for container_var, source in spec.secret_env:
        if env.get(source):
            environment[container_var] = env[source]
    check = spec.healthcheck
    return {
        "image": spec.image,
        "entrypoint": list(spec.entrypoint) if spec.entrypoint else None,
        "command": list(spec.command),
        "name": spec.container_name,
        "environment": environment,
        "labels": {**dict(spec.labels), LABEL_CONFIG_HASH: spec.config_hash(dict(env))},
        "ports": {f"{spec.container_port}/tcp": (spec.bind, spec.host_port)},
        "device_requests": [
            DeviceRequest(driver="nvidia", device_ids=list(spec.device_ids), capabilities=[["gpu"]])
        ],
        "ipc_mode": spec.ipc_mode,
        "volumes": {volume: {"bind": path, "mode": "rw"} for volume, path in spec.volumes},
        "restart_policy": {"Name": restart_policy or spec.restart_policy},
        "healthcheck": {
            "test": list(check.test),
            "interval": _ns(check.interval_s),
            "timeout": _ns(check.timeout_s),
            "retries": check.retries,
            "start_period": _ns(check.start_period_s),
        },
        "network": spec.network,
        "networking_config": {
            spec.network: client.api.create_endpoint_config(aliases=[spec.service])
        },
        "detach": True,
    }


def ensure_network(client: docker.DockerClient, name: str, project: str) -> None:
    """The deployment's bridge network, as compose would name and label it."""
    try:
        client.networks.get(name)
    except docker.errors.NotFound:
        client.networks.create(
            name,
            driver="bridge",
            labels={LABEL_PROJECT: project, "com.docker.compose.network": "default"},
        )


def _set_restart_policy(container: Any, name: str) -> None:
    policy = (container.attrs.get("HostConfig") or {}).get("RestartPolicy") or {}
    if policy.get("Name") != name:
        container.update(restart_policy={"Name": name})
        container.reload()


def _stop(container: Any, disarm: bool = True) -> None:
    """Stop a container; `disarm` also sets its restart policy to `no`, so a failed service
    stays down (and keeps its logs) even when dockerd restarts. The next `up` or `restart`
    that gets it ready sets the spec's policy again."""
    container.reload()
    if container.status in ("running", "restarting", "paused"):
        container.stop(timeout=STOP_TIMEOUT_S)
    if disarm:
        with contextlib.suppress(docker.errors.APIError):
            container.update(restart_policy={"Name": "no"})


def _log_lines(container: Any, since: float, tail: int = LOG_TAIL_ON_FAILURE) -> list[str]:
    """The container's last lines since `since` (Unix time): this attempt's, not older runs'."""
    with contextlib.suppress(docker.errors.APIError):
        raw = container.logs(tail=tail, since=datetime.fromtimestamp(since, timezone.utc))
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return text.splitlines()
    return []


class _Run:
    """One `apply` or `restart`: a thread per service, each waiting for the service that starts
    before it on a shared GPU to be ready (or to have failed and been stopped)."""

    def __init__(
        self,
        client: docker.DockerClient,
        plan: DeploymentPlan,
        specs: Sequence[ContainerSpec],
        env: Mapping[str, str],
        progress: ProgressCallback | None,
        timeout_override: float | None,
        session: requests.Session,
        memory_probe: MemoryProbe | None,
        poll_s: float,
        t0: float,
    ) -> None:
        self.client = client
        self.plan = plan
        self.specs = {s.service: s for s in specs}
        self.env = env
        self.progress_cb = progress
        self.timeout_override = timeout_override
        self.session = session
        self.memory_probe = memory_probe
        self.poll_s = poll_s
        self.cancel = threading.Event()
        self.done = {s.name: threading.Event() for s in plan.services}
        self.outcomes: dict[str, ServiceOutcome] = {}
        self.lock = threading.Lock()
        self.t0 = t0  # when the command began: outcome times are relative to it

    def report(self, service: str, stage: str, since: float, detail: str = "") -> None:
        if self.progress_cb is None:
            return
        with self.lock:  # the callback sees one call at a time
            self.progress_cb(Progress(service, stage, time.monotonic() - since, detail))

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
        except KeyboardInterrupt:
            # What started keeps running: containers are Docker's, not this process's.
            self.cancel.set()
            raise
        return tuple(self.outcomes[s.name] for s in self.plan.services if s.name in self.outcomes)

    def _service(self, service: ServicePlan, action: Action) -> None:
        try:
            for before in service.start_after:
                if not self.done[before].is_set():
                    waited = time.monotonic()
                    while not self.done[before].is_set():
                        self.report(service.name, WAITING, waited, f"for {before}")
                        self.sleep(self.poll_s)
            failed = [b for b in service.start_after if not self._ok(b)]
            if failed and action.kind != "noop":
                # Its container would only wait in its start gate for a neighbour that is down.
                message = (
                    f"not started: it starts after {failed[0]} on a shared GPU, and "
                    f"{failed[0]} did not become ready"
                )
                self.report(service.name, NOT_STARTED, time.monotonic(), message)
                self.outcomes[service.name] = ServiceOutcome(
                    service.name,
                    action.kind,
                    False,
                    NOT_STARTED,
                    message,
                    started_s=time.monotonic() - self.t0,
                )
                return
            self.outcomes[service.name] = self._act(service, action)
        except _Cancelled:
            self.outcomes[service.name] = ServiceOutcome(
                service.name, action.kind, False, "interrupted", "interrupted"
            )
        except BaseException as exc:  # a bug must not leave the others waiting forever
            self.outcomes[service.name] = ServiceOutcome(
                service.name, action.kind, False, FAILED, f"unexpected {type(exc).__name__}: {exc}"
            )
        finally:
            self.done[service.name].set()

    def _ok(self, service: str) -> bool:
        outcome = self.outcomes.get(service)
        return outcome is None or outcome.ok  # None: not part of this run

    def _act(self, service: ServicePlan, action: Action) -> ServiceOutcome:
        began = time.monotonic()
        # Logs of this attempt only (second precision); all of a container left running.
        wall = time.time() - 1 if action.kind != "noop" else 0.0
        started_s = began - self.t0
        spec = self.specs[service.name]
        container = None
        try:
            with docker_errors(""):
                if action.kind != "noop":
                    self._check_memory(service, began)
                # Restart policy `no` until the service is ready: a failing start exits once,
                # with its exit code and one run of logs, instead of crash-looping.
                if action.kind in ("create", "recreate"):
                    self.report(service.name, CREATING, began)
                    kwargs = create_kwargs(self.client, spec, self.env, restart_policy="no")
                    container = self.client.containers.create(**kwargs)
                else:
                    container = self.client.containers.get(action.container or spec.container_name)
                if action.kind != "noop":
                    self.report(service.name, STARTING, began)
                    _set_restart_policy(container, "no")
                    container.start()
                self._wait_ready(service, container, began)
                _set_restart_policy(container, spec.restart_policy)
        except DeployError as exc:
            return self._failed(service, action, container, exc, started_s, wall)
        self.report(service.name, HEALTHY, began, "unchanged" if action.kind == "noop" else "")
        return ServiceOutcome(
            service.name,
            action.kind,
            True,
            HEALTHY,
            started_s=started_s,
            ready_s=time.monotonic() - self.t0,
        )

    def _check_memory(self, service: ServicePlan, began: float) -> None:
        if self.memory_probe is None:
            return
        inventory = self.memory_probe()
        if inventory is None:
            return
        problem = memory_shortfall(service, inventory)
        if problem:
            raise DeployFailed(
                f"not enough free GPU memory to start: {problem}",
                hint="stop what uses the GPU, or plan again with the memory that is free now",
            )

    def _wait_ready(self, service: ServicePlan, container: Any, began: float) -> None:
        timeout = self.timeout_override or service.startup_timeout_s
        key = self.env.get(service.api_key_env, "")
        container.reload()
        restarts = int(container.attrs.get("RestartCount") or 0)
        detail = ""
        while True:
            container.reload()
            state = container.attrs.get("State") or {}
            status = state.get("Status")
            code = state.get("ExitCode")
            if status in ("exited", "dead"):
                raise DeployFailed(f"the container exited with code {code}")
            if status == "restarting" or int(container.attrs.get("RestartCount") or 0) > restarts:
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
            self.report(service.name, LOADING, began, detail)
            self.sleep(self.poll_s)

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
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                lines = _log_lines(container, since)
                _stop(container)  # a failed service must not crash-loop next to healthy ones
        findings = tuple(diagnose.diagnose(lines))
        excerpt = tuple(diagnose.excerpt(lines, EXCERPT_LINES))
        message = str(exc)
        if findings:
            message = f"{exc.message}: {findings[0].summary}"
        self.report(service.name, FAILED, self.t0 + started_s, message)
        return ServiceOutcome(
            service.name,
            action.kind,
            False,
            FAILED,
            message,
            started_s=started_s,
            log_excerpt=excerpt,
            findings=findings,
        )


def _ensure_images(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    images: Iterable[str],
    report: Callable[[str], None],
) -> None:
    for image in sorted(set(images)):
        try:
            client.images.get(image)
            continue
        except docker.errors.ImageNotFound:
            if plan.engine == "stand-in":
                raise DeployFailed(
                    f"the stand-in image {image} is not built",
                    hint="build it with `make images`; `STANDIN_IMAGE=NAME bash "
                    "scripts/build-images.sh` builds another tag",
                ) from None
        report(image)
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            client.images.pull(repository, tag=tag or "latest")
        except docker.errors.APIError as exc:
            raise DeployFailed(
                f"cannot pull {image}: {_explanation(exc)}",
                hint="check the network and registry access, or `docker pull` it yourself",
            ) from None


def _remove(container: Any) -> None:
    _stop(container, disarm=False)
    container.remove(force=True)


def _execute(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    actions: tuple[Action, ...],
    progress: ProgressCallback | None,
    timeout_override: float | None,
    session: requests.Session | None,
    memory_probe: MemoryProbe | None,
    poll_s: float,
) -> ApplyResult:
    t0 = time.monotonic()
    own_session = session is None
    session = session or requests.Session()
    try:
        with docker_errors(f"deployment {plan.deployment!r}"):
            networks = {s.network for s in specs}
            for name in sorted(networks):
                ensure_network(client, name, plan.deployment)
            creating = [a.service for a in actions if a.kind in ("create", "recreate")]
            by_name = {s.service: s for s in specs}

            def pulling(image: str) -> None:
                for service in creating:
                    if by_name[service].image == image and progress is not None:
                        progress(Progress(service, PULLING, time.monotonic() - t0, image))

            _ensure_images(client, plan, [by_name[s].image for s in creating], pulling)
            # Stop before anything starts, later services first: a GPU's memory is free before
            # the first instance on it loads, and nothing is stopped under a loading neighbour
            # (vllm#56830: free memory growing during profiling aborts vLLM's start).
            order = [s.name for s in plan.services]
            stopping = sorted(
                (a for a in actions if a.kind in ("recreate", "restart", "remove") and a.container),
                key=lambda a: -order.index(a.service) if a.service in order else 1,
            )
            for action in stopping:
                if progress is not None:
                    progress(Progress(action.service, STOPPING, 0.0, action.reason))
                try:
                    container = client.containers.get(action.container)
                except docker.errors.NotFound:
                    continue
                if action.kind == "restart":
                    _stop(container, disarm=False)
                else:
                    _remove(container)
        runner = _Run(
            client, plan, specs, env, progress, timeout_override, session, memory_probe, poll_s, t0
        )
        planned = {a.service: a for a in actions if a.kind != "remove"}
        outcomes = runner.run(planned)
    finally:
        if own_session:
            session.close()
    return ApplyResult(plan.deployment, actions, outcomes, time.monotonic() - t0)


# --- before anything changes ---------------------------------------------------------------------


def _engine_is_local(client: docker.DockerClient) -> bool:
    """A unix-socket engine publishes ports on this host, so a local bind() tells the truth."""
    return str(getattr(client.api, "base_url", "")).startswith("http+docker://localhost")


def _port_in_use(host: str, port: int) -> bool:
    """True when something on this host listens on host:port (or on every interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # TIME_WAIT leftovers of a container just stopped are not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            # EACCES (a port below 1024 as a user), EADDRNOTAVAIL: Docker decides, not us.
            return exc.errno == errno.EADDRINUSE
    return False


def port_conflicts(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    actions: Sequence[Action],
) -> list[str]:
    """Host ports that a service about to start cannot get: published by a container of
    another deployment, or held by another process on this host. Ports that this deployment's
    own containers hold are not conflicts: they are stopped before anything starts."""
    starting = {a.service for a in actions if a.kind in ("create", "recreate", "start", "restart")}
    theirs: dict[int, str] = {}
    ours: set[int] = set()
    for summary in client.api.containers():  # running containers, with their published ports
        labels = summary.get("Labels") or {}
        name = str((summary.get("Names") or ["?"])[0]).lstrip("/")
        for port in summary.get("Ports") or []:
            public = port.get("PublicPort")
            if not public or port.get("Type", "tcp") != "tcp":
                continue
            if labels.get(LABEL_PROJECT) == plan.deployment:
                ours.add(int(public))
            else:
                project = labels.get(LABEL_PROJECT)
                theirs[int(public)] = name + (f" (deployment {project!r})" if project else "")
    local = _engine_is_local(client)
    problems = []
    for spec in specs:
        if spec.service not in starting:
            continue
        where = f"port {spec.host_port} of service {spec.service}"
        if spec.host_port in theirs:
            problems.append(f"{where} is published by container {theirs[spec.host_port]}")
        elif local and spec.host_port not in ours and _port_in_use(spec.bind, spec.host_port):
            problems.append(f"{where} is already in use on {spec.bind} by another process")
    return problems


def preflight(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    progress: ProgressCallback | None = None,
) -> tuple[Action, ...]:
    """What `up` checks before it changes anything (files, networks, containers): every host
    port it will publish is free and every image it will create containers from is here
    (pulled if need be). Raises DeployFailed naming the port or image; returns the actions."""
    t0 = time.monotonic()
    with docker_errors(f"deployment {plan.deployment!r}"):
        actions = converge_actions(
            plan, specs, env, observe(client, plan.deployment), _local_image_ids(client, specs)
        )
        problems = port_conflicts(client, plan, specs, actions)
        if problems:
            raise DeployFailed(
                "; ".join(problems),
                hint="stop what holds it, or change `port:` in the profile; nothing was changed",
            )
        by_name = {s.service: s for s in specs}
        creating = [a.service for a in actions if a.kind in ("create", "recreate")]

        def pulling(image: str) -> None:
            for service in creating:
                if by_name[service].image == image and progress is not None:
                    progress(Progress(service, PULLING, time.monotonic() - t0, image))

        _ensure_images(client, plan, [by_name[s].image for s in creating], pulling)
    return actions


def _probe_for(plan: DeploymentPlan, probe: MemoryProbe | None) -> MemoryProbe | None:
    """NVML before each start unless a probe is given, never with the stand-in engine's
    make-believe GPUs."""
    if probe is not None:
        return probe
    return None if plan.engine == "stand-in" else nvml_probe


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
    probe = _probe_for(plan, memory_probe)
    if actions is None:
        actions = preflight(client, plan, specs, env, progress)
    return _execute(
        client,
        plan,
        specs,
        env,
        actions,
        progress,
        timeout_override,
        session,
        probe,
        poll_s,
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
    probe = _probe_for(plan, memory_probe)
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
            if before not in chosen and (found is None or found.state != "running"):
                raise StateError(
                    f"{service.name} starts after {before} on a shared GPU, and {before} is "
                    f"{found.state if found else 'missing'}",
                    hint=f"restart both (`qwen-deploy restart {before} {service.name}`) or run "
                    "`qwen-deploy up`",
                )
    actions = tuple(
        Action(s.name, "restart", "asked for", observed[s.name].name)
        for s in plan.services
        if s.name in chosen
    )
    return _execute(
        client,
        plan,
        specs,
        env,
        actions,
        progress,
        timeout_override,
        session,
        probe,
        poll_s,
    )


@dataclass(frozen=True)
class DownResult:
    deployment: str
    removed: tuple[str, ...]  # container names
    networks: tuple[str, ...]


def down(
    client: docker.DockerClient, deployment: str, plan: DeploymentPlan | None = None
) -> DownResult:
    """Stop and remove the deployment's containers (later services first) and its network.
    Volumes (the model cache) and the deployment directory stay."""
    with docker_errors(f"deployment {deployment!r}"):
        containers = _containers(client, deployment)
        order = [s.name for s in plan.services] if plan else []

        def rank(container: Any) -> int:
            service = (container.labels or {}).get(LABEL_SERVICE, "")
            return -order.index(service) if service in order else 1

        containers.sort(key=rank)
        # Stopped together: each may take a while to exit, and order does not matter here.
        errors: list[BaseException] = []

        def stop(container: Any) -> None:
            try:
                _stop(container, disarm=False)
            except BaseException as exc:  # raised again below, in this thread
                errors.append(exc)

        threads = [threading.Thread(target=stop, args=(c,), daemon=True) for c in containers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        removed = []
        for container in containers:
            container.remove(force=True)
            removed.append(container.name)
        networks = []
        candidates = {
            n.id: n
            for n in client.networks.list(filters={"label": f"{LABEL_PROJECT}={deployment}"})
        }
        with contextlib.suppress(docker.errors.NotFound):
            named = client.networks.get(f"{deployment}_default")
            candidates[named.id] = named
        for network in candidates.values():
            network.remove()
            networks.append(network.name)
    return DownResult(deployment, tuple(removed), tuple(sorted(networks)))


# --- status -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    model: str
    gpus: str
    port: int | None
    state: str  # the engine's container state, or "missing"
    health: str  # healthy | unhealthy | starting | none | -
    uptime_s: float | None
    restart_count: int
    exit_code: int | None
    container: str | None
    in_plan: bool
    up_to_date: bool | None  # config hash equals the plan's; None when unknown
    verify: Mapping[str, Any] | None  # the last verification, as `verify` recorded it

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["uptime_s"] = None if self.uptime_s is None else round(self.uptime_s, 1)
        data["verify"] = None if self.verify is None else dict(self.verify)
        return data


def parse_docker_time(text: str | None) -> datetime | None:
    """Docker's RFC 3339 times with nanoseconds ("2024-05-01T12:00:00.123456789Z")."""
    if not text or text.startswith("0001-"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text)
    if not match:
        return None
    base, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(base + (f".{fraction[:6]:0<6}" if fraction else ""))
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        return stamp.replace(tzinfo=timezone.utc) - sign * timedelta(hours=hours, minutes=minutes)
    return stamp.replace(tzinfo=timezone.utc)


def service_statuses(
    client: docker.DockerClient,
    deployment: str,
    plan: DeploymentPlan | None = None,
    *,
    specs: Sequence[ContainerSpec] = (),
    env: Mapping[str, str] | None = None,
    verify: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> list[ServiceStatus]:
    """One row per planned service (containers from the engine's labels; "missing" when there
    is none) and per container of the deployment no longer in the plan."""
    now = now or datetime.now(timezone.utc)
    observed = observe(client, deployment)
    by_service = {o.service: o for o in observed}
    hashes = {s.service: s.config_hash(dict(env)) for s in specs} if env is not None else {}
    verify = verify or {}
    rows = []
    planned = list(plan.services) if plan else []
    for service in planned:
        found = by_service.pop(service.name, None)
        rows.append(
            _status_row(
                service.name, found, service, hashes.get(service.name), verify, now, in_plan=True
            )
        )
    for name, found in sorted(by_service.items()):
        rows.append(_status_row(name, found, None, None, verify, now, in_plan=plan is None))
    return rows


def _status_row(
    name: str,
    found: Observed | None,
    service: ServicePlan | None,
    wanted_hash: str | None,
    verify: Mapping[str, Any],
    now: datetime,
    in_plan: bool,
) -> ServiceStatus:
    labels = found.labels if found else {}
    model = service.served_model_name if service else labels.get(LABEL_MODEL, "?")
    gpus = ",".join(map(str, service.gpus)) if service else labels.get(LABEL_GPUS, "?")
    port_text = str(service.port) if service else labels.get(LABEL_PORT, "")
    port = int(port_text) if port_text.isdigit() else None
    entry = verify.get(name)
    last_verify = entry if isinstance(entry, Mapping) else None
    if found is None:
        return ServiceStatus(
            name, model, gpus, port, "missing", "-", None, 0, None, None, in_plan, None, last_verify
        )
    started = parse_docker_time(found.started_at)
    uptime = (now - started).total_seconds() if started and found.state == "running" else None
    return ServiceStatus(
        service=name,
        model=model,
        gpus=gpus,
        port=port,
        state=found.state,
        health=found.health or "none",
        uptime_s=uptime,
        restart_count=found.restart_count,
        exit_code=found.exit_code if found.state in ("exited", "dead") else None,
        container=found.name,
        in_plan=in_plan,
        up_to_date=None if wanted_hash is None else found.config_hash == wanted_hash,
        verify=last_verify,
    )


def status_summary(deployment: str, rows: Sequence[ServiceStatus]) -> str:
    """One line: how many services, how many running and healthy, what is wrong."""
    planned = [r for r in rows if r.in_plan]
    running = [r for r in planned if r.state == "running"]
    healthy = [r for r in running if r.health == "healthy"]
    parts = [f"{len(running)}/{len(planned)} running", f"{len(healthy)} healthy"]
    others: dict[str, int] = {}
    for row in planned:
        if row.state != "running":
            others[row.state] = others.get(row.state, 0) + 1
    parts += [f"{n} {state}" for state, n in sorted(others.items())]
    stale = [r.service for r in planned if r.up_to_date is False]
    if stale:
        parts.append(f"changed since started: {', '.join(stale)} (run `qwen-deploy up`)")
    orphans = [r.service for r in rows if not r.in_plan]
    if orphans:
        parts.append(f"not in the plan: {', '.join(orphans)}")
    return f"{deployment}: " + ", ".join(parts)


# --- logs ---------------------------------------------------------------------------------------


def _find_container(client: docker.DockerClient, deployment: str, service: str) -> Any:
    found = client.containers.list(
        all=True,
        filters={"label": [*_project_filter(deployment)["label"], f"{LABEL_SERVICE}={service}"]},
    )
    if not found:
        raise StateError(
            f"no container for {service} in deployment {deployment!r}",
            hint="`qwen-deploy up` creates it; `qwen-deploy status` shows what there is",
        )
    return found[0]


def _split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace").rstrip("\r")
    if buffer:
        yield buffer.decode(errors="replace").rstrip("\r")


def _timestamped(line: str) -> tuple[str, str]:
    stamp, _, text = line.partition(" ")
    return stamp, text


def logs(
    client: docker.DockerClient,
    deployment: str,
    services: Sequence[str] = (),
    *,
    follow: bool = False,
    tail: int | None = None,
    since: datetime | int | None = None,
) -> Iterator[str]:
    """Log lines of the named services' containers (all when empty). With several services,
    each line is prefixed with `name | ` as compose does, interleaved by time."""
    with docker_errors(f"logs of {deployment!r}"):
        if services:
            containers = [(s, _find_container(client, deployment, s)) for s in services]
        else:
            containers = sorted(
                ((c.labels.get(LABEL_SERVICE, c.name), c) for c in _containers(client, deployment)),
                key=lambda pair: pair[0],
            )
        if not containers:
            raise StateError(f"deployment {deployment!r} has no containers")
    width = max(len(name) for name, _ in containers)
    prefixed = len(containers) > 1
    options: dict[str, Any] = {"tail": "all" if tail is None else tail}
    if since is not None:
        options["since"] = since

    def prefix(name: str) -> str:
        return f"{name.ljust(width)} | " if prefixed else ""

    if not follow:
        merged: list[tuple[str, int, str]] = []
        with docker_errors(f"logs of {deployment!r}"):
            for order, (name, container) in enumerate(containers):
                raw = container.logs(timestamps=True, **options)
                for line in _split_lines([raw]):
                    stamp, text = _timestamped(line)
                    merged.append((stamp, order, prefix(name) + text))
        # RFC 3339 with fixed-width nanoseconds sorts as text; stable within one container.
        merged.sort(key=lambda item: (item[0], item[1]) if prefixed else (0, 0))
        yield from (text for _, _, text in merged)
        return
    if not prefixed:
        name, container = containers[0]
        with docker_errors(f"logs of {name}"):
            stream = container.logs(stream=True, follow=True, **options)
            yield from _split_lines(stream)
        return
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(name: str, container: Any) -> None:
        try:
            for line in _split_lines(container.logs(stream=True, follow=True, **options)):
                lines.put(prefix(name) + line)
        except (docker.errors.DockerException, requests.RequestException):
            pass
        finally:
            lines.put(None)

    for name, container in containers:
        threading.Thread(target=pump, args=(name, container), daemon=True).start()
    running = len(containers)
    while running:
        item = lines.get()
        if item is None:
            running -= 1
        else:
            yield item


@dataclass
class ProgressBoard:
    """The latest stage of every service, for renderers and for saying what Ctrl-C left."""

    stages: dict[str, Progress] = field(default_factory=dict)

    def update(self, event: Progress) -> bool:
        """Record an event; True when the stage (not just the time) changed."""
        previous = self.stages.get(event.service)
        self.stages[event.service] = event
        return previous is None or previous.stage != event.stage or previous.detail != event.detail

    def started(self) -> list[str]:
        """Services whose container was started (or kept running) by now."""
        return [
            name
            for name, event in self.stages.items()
            if event.stage in (STARTING, LOADING, HEALTHY)
        ]

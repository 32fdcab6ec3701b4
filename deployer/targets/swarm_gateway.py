"""The gateway's Swarm service in `up` and `restart`: created once every tier is ready (Swarm
has no start order), on the node `up` talks to, and ready once its task runs healthy and
/health answers on this host's port. No GPU, so no start gate and no memory check."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import docker
import docker.errors
import requests

from deployer.gateway.config import GATEWAY_SERVICE
from deployer.runtime.progress import Progress, ProgressCallback
from deployer.runtime.results import ServiceOutcome
from deployer.runtime.states import ActionKind, Stage
from deployer.targets.swarm_spec import SwarmService

READY_TIMEOUT_S = 120.0  # Swarm reports the task running only after its first healthcheck
FAILED_TASK_STATES = ("failed", "rejected", "orphaned")


def _task(service: Any) -> dict[str, Any]:
    tasks = sorted(service.tasks(), key=lambda t: t.get("CreatedAt", ""), reverse=True)
    return tasks[0] if tasks else {}


def _logs(service: Any, tail: int = 30) -> tuple[str, ...]:
    with contextlib.suppress(docker.errors.APIError):
        raw = b"".join(service.logs(stdout=True, stderr=True, tail=tail))
        return tuple(raw.decode(errors="replace").splitlines())
    return ()


def wait_healthy(
    service: Any,
    port: int,
    session: requests.Session,
    progress: ProgressCallback | None,
    poll_s: float = 1.0,
    timeout_s: float = READY_TIMEOUT_S,
) -> tuple[bool, str]:
    """Until the task runs (Swarm's healthcheck passed) and /health answers here; a failed
    task stops the service (no restart loop), as for a tier."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() - started < timeout_s:
        service.reload()
        status = _task(service).get("Status", {})
        state, error = str(status.get("State", "pending")), str(status.get("Err", ""))
        if state in FAILED_TASK_STATES or (state == "shutdown" and error):
            service.scale(0)
            return False, f"task {state}: {error or 'exited'}"
        if state == "running":
            with contextlib.suppress(requests.RequestException):
                if session.get(url, timeout=3).status_code == 200:
                    return True, "ready"
        if progress is not None:
            progress(Progress(GATEWAY_SERVICE, Stage.STARTING, time.monotonic() - started, state))
        time.sleep(poll_s)
    service.scale(0)
    return False, f"did not answer {url} within {timeout_s:g} s"


def start(
    client: docker.DockerClient,
    spec: SwarmService,
    kind: ActionKind,
    tiers_failed: Sequence[str],
    create_kwargs: Mapping[str, Any],
    session: requests.Session,
    progress: ProgressCallback | None,
    begun: float,
    poll_s: float = 1.0,
) -> ServiceOutcome:
    """`up`'s gateway action, after every tier's (not started while a tier it fronts failed)."""
    if tiers_failed and kind != ActionKind.NOOP:
        message = f"not started: {', '.join(tiers_failed)} did not become ready"
        if progress is not None:
            progress(Progress(GATEWAY_SERVICE, Stage.NOT_STARTED, 0.0, message))
        return ServiceOutcome(GATEWAY_SERVICE, kind, False, Stage.NOT_STARTED, message)
    at = time.monotonic()
    if kind == ActionKind.NOOP:
        service = client.services.get(spec.name)
    else:
        if progress is not None:
            progress(Progress(GATEWAY_SERVICE, Stage.CREATING, 0.0))
        service = client.services.create(**create_kwargs)
    return _outcome(service, spec.published_port, kind, session, progress, at, begun, poll_s)


def restart(
    service: Any,
    port: int,
    session: requests.Session,
    progress: ProgressCallback | None,
    begun: float,
    poll_s: float = 1.0,
) -> ServiceOutcome:
    """`restart gateway`: a new task (or the service scaled back up after a failed start)."""
    at = time.monotonic()
    if progress is not None:
        progress(Progress(GATEWAY_SERVICE, Stage.STOPPING, 0.0))
    if int(service.attrs["Spec"]["Mode"]["Replicated"].get("Replicas", 1)) == 0:
        service.scale(1)
    else:
        service.force_update()
    time.sleep(poll_s)  # let Swarm replace the task before watching it
    return _outcome(service, port, ActionKind.RESTART, session, progress, at, begun, poll_s)


def _outcome(
    service: Any,
    port: int,
    kind: ActionKind,
    session: requests.Session,
    progress: ProgressCallback | None,
    at: float,
    begun: float,
    poll_s: float,
) -> ServiceOutcome:
    ok, message = wait_healthy(service, port, session, progress, poll_s)
    stage = Stage.HEALTHY if ok else Stage.FAILED
    if progress is not None:
        progress(Progress(GATEWAY_SERVICE, stage, time.monotonic() - at, message))
    return ServiceOutcome(
        GATEWAY_SERVICE,
        kind,
        ok,
        stage,
        "" if ok else message,
        started_s=at - begun,
        ready_s=(time.monotonic() - begun) if ok else None,
        log_excerpt=() if ok else _logs(service)[-15:],
    )

"""Run a plan's containers through the Docker SDK: converge, start in order, inspect, stop.

Laid out as docker/compose v1 lays out its own: `observed` (the engine's containers, by
label), `convergence` (what to do per service; pure), `preflight` (ports, images, GPU memory
before anything changes), `start` (ordered start and readiness), `status`, `logs`, `down`,
`engine_errors` (docker.errors -> DeployError, in one place) and `operations` (`up` and
`restart` on a deployment directory, for the CLI).

Every container is created from its `ContainerSpec` (deployer/spec.py), the same description
the compose file is rendered from, and stamped with a hash of it in the compose config-hash
label. Functions take a `docker.DockerClient`; only the CLI builds one. Nothing here prints:
progress goes to a callback, results come back as dataclasses.
"""

from deployer.runtime.containers import STOP_TIMEOUT_S, create_kwargs, ensure_network
from deployer.runtime.convergence import Action, converge_actions
from deployer.runtime.down import DownResult, down
from deployer.runtime.engine_errors import docker_errors
from deployer.runtime.logs import logs
from deployer.runtime.observed import Observed, observe
from deployer.runtime.operations import (
    RestartRequest,
    UpRequest,
    UpResult,
    restart_deployment,
    runtime_env,
    up,
    up_dry_run,
)
from deployer.runtime.preflight import (
    MemoryProbe,
    memory_shortfall,
    nvml_probe,
    plan_actions,
    port_conflicts,
    preflight,
)
from deployer.runtime.progress import Progress, ProgressBoard, ProgressCallback
from deployer.runtime.readiness import readiness
from deployer.runtime.results import ApplyResult, ServiceOutcome, failure_error
from deployer.runtime.start import (
    StartOptions,
    Terminated,
    apply,
    apply_with,
    restart,
    restart_with,
)
from deployer.runtime.startup_record import COMPARISON_KEY, record_startup, startup_comparisons
from deployer.runtime.states import ActionKind, ContainerState, Stage
from deployer.runtime.status import (
    ServiceStatus,
    parse_docker_time,
    service_statuses,
    status_rows,
    status_summary,
)

__all__ = [
    "COMPARISON_KEY",
    "STOP_TIMEOUT_S",
    "Action",
    "ActionKind",
    "ApplyResult",
    "ContainerState",
    "DownResult",
    "MemoryProbe",
    "Observed",
    "Progress",
    "ProgressBoard",
    "ProgressCallback",
    "RestartRequest",
    "ServiceOutcome",
    "ServiceStatus",
    "Stage",
    "StartOptions",
    "Terminated",
    "UpRequest",
    "UpResult",
    "apply",
    "apply_with",
    "converge_actions",
    "create_kwargs",
    "docker_errors",
    "down",
    "ensure_network",
    "failure_error",
    "logs",
    "memory_shortfall",
    "nvml_probe",
    "observe",
    "parse_docker_time",
    "plan_actions",
    "port_conflicts",
    "preflight",
    "readiness",
    "record_startup",
    "restart",
    "restart_deployment",
    "restart_with",
    "runtime_env",
    "service_statuses",
    "startup_comparisons",
    "status_rows",
    "status_summary",
    "up",
    "up_dry_run",
]

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

The names below load their module on first use (PEP 562), so that importing one submodule (as
`status` imports engine_api and observed) does not import the Docker SDK through the others.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployer.runtime.containers import STOP_TIMEOUT_S, create_kwargs, ensure_network
    from deployer.runtime.convergence import Action, converge_actions
    from deployer.runtime.down import DownResult, down
    from deployer.runtime.engine_errors import docker_errors
    from deployer.runtime.environment import runtime_env
    from deployer.runtime.logs import logs
    from deployer.runtime.observed import Observed, observe
    from deployer.runtime.operations import (
        RestartRequest,
        UpRequest,
        UpResult,
        restart_deployment,
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

# Each public name and the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "STOP_TIMEOUT_S": "containers",
    "create_kwargs": "containers",
    "ensure_network": "containers",
    "Action": "convergence",
    "converge_actions": "convergence",
    "DownResult": "down",
    "down": "down",
    "docker_errors": "engine_errors",
    "runtime_env": "environment",
    "logs": "logs",
    "Observed": "observed",
    "observe": "observed",
    "RestartRequest": "operations",
    "UpRequest": "operations",
    "UpResult": "operations",
    "restart_deployment": "operations",
    "up": "operations",
    "up_dry_run": "operations",
    "MemoryProbe": "preflight",
    "memory_shortfall": "preflight",
    "nvml_probe": "preflight",
    "plan_actions": "preflight",
    "port_conflicts": "preflight",
    "preflight": "preflight",
    "Progress": "progress",
    "ProgressBoard": "progress",
    "ProgressCallback": "progress",
    "readiness": "readiness",
    "ApplyResult": "results",
    "ServiceOutcome": "results",
    "failure_error": "results",
    "StartOptions": "start",
    "Terminated": "start",
    "apply": "start",
    "apply_with": "start",
    "restart": "start",
    "restart_with": "start",
    "COMPARISON_KEY": "startup_record",
    "record_startup": "startup_record",
    "startup_comparisons": "startup_record",
    "ActionKind": "states",
    "ContainerState": "states",
    "Stage": "states",
    "ServiceStatus": "status",
    "parse_docker_time": "status",
    "service_statuses": "status",
    "status_rows": "status",
    "status_summary": "status",
}
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """Once a submodule is loaded, the import system sets it as its package's attribute. Four
    share their name with the function they export (down, logs, preflight, readiness): the
    package keeps the function there, as it did when it imported them all."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

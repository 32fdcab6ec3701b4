"""`status`: one row per planned service and per container of the deployment, from the
engine's labels, and a one-line summary."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from deployer.gateway.spec import GATEWAY_MODEL, GATEWAY_SERVICE
from deployer.runtime.observed import Observed, foreign, observe
from deployer.runtime.states import ContainerState
from deployer.spec import LABEL_GPUS, LABEL_MODEL, LABEL_PORT

if TYPE_CHECKING:
    from deployer.plan import DeploymentPlan, ServicePlan
    from deployer.runtime.observed import EngineClient
    from deployer.spec import ContainerSpec

MISSING = "missing"  # a planned service without a container


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    model: str
    gpus: str
    port: int | None
    state: str  # the engine's container state (a ContainerState), or "missing"
    health: str  # healthy | unhealthy | starting | none | -
    uptime_s: float | None
    restart_count: int
    exit_code: int | None
    container: str | None
    in_plan: bool
    up_to_date: bool | None  # config hash equals the plan's; None when unknown
    verify: Mapping[str, Any] | None  # the last verification, as `verify` recorded it
    foreign: bool = False  # another compose project's container with the same name; left alone

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
    client: EngineClient,
    deployment: str,
    plan: DeploymentPlan | None = None,
    *,
    specs: Sequence[ContainerSpec] = (),
    env: Mapping[str, str] | None = None,
    verify: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> list[ServiceStatus]:
    """One row per planned service (containers from the engine's labels; "missing" when there
    is none), per container of the deployment no longer in the plan, and per foreign container
    of a compose project with the same name."""
    now = now or datetime.now(timezone.utc)
    rows = status_rows(observe(client, deployment), plan, specs, env, verify or {}, now)
    return rows + foreign_rows(foreign(client, deployment), now)


def foreign_rows(observed: Sequence[Observed], now: datetime) -> list[ServiceStatus]:
    """Rows for containers qwen-deploy did not create; pure."""
    rows = [
        replace(
            _status_row(o.service or o.name, o, None, None, {}, now, in_plan=False), foreign=True
        )
        for o in observed
    ]
    return sorted(rows, key=lambda r: r.service)


def status_rows(
    observed: Sequence[Observed],
    plan: DeploymentPlan | None,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str] | None,
    verify: Mapping[str, Any],
    now: datetime,
) -> list[ServiceStatus]:
    """`service_statuses` from containers already observed; pure."""
    by_service = {o.service: o for o in observed}
    hashes = {s.service: s.config_hash(dict(env)) for s in specs} if env is not None else {}
    rows = []
    planned = list(plan.services) if plan else []
    for service in planned:
        found = by_service.pop(service.name, None)
        rows.append(
            _status_row(
                service.name, found, service, hashes.get(service.name), verify, now, in_plan=True
            )
        )
    if plan is not None and plan.gateway is not None:  # a service too, with no GPU of its own
        name = GATEWAY_SERVICE
        found = by_service.pop(name, None)
        row = _status_row(name, found, None, hashes.get(name), verify, now, in_plan=True)
        # What the plan says, also when its container is missing: no GPU, its own port.
        rows.append(replace(row, model=GATEWAY_MODEL, gpus="", port=plan.gateway.port))
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
            name, model, gpus, port, MISSING, "-", None, 0, None, None, in_plan, None, last_verify
        )
    started = parse_docker_time(found.started_at)
    running = found.state == ContainerState.RUNNING
    uptime = (now - started).total_seconds() if started and running else None
    stopped = found.state in (ContainerState.EXITED, ContainerState.DEAD)
    return ServiceStatus(
        service=name,
        model=model,
        gpus=gpus,
        port=port,
        state=found.state,
        health=found.health or "none",
        uptime_s=uptime,
        restart_count=found.restart_count,
        exit_code=found.exit_code if stopped else None,
        container=found.name,
        in_plan=in_plan,
        up_to_date=None if wanted_hash is None else found.config_hash == wanted_hash,
        verify=last_verify,
    )


def status_summary(deployment: str, rows: Sequence[ServiceStatus]) -> str:
    """One line: how many services, how many running and healthy, what is wrong."""
    planned = [r for r in rows if r.in_plan]
    running = [r for r in planned if r.state == ContainerState.RUNNING]
    healthy = [r for r in running if r.health == "healthy"]
    parts = [f"{len(running)}/{len(planned)} running", f"{len(healthy)} healthy"]
    others: dict[str, int] = {}
    for row in planned:
        if row.state != ContainerState.RUNNING:
            others[row.state] = others.get(row.state, 0) + 1
    parts += [f"{n} {state}" for state, n in sorted(others.items())]
    stale = [r.service for r in planned if r.up_to_date is False]
    if stale:
        parts.append(f"changed since started: {', '.join(stale)} (run `qwen-deploy up`)")
    orphans = [r.service for r in rows if not r.in_plan and not r.foreign]
    if orphans:
        parts.append(f"not in the plan: {', '.join(orphans)}")
    strangers = [r.service for r in rows if r.foreign]
    if strangers:
        parts.append(f"foreign: {', '.join(strangers)} (another compose project's, left alone)")
    return f"{deployment}: " + ", ".join(parts)

"""The runtime's command surface (`up`, `up_dry_run`, `down`, `service_statuses`, `logs`,
`restart_deployment`) for a Swarm deployment, with the same signatures as `deployer.runtime`,
so the CLI commands run unchanged on either target. Everything else (request and result
types, summaries) is deployer.runtime's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import docker

from deployer import runtime
from deployer.errors import TargetUnsupported
from deployer.plan import DeploymentPlan
from deployer.runtime.convergence import Action
from deployer.runtime.down import DownResult
from deployer.runtime.operations import RestartRequest, UpRequest, UpResult
from deployer.runtime.progress import ProgressCallback
from deployer.runtime.results import ApplyResult
from deployer.runtime.status import ServiceStatus
from deployer.spec import ContainerSpec
from deployer.targets import swarm, swarm_ops
from deployer.targets.swarm_spec import swarm_services


class SwarmRuntime:
    """deployer.runtime, acting on the deployment's Swarm services."""

    def __init__(self, skip_gpu_check: bool = False) -> None:
        self.skip_gpu_check = skip_gpu_check

    def __getattr__(self, name: str) -> Any:
        return getattr(runtime, name)

    def up(
        self,
        client: docker.DockerClient,
        request: UpRequest,
        progress: ProgressCallback | None = None,
        on_checked: Callable[[Sequence[Action]], None] | None = None,
    ) -> UpResult:
        return swarm.up(client, request, self.skip_gpu_check, progress, on_checked)

    def up_dry_run(self, client: docker.DockerClient, request: UpRequest) -> tuple[Action, ...]:
        return swarm.up_dry_run(client, request, self.skip_gpu_check)

    def down(
        self, client: docker.DockerClient, deployment: str, plan: DeploymentPlan | None = None
    ) -> DownResult:
        return swarm_ops.swarm_down(client, deployment, plan)

    def service_statuses(
        self,
        client: docker.DockerClient,
        deployment: str,
        plan: DeploymentPlan | None = None,
        *,
        specs: Sequence[ContainerSpec] = (),
        env: Mapping[str, str] | None = None,
        verify: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> list[ServiceStatus]:
        hashes = None
        if plan is not None and env is not None:
            node = f"node.id=={(client.info().get('Swarm') or {}).get('NodeID')}"
            try:
                hashes = {s.tier: s.config_hash() for s in swarm_services(plan, env, node)}
            except (TargetUnsupported, ValueError):  # refused, or keys missing from .env:
                hashes = None  # nothing of it can be up to date
        return swarm_ops.swarm_statuses(client, deployment, plan, hashes, verify, now)

    def logs(
        self,
        client: docker.DockerClient,
        deployment: str,
        services: Sequence[str] = (),
        *,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | int | None = None,
    ) -> Iterator[str]:
        return swarm_ops.swarm_logs(
            client, deployment, services, follow=follow, tail=tail, since=since
        )

    def restart_deployment(
        self,
        client: docker.DockerClient,
        request: RestartRequest,
        progress: ProgressCallback | None = None,
    ) -> ApplyResult:
        with request.directory.lock(request.wait_s):
            keys = runtime.runtime_env(request.directory.read_env())
            return swarm_ops.swarm_restart(
                client,
                request.plan,
                keys,
                request.services,
                timeout_s=request.timeout_s,
                session=request.session,
                progress=progress,
                poll_s=request.poll_s,
            )

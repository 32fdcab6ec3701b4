"""What `up` checks before it changes anything: host ports free, images present (pulled if
need be), and, before each start, enough free GPU memory."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import docker
import docker.errors

from deployer.errors import DeployFailed, NameTaken
from deployer.gpus import GIB, GpuInventory
from deployer.plan import DeploymentPlan, ServicePlan
from deployer.planner import requested_bytes, start_room_bytes
from deployer.runtime.convergence import Action, converge_actions
from deployer.runtime.engine_errors import docker_errors, explanation
from deployer.runtime.observed import foreign, is_owned, local_image_ids, observe
from deployer.runtime.progress import Progress, ProgressCallback
from deployer.runtime.states import ActionKind, Stage
from deployer.spec import LABEL_PROJECT, ContainerSpec

MemoryProbe = Callable[[], GpuInventory | None]

_STARTING = (ActionKind.CREATE, ActionKind.RECREATE, ActionKind.START, ActionKind.RESTART)
_CREATING = (ActionKind.CREATE, ActionKind.RECREATE)


# --- GPU memory before each start -------------------------------------------------------------


def nvml_probe() -> GpuInventory | None:
    """The GPUs as NVML sees them now, or None where NVML is not available."""
    from deployer.errors import InventoryError

    try:
        from deployer.nvml import read_inventory

        return read_inventory()
    except (InventoryError, ImportError, OSError):
        return None


def probe_for(plan: DeploymentPlan, probe: MemoryProbe | None) -> MemoryProbe | None:
    """NVML before each start unless a probe is given, never with the stand-in engine's
    make-believe GPUs."""
    if probe is not None:
        return probe
    return None if plan.engine == "stand-in" else nvml_probe


def memory_shortfall(service: ServicePlan, inventory: GpuInventory) -> str | None:
    """Why `service` cannot start on the GPUs as they are now, with numbers; None if it can.
    The planner's rule: its request must fit the room free memory leaves once its process's
    CUDA context (and NCCL with TP > 1) is set aside."""
    problems = []
    for index in service.gpus:
        gpu = next((g for g in inventory.gpus if g.index == index), None)
        if gpu is None:
            problems.append(f"GPU {index} is not there (NVML sees {inventory.indices_text()})")
            continue
        asked = requested_bytes(gpu, service.gpu_memory_utilization)
        room = start_room_bytes(gpu, service)  # fixed fractions: vLLM's own rule only
        if asked <= room:
            continue
        context = max(0, gpu.free_bytes - room)
        users = ", ".join(
            f"{p.name}[{p.pid}] {p.used_memory_mib / 1024:.1f} GiB" for p in gpu.processes
        )
        problems.append(
            f"GPU {index} has {gpu.free_bytes / GIB:.1f} GiB free of {gpu.total_bytes / GIB:.1f} "
            f"GiB; {service.name} asks {asked / GIB:.1f} GiB (gpu_memory_utilization "
            f"{service.gpu_memory_utilization:g}) + {context / GIB:.1f} GiB CUDA "
            "context" + (f"; in use by {users}" if users else "")
        )
    return "; ".join(problems) or None


def check_memory(service: ServicePlan, probe: MemoryProbe | None) -> None:
    """Raise DeployFailed when the GPUs lack the room `service` asks for right now."""
    inventory = probe() if probe is not None else None
    if inventory is None:
        return
    problem = memory_shortfall(service, inventory)
    if problem:
        raise DeployFailed(
            f"not enough free GPU memory to start: {problem}",
            hint="stop what uses the GPU, or plan again with the memory that is free now",
        )


# --- host ports -------------------------------------------------------------------------------


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
    starting = {a.service for a in actions if a.kind in _STARTING}
    theirs: dict[int, str] = {}
    ours: set[int] = set()
    for summary in client.api.containers():  # running containers, with their published ports
        labels = summary.get("Labels") or {}
        name = str((summary.get("Names") or ["?"])[0]).lstrip("/")
        for port in summary.get("Ports") or []:
            public = port.get("PublicPort")
            if not public or port.get("Type", "tcp") != "tcp":
                continue
            if labels.get(LABEL_PROJECT) == plan.deployment and is_owned(labels):
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


# --- images -----------------------------------------------------------------------------------


def ensure_images(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    images: Iterable[str],
    report: Callable[[str], None],
) -> None:
    """Pull the images that are not here (the stand-in's is built, never pulled)."""
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
                f"cannot pull {image}: {explanation(exc)}",
                hint="check the network and registry access, or `docker pull` it yourself",
            ) from None


def pull_missing(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    actions: Sequence[Action],
    progress: ProgressCallback | None,
    t0: float,
) -> None:
    """The images of the containers about to be created, pulled if need be, reported as the
    PULLING stage of each service that needs one."""
    by_name: Mapping[str, ContainerSpec] = {s.service: s for s in specs}
    creating = [a.service for a in actions if a.kind in _CREATING]

    def pulling(image: str) -> None:
        for service in creating:
            if by_name[service].image == image and progress is not None:
                progress(Progress(service, Stage.PULLING, time.monotonic() - t0, image))

    ensure_images(client, plan, [by_name[s].image for s in creating], pulling)


def check_name(client: docker.DockerClient, deployment: str, share_name: bool = False) -> None:
    """Refuse a deployment name that another compose project's containers carry (NameTaken),
    unless `share_name`: `up` would join their project, and `docker compose` commands of
    either would then act on the other's containers."""
    theirs = foreign(client, deployment)
    if theirs and not share_name:
        names = ", ".join(sorted(o.name for o in theirs)[:5])
        more = f" and {len(theirs) - 5} more" if len(theirs) > 5 else ""
        raise NameTaken(
            f"deployment name {deployment!r} is taken by another compose project: "
            f"container {names}{more} carries {LABEL_PROJECT}={deployment} without "
            "qwen-deploy's labels",
            hint="choose another --deployment name, or pass --share-name to deploy beside "
            "them and leave them alone; nothing was changed",
        )


def preflight(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    progress: ProgressCallback | None = None,
    *,
    share_name: bool = False,
) -> tuple[Action, ...]:
    """What `up` checks before it changes anything (files, networks, containers): the name is
    not another compose project's, every host port it will publish is free and every image it
    will create containers from is here (pulled if need be). Raises NameTaken or DeployFailed
    naming the container, port or image; returns the actions."""
    t0 = time.monotonic()
    with docker_errors(f"deployment {plan.deployment!r}"):
        check_name(client, plan.deployment, share_name)
        actions = converge_actions(
            plan, specs, env, observe(client, plan.deployment), local_image_ids(client, specs)
        )
        problems = port_conflicts(client, plan, specs, actions)
        if problems:
            raise DeployFailed(
                "; ".join(problems),
                hint="stop what holds it, or change `port:` in the profile; nothing was changed",
            )
        pull_missing(client, plan, specs, actions, progress, t0)
    return actions


def plan_actions(
    client: docker.DockerClient,
    plan: DeploymentPlan,
    specs: Sequence[ContainerSpec],
    env: Mapping[str, str],
    *,
    share_name: bool = False,
) -> tuple[Action, ...]:
    """What `up` would do now (for `up --dry-run`); changes nothing. Refuses a name another
    compose project uses, as `up` would."""
    check_name(client, plan.deployment, share_name)
    return converge_actions(
        plan, specs, env, observe(client, plan.deployment), local_image_ids(client, specs)
    )

"""What `up` does per service, decided from the plan and the engine's containers; pure
(docker/compose v1 `service.py::convergence_plan`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deployer.plan import DeploymentPlan
from deployer.runtime.observed import Observed
from deployer.runtime.states import ActionKind, ContainerState
from deployer.spec import (
    LABEL_ENGINE,
    LABEL_GPUS,
    LABEL_MAX_MODEL_LEN,
    LABEL_MODEL,
    LABEL_PORT,
    LABEL_UTILIZATION,
    ContainerSpec,
)


@dataclass(frozen=True)
class Action:
    service: str
    kind: ActionKind
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


def dependents(plan: DeploymentPlan, name: str) -> list[str]:
    """Services that start after `name`, directly or through others, in plan order."""
    after: set[str] = {name}
    for service in plan.services:  # start_after only names services earlier in the plan
        if set(service.start_after) & after:
            after.add(service.name)
    return [s.name for s in plan.services if s.name in after and s.name != name]


def _decide(
    spec: ContainerSpec, current: Observed, env: Mapping[str, str], image_id: str
) -> Action:
    """The action for a service that has a container; `image_id` is the local tag's."""
    name, service = current.name, spec.service
    if current.config_hash != spec.config_hash(dict(env)):
        return Action(service, ActionKind.RECREATE, _changes(current, spec), name)
    if image_id != current.image_id:
        return Action(service, ActionKind.RECREATE, f"image {spec.image} was updated", name)
    state = current.state
    if state in (ContainerState.DEAD, ContainerState.REMOVING):
        return Action(service, ActionKind.RECREATE, f"container {state}", name)
    if state == ContainerState.RUNNING:
        return Action(service, ActionKind.NOOP, "up to date", name)
    if state in (ContainerState.RESTARTING, ContainerState.PAUSED):
        reason = "crash-looping" if state == ContainerState.RESTARTING else "paused"
        return Action(service, ActionKind.RESTART, reason, name)
    # created, exited
    code = f" (exit code {current.exit_code})" if state == ContainerState.EXITED else ""
    return Action(service, ActionKind.START, f"{state}{code}", name)


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
            Action(o.service, ActionKind.REMOVE, "a second container of the service", o.name)
            for o in found
            if o is not current
        ]
        if current is None:
            actions[spec.service] = Action(spec.service, ActionKind.CREATE, "no container")
            memory_moved.append(spec.service)
            continue
        image_id = (image_ids or {}).get(spec.image, current.image_id)
        action = _decide(spec, current, env, image_id)
        actions[spec.service] = action
        hash_changed = current.config_hash != spec.config_hash(dict(env))
        if action.kind == ActionKind.RECREATE and (
            (hash_changed and _memory_changed(current, spec))
            or (not hash_changed and image_id != current.image_id)
        ):
            memory_moved.append(spec.service)
    for moved in memory_moved:
        for dependent in dependents(plan, moved):
            kept = actions.get(dependent)
            if kept is not None and kept.kind == ActionKind.NOOP:
                actions[dependent] = Action(
                    dependent,
                    ActionKind.RESTART,
                    f"starts after {moved} on a shared GPU, whose memory changed",
                    kept.container,
                )
    for service, leftovers in sorted(by_service.items()):
        extra += [
            Action(service, ActionKind.REMOVE, "not in the plan any more", o.name)
            for o in leftovers
        ]
    return (*(actions[s.service] for s in specs), *extra)

"""The words the runtime speaks: container states, convergence actions and start stages.

Each is a `str` enum so JSON, tables and comparisons with plain strings keep working."""

from __future__ import annotations

from enum import Enum


class TextEnum(str, Enum):
    """A str enum that prints, formats and hashes as its value (3.10's `str` mix-in does not)."""

    def __str__(self) -> str:
        return str.__str__(self)

    __format__ = str.__format__  # type: ignore[assignment]


class ContainerState(TextEnum):
    """A container's `State.Status` as the engine reports it."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: object) -> ContainerState:
        try:
            return cls(str(text))
        except ValueError:
            return cls.UNKNOWN


class ActionKind(TextEnum):
    """What `up` does to one service (docker/compose v1 `convergence_plan`)."""

    CREATE = "create"
    RECREATE = "recreate"
    START = "start"
    RESTART = "restart"
    NOOP = "noop"
    REMOVE = "remove"


class Stage(TextEnum):
    """Where a service is while `up` or `restart` works on it."""

    WAITING = "waiting"  # for the service that starts before it on a shared GPU
    PULLING = "pulling image"
    STOPPING = "stopping"
    CREATING = "creating"
    STARTING = "starting"
    LOADING = "loading model"
    HEALTHY = "healthy"
    FAILED = "failed"
    NOT_STARTED = "not started"  # the service it starts after did not become ready
    INTERRUPTED = "interrupted"

"""Progress reports of `up` and `restart`: one event per stage change (and heartbeats), and a
board that keeps the latest per service for renderers and for saying what an interrupt left."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from deployer.runtime.states import Stage


@dataclass(frozen=True)
class Progress:
    """One report from `apply`/`restart`: where a service is and for how long."""

    service: str
    stage: Stage
    elapsed_s: float  # since work on this service began (waiting for others excluded)
    detail: str = ""


ProgressCallback = Callable[[Progress], None]

# Stages by which the service's container was started (or kept running).
_STARTED = (Stage.STARTING, Stage.LOADING, Stage.HEALTHY)


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
        return [name for name, event in self.stages.items() if event.stage in _STARTED]

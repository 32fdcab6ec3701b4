"""What `up` and `restart` return: one outcome per service, and the error they raise."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from deployer import diagnose
from deployer.errors import DeployFailed
from deployer.runtime.convergence import Action
from deployer.runtime.states import ActionKind, Stage
from deployer.startup_check import StartupFigures


@dataclass(frozen=True)
class ServiceOutcome:
    service: str
    action: ActionKind
    ok: bool
    stage: Stage  # the last one reached
    message: str = ""
    started_s: float | None = None  # since apply began: when work on it began
    ready_s: float | None = None  # since apply began: when it answered /v1/models
    log_excerpt: tuple[str, ...] = ()
    findings: tuple[diagnose.Finding, ...] = ()
    # What vLLM printed at start-up (model loading, KV cache memory and size); None when the
    # service was not started by this run (kept running) or did not become ready.
    startup: StartupFigures | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["log_excerpt"] = list(self.log_excerpt)
        data["findings"] = [asdict(f) for f in self.findings]
        data["startup"] = None if self.startup is None else self.startup.to_dict()
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

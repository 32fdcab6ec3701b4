"""What `verify` returns: one result per check, per service and for the deployment, as data
that the CLI renders as a table or JSON; and the state `status` shows from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployer.deployment import DeploymentDir
from deployer.errors import VerifyFailed

VERIFY_SCHEMA_VERSION = 1
CHECKS = ("health", "models", "auth", "chat", "stream", "thinking")

Metrics = dict[str, Any]


@dataclass(frozen=True)
class CheckResult:
    service: str
    check: str
    ok: bool
    detail: str
    elapsed_ms: float
    metrics: Metrics = field(default_factory=dict)
    skipped: bool = False  # not run (an earlier check made it pointless, or not applicable)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "ok": self.ok,
            "skipped": self.skipped,
            "detail": self.detail,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "metrics": self.metrics,
        }


@dataclass(frozen=True)
class ServiceVerification:
    service: str
    base_url: str
    served_model_name: str
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def check(self, name: str) -> CheckResult:
        for result in self.checks:
            if result.check == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "base_url": self.base_url,
            "model": self.served_model_name,
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class VerificationReport:
    deployment: str
    started_at: str  # ISO 8601, UTC
    deadline_s: float  # per service
    elapsed_ms: float
    services: tuple[ServiceVerification, ...]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.services)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for s in self.services for c in s.failures)

    def service(self, name: str) -> ServiceVerification:
        for result in self.services:
            if result.service == name:
                return result
        raise KeyError(name)

    def summary(self) -> str:
        """One line naming each failed check and why (skipped checks are left out)."""
        failed = [c for c in self.failures if not c.skipped] or list(self.failures)
        if not failed:
            checks = sum(len(s.checks) for s in self.services)
            return f"all {checks} checks passed on {len(self.services)} service(s)"
        return "; ".join(f"{c.service}/{c.check}: {c.detail}" for c in failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": VERIFY_SCHEMA_VERSION,
            "deployment": self.deployment,
            "ok": self.ok,
            "started_at": self.started_at,
            "deadline_s": self.deadline_s,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "services": [s.to_dict() for s in self.services],
        }


def failure_error(report: VerificationReport) -> VerifyFailed:
    """The error `verify` and `up` raise for a report with failed checks."""
    return VerifyFailed(
        f"verification failed: {report.summary()}",
        hint="fix the cause, then run `qwen-deploy verify` again",
    )


def record(directory: DeploymentDir, report: VerificationReport) -> None:
    """Merge each verified service's latest result into the deployment's state file."""
    state = directory.load_state()
    latest = state.get("verify")
    latest = dict(latest) if isinstance(latest, dict) else {}
    for result in report.services:
        latest[result.service] = {
            "at": report.started_at,
            "ok": result.ok,
            "base_url": result.base_url,
            "failed": [c.check for c in result.failures],
            "checks": {c.check: c.to_dict() for c in result.checks},
        }
    state["verify"] = latest
    directory.save_state(state)

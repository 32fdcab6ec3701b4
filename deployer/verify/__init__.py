"""Smoke requests against running services: the one part of `deployer` that speaks HTTP to
them. `report` (results as data), `client` (HTTP with retries), `checks` (the six checks) and
here the entry points.

Every function takes a base URL and a `requests.Session` (only the CLI builds one). Each check
becomes a `CheckResult`; nothing here raises for a failing deployment.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone

import requests

from deployer.gateway.spec import GATEWAY_SERVICE
from deployer.plan import DeploymentPlan, ServicePlan
from deployer.verify.checks import (
    CHAT_MAX_TOKENS,
    CHECK_FUNCTIONS,
    THINKING_MAX_TOKENS,
    WRONG_KEY,
    CheckFn,
    chat_body,
    sse_events,
)
from deployer.verify.client import (
    DEFAULT_RETRY,
    TRANSIENT_STATUS,
    CheckFailed,
    Client,
    RetryPolicy,
    error_text,
)
from deployer.verify.report import (
    CHECKS,
    VERIFY_SCHEMA_VERSION,
    CheckResult,
    Metrics,
    ServiceVerification,
    VerificationReport,
    failure_error,
    record,
)

DEFAULT_DEADLINE_S = 120.0

__all__ = [
    "CHAT_MAX_TOKENS",
    "CHECKS",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_RETRY",
    "THINKING_MAX_TOKENS",
    "TRANSIENT_STATUS",
    "VERIFY_SCHEMA_VERSION",
    "WRONG_KEY",
    "CheckResult",
    "Metrics",
    "RetryPolicy",
    "ServiceVerification",
    "VerificationReport",
    "chat_body",
    "error_text",
    "failure_error",
    "record",
    "sse_events",
    "verify_plan",
    "verify_service",
]


def _run(client: Client, service: ServicePlan, check: str, fn: CheckFn) -> CheckResult:
    start = time.perf_counter()
    try:
        detail, metrics = fn(client, service)
        ok = True
    except CheckFailed as failed:
        detail, metrics, ok = failed.detail, failed.metrics, False
    elapsed_ms = (time.perf_counter() - start) * 1000
    return CheckResult(service.name, check, ok, detail, elapsed_ms, metrics)


def _not_run(service: ServicePlan, check: str, detail: str, ok: bool = False) -> CheckResult:
    return CheckResult(service.name, check, ok, detail, 0.0, skipped=True)


def verify_service(
    session: requests.Session,
    base_url: str,
    service: ServicePlan,
    api_key: str,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    retry: RetryPolicy = DEFAULT_RETRY,
    container_state: str | None = None,
) -> ServiceVerification:
    """Run every check against one service; later checks are skipped when /health fails.
    `container_state` (the engine's, when the caller knows it) turns answers from a port whose
    container is not running into "another process answers" instead of advice about the
    container."""
    base_url = base_url.rstrip("/")
    client = Client(session, base_url, api_key, retry.clock() + deadline_s, deadline_s, retry)
    client.container_state = container_state
    results: list[CheckResult] = []
    for check, fn in CHECK_FUNCTIONS:
        if results and not results[0].ok:
            results.append(_not_run(service, check, "not run: /health did not answer 200"))
        elif check not in ("health", "auth") and not api_key and service.auth != "none":
            results.append(
                _not_run(
                    service,
                    check,
                    f"not run: no API key for {service.name} in the deployment's .env "
                    f"({service.api_key_env})",
                )
            )
        elif check == "thinking" and not service.reasoning_parser:
            results.append(
                _not_run(
                    service,
                    check,
                    "not applicable: no reasoning parser planned (non-thinking model)",
                    ok=True,
                )
            )
        else:
            results.append(_run(client, service, check, fn))
    return ServiceVerification(service.name, base_url, service.served_model_name, tuple(results))


def verify_plan(
    session: requests.Session,
    plan: DeploymentPlan,
    keys: Mapping[str, str],
    services: list[str] | None = None,
    host: str | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    retry: RetryPolicy = DEFAULT_RETRY,
    container_states: Mapping[str, str] | None = None,
) -> VerificationReport:
    """Verify the named services (aliases allowed; all when None), one after another, each
    within its own deadline (so one service that never loads does not starve the others, and
    timings are not skewed by concurrent checks). keys is the deployment's .env mapping;
    container_states (service -> the engine's state), when known, sharpens the advice."""
    gateway = plan.gateway
    asked = [n for n in services or () if not (gateway and n == GATEWAY_SERVICE)]
    chosen = [plan.service(n) for n in asked] if services else list(plan.services)
    chosen = list({s.name: s for s in chosen}.values())
    # The gateway after its tiers (its checks go through them), when all or it is asked for.
    with_gateway = gateway is not None and (not services or len(asked) < len(services))
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = retry.clock()
    results = [
        verify_service(
            session,
            service.base_url(host),
            service,
            keys.get(service.api_key_env, ""),
            deadline_s=deadline_s,
            retry=retry,
            container_state=(container_states or {}).get(service.name),
        )
        for service in chosen
    ]
    if with_gateway and gateway is not None:
        from deployer.gateway.check import verify_gateway

        results.append(verify_gateway(session, plan, gateway, keys, host, deadline_s))
    return VerificationReport(
        deployment=plan.deployment,
        started_at=started_at,
        deadline_s=deadline_s,
        elapsed_ms=(retry.clock() - start) * 1000,
        services=tuple(results),
    )

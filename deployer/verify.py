"""Smoke requests against running services: the one module of `deployer` that speaks HTTP.

Every function takes a base URL and a `requests.Session` (only the CLI builds one). Transient
failures (connection refused while the engine loads, 502/503/504) are retried with exponential
backoff and jitter until the service's deadline; any other answer is final. Each check becomes a
`CheckResult`; nothing here raises for a failing deployment.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import requests

from deployer import openai_wire as wire
from deployer.deployment import DeploymentDir
from deployer.errors import VerifyFailed
from deployer.plan import DeploymentPlan, ServicePlan

VERIFY_SCHEMA_VERSION = 1
CHECKS = ("health", "models", "auth", "chat", "stream", "thinking")
DEFAULT_DEADLINE_S = 120.0
TRANSIENT_STATUS = frozenset({502, 503, 504})
CHAT_MAX_TOKENS = 32
# Generous on purpose: a Qwen3 thinking block for a one-line sum is ~50-300 tokens, and a
# budget that runs out inside it is exactly the failure this check reports.
THINKING_MAX_TOKENS = 1024
WRONG_KEY = "qwen-deploy-verify-wrong-key"
CHAT_PROMPT = "Reply with the single word: ready."
THINKING_PROMPT = "What is 2 + 3? Answer with the number only."

Metrics = dict[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; the clock, sleep and RNG are injectable for tests."""

    initial_delay_s: float = 0.25
    max_delay_s: float = 4.0
    multiplier: float = 2.0
    jitter: float = 0.5  # each delay is shortened by up to this fraction, at random
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        """Pause after the attempt-th failure (1-based)."""
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * self.rng())


DEFAULT_RETRY = RetryPolicy()


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


# --- HTTP with retries ----------------------------------------------------------------------


class _CheckFailed(Exception):
    def __init__(self, detail: str, metrics: Metrics | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.metrics = metrics or {}


@dataclass
class _Client:
    session: requests.Session
    base_url: str
    api_key: str
    deadline: float  # on retry.clock
    deadline_s: float
    retry: RetryPolicy
    attempts: int = 0  # of the latest send()
    reached: bool = False  # the server has answered at least once
    container_state: str | None = None  # the engine's word for the service's container

    def remaining(self) -> float:
        return self.deadline - self.retry.clock()

    def headers(self, key: str | None) -> dict[str, str]:
        return wire.auth_headers(key)

    def send(
        self,
        method: str,
        path: str,
        *,
        key: str | None,
        body: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One request, retried while it fails transiently and the deadline allows."""
        start = self.retry.clock()
        last = ""
        attempt = 0
        while True:
            remaining = self.remaining()
            if remaining < 0.05:
                if not attempt:
                    raise _CheckFailed(f"not run: the {self.deadline_s:g} s deadline had passed")
                waited = self.retry.clock() - start
                if last.startswith("HTTP"):
                    why = "still loading, or the engine died?"
                elif self.reached:
                    why = "it answered before: crashed or restarting?"
                else:
                    why = "still loading, or exited?"
                raise _CheckFailed(
                    f"{last} for {waited:.1f} s ({attempt} attempts); gave up at the "
                    f"{self.deadline_s:g} s deadline ({why} see `qwen-deploy status` and "
                    "`qwen-deploy logs`)",
                    {"attempts": attempt},
                )
            attempt += 1
            self.attempts = attempt
            timeout = (
                min(self.retry.connect_timeout_s, remaining),
                min(self.retry.read_timeout_s, remaining),
            )
            try:
                response = self.session.request(
                    method,
                    self.base_url + path,
                    headers=self.headers(key),
                    json=body,
                    timeout=timeout,
                    stream=stream,
                )
            except requests.ReadTimeout:
                cut = (
                    f" (cut short by the {self.deadline_s:g} s deadline)"
                    if timeout[1] < self.retry.read_timeout_s
                    else ""
                )
                raise _CheckFailed(
                    f"no answer within {timeout[1]:.1f} s{cut}", {"attempts": attempt}
                ) from None
            except requests.ConnectionError as exc:  # refused, reset, connect timeout
                last = _connection_problem(exc)
            except requests.RequestException as exc:
                raise _CheckFailed(f"request failed: {exc}", {"attempts": attempt}) from None
            else:
                if response.status_code not in TRANSIENT_STATUS:
                    self.reached = True
                    return response
                last = f"HTTP {response.status_code}"
                response.close()
            pause = min(self.retry.delay(attempt), max(0.0, self.remaining()))
            if pause > 0:
                self.retry.sleep(pause)


def _connection_problem(exc: requests.ConnectionError) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if "reset" in text.lower() or "aborted" in text.lower():
        return "connection reset"
    return "connection failed"


def error_text(response: requests.Response) -> str:
    """What an error answer says, on one bounded line (an HTML page by its title)."""
    return wire.error_text(
        response.content,
        content_type=response.headers.get("Content-Type", ""),
        reason=response.reason or "",
    )


def _impostor(client: _Client, service: ServicePlan) -> str | None:
    """What to say when the service's own container is not running, yet something answers on
    its port: that something is another process, whatever it answers (D24)."""
    state = client.container_state
    if state is None or state == "running":
        return None
    return (
        f"the container of {service.name} is {state}, so another process answers on port "
        f"{service.port}"
    )


def _http_failure(
    response: requests.Response, what: str, client: _Client | None = None, service: Any = None
) -> _CheckFailed:
    status = response.status_code
    text = error_text(response)
    other = _impostor(client, service) if client is not None and service is not None else None
    if other:
        return _CheckFailed(f"{what}: HTTP {status}" + (f": {text}" if text else "") + f"; {other}")
    if status == 401:
        return _CheckFailed(
            f"{what}: 401 {text or 'Unauthorized'}: the key in the deployment's .env was "
            "refused (was the container started with another key? `qwen-deploy up` recreates it)"
        )
    return _CheckFailed(f"{what}: HTTP {status}" + (f": {text}" if text else ""))


def _json(
    response: requests.Response, what: str, client: _Client | None = None, service: Any = None
) -> dict[str, Any]:
    if response.status_code != 200:
        raise _http_failure(response, what, client, service)
    try:
        data = response.json()
    except ValueError:
        raise _CheckFailed(f"{what}: answered 200 with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise _CheckFailed(f"{what}: answered 200 with JSON that is not an object")
    return data


# --- the checks -----------------------------------------------------------------------------


def _check_health(client: _Client, service: ServicePlan) -> tuple[str, Metrics]:
    response = client.send("GET", "/health", key=None)
    response.close()
    if response.status_code != 200:
        raise _CheckFailed(f"/health answered HTTP {response.status_code}")
    metrics: Metrics = {"attempts": client.attempts}
    detail = "200" if client.attempts == 1 else f"200 after {client.attempts} attempts"
    try:  # informational only: /version is open like /health
        version = client.session.get(
            client.base_url + "/version", timeout=client.retry.connect_timeout_s
        )
        if version.status_code == 200:
            metrics["version"] = str(version.json().get("version", ""))
            detail += f" (vLLM {metrics['version']})"
    except (requests.RequestException, ValueError, AttributeError):
        pass
    return detail, metrics


def _check_models(client: _Client, service: ServicePlan) -> tuple[str, Metrics]:
    data = _json(
        client.send("GET", "/v1/models", key=client.api_key), "/v1/models", client, service
    )
    entries = [e for e in data.get("data") or [] if isinstance(e, dict)]
    served = [str(e.get("id")) for e in entries]
    metrics: Metrics = {"models": served}
    entry = next((e for e in entries if e.get("id") == service.served_model_name), None)
    if entry is None:
        other = _impostor(client, service) or f"another container on port {service.port}?"
        raise _CheckFailed(
            f"serves {', '.join(served) or 'no model'}, not the planned "
            f"{service.served_model_name!r} ({other})",
            metrics,
        )
    length = entry.get("max_model_len")
    metrics["max_model_len"] = length
    if length is None:
        raise _CheckFailed(f"{service.served_model_name} listed without max_model_len", metrics)
    if length != service.max_model_len:
        raise _CheckFailed(
            f"{service.served_model_name} has max_model_len {length}, planned "
            f"{service.max_model_len} (the container runs an older config: `qwen-deploy up`)",
            metrics,
        )
    return f"{service.served_model_name}, max_model_len {length}", metrics


def _check_auth(client: _Client, service: ServicePlan) -> tuple[str, Metrics]:
    statuses: Metrics = {}
    if service.auth == "none":  # the profile and --allow-unauthenticated asked for an open port
        response = client.send("GET", "/v1/models", key=None)
        response.close()
        statuses["no_key"] = response.status_code
        if response.status_code != 200:
            raise _CheckFailed(
                f"auth: none is planned, but /v1/models without a key answered HTTP "
                f"{response.status_code} (the container runs an older config: `qwen-deploy up`)",
                statuses,
            )
        return "open without a key (auth: none): anyone who can reach the port can use it", statuses
    for label, key in (("no key", None), ("wrong key", WRONG_KEY)):
        response = client.send("GET", "/v1/models", key=key)
        response.close()
        statuses[label.replace(" ", "_")] = response.status_code
        if response.status_code == 200:
            other = _impostor(client, service)
            raise _CheckFailed(
                f"/v1/models answered 200 with {label}: "
                + (
                    other
                    or "the endpoint is open to anyone (the container must get "
                    "VLLM_API_KEY or --api-key)"
                ),
                statuses,
            )
        if response.status_code != 401:
            raise _CheckFailed(
                f"/v1/models with {label} answered HTTP {response.status_code}, expected 401",
                statuses,
            )
    return "401 without a key and with a wrong key", statuses


def chat_body(
    service: ServicePlan, prompt: str, *, thinking: bool, max_tokens: int, stream: bool = False
) -> dict[str, Any]:
    """A chat request for the service's model with its planned sampling defaults."""
    return wire.chat_body(
        service.served_model_name,
        prompt,
        max_tokens=max_tokens,
        sampling=service.generation.as_dict(),
        thinking=thinking,
        stream=stream,
    )


def _choice(data: dict[str, Any], what: str) -> tuple[dict[str, Any], str | None]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _CheckFailed(f"{what}: no choices in the answer")
    message = choices[0].get("message") or {}
    if not isinstance(message, dict):
        raise _CheckFailed(f"{what}: choices[0].message is not an object")
    return message, choices[0].get("finish_reason")


def _completion_tokens(data: dict[str, Any]) -> int | None:
    usage = data.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    return None


def _check_chat(client: _Client, service: ServicePlan) -> tuple[str, Metrics]:
    body = chat_body(service, CHAT_PROMPT, thinking=False, max_tokens=CHAT_MAX_TOKENS)
    start = time.perf_counter()
    response = client.send("POST", "/v1/chat/completions", key=client.api_key, body=body)
    data = _json(response, "chat completion", client, service)
    latency = time.perf_counter() - start
    message, finish = _choice(data, "chat completion")
    content = message.get("content") or ""
    tokens = _completion_tokens(data)
    metrics: Metrics = {
        "latency_ms": round(latency * 1000, 1),
        "completion_tokens": tokens,
        "tokens_per_second": round(tokens / latency, 1) if tokens and latency > 0 else None,
        "finish_reason": finish,
    }
    if not content.strip():
        raise _CheckFailed(
            f"empty content with thinking disabled (finish_reason {finish})", metrics
        )
    if "<think>" in content:
        raise _CheckFailed(
            "content holds a <think> block although enable_thinking was false", metrics
        )
    rate = f", {metrics['tokens_per_second']} tok/s" if metrics["tokens_per_second"] else ""
    return f"{len(content.strip())} chars in {latency * 1000:.0f} ms{rate}", metrics


def sse_events(response: requests.Response) -> Iterator[str]:
    """The data fields of an SSE stream (one event per `data:` line, as vLLM sends them)."""
    return wire.iter_sse_data(response.iter_lines())


def _check_stream(client: _Client, service: ServicePlan) -> tuple[str, Metrics]:
    body = chat_body(service, CHAT_PROMPT, thinking=False, max_tokens=CHAT_MAX_TOKENS, stream=True)
    start = time.perf_counter()
    response = client.send(
        "POST", "/v1/chat/completions", key=client.api_key, body=body, stream=True
    )
    with response:
        if response.status_code != 200:
            raise _http_failure(response, "streaming chat completion", client, service)
        kind = response.headers.get("Content-Type", "")
        if "text/event-stream" not in kind:
            raise _CheckFailed(f"answered {kind or 'no Content-Type'}, not text/event-stream")
        ttft: float | None = None
        tokens: int | None = None
        stream = wire.ChunkStream(response.iter_lines())
        try:
            for chunk in stream:
                problem = wire.chunk_error(chunk)
                if problem is not None:
                    raise _CheckFailed(f"error in the stream: {problem}")
                tokens = _completion_tokens(chunk) or tokens
                if ttft is None and wire.delta_text(chunk):
                    ttft = time.perf_counter() - start
        except wire.StreamError as exc:
            raise _CheckFailed(str(exc)) from None
        except (requests.RequestException, ConnectionError) as exc:
            raise _CheckFailed(
                f"stream broke after {stream.events} chunks: {type(exc).__name__}",
                {"chunks": stream.events},
            ) from None
        chunks, done = stream.events, stream.done
    elapsed = time.perf_counter() - start
    metrics: Metrics = {
        "chunks": chunks,
        "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
        "elapsed_ms": round(elapsed * 1000, 1),
        "completion_tokens": tokens,
    }
    if not done:
        raise _CheckFailed(f"stream ended after {chunks} chunks without data: [DONE]", metrics)
    if ttft is None:
        raise _CheckFailed(f"{chunks} chunks and [DONE] but no text in any delta", metrics)
    return f"{chunks} chunks, first token after {ttft * 1000:.0f} ms, [DONE]", metrics


def _check_thinking(client: _Client, service: ServicePlan) -> tuple[str, Metrics]:
    body = chat_body(service, THINKING_PROMPT, thinking=True, max_tokens=THINKING_MAX_TOKENS)
    start = time.perf_counter()
    response = client.send("POST", "/v1/chat/completions", key=client.api_key, body=body)
    data = _json(response, "chat completion with thinking", client, service)
    latency = time.perf_counter() - start
    message, finish = _choice(data, "chat completion with thinking")
    # vLLM 0.33 names the field `reasoning`; releases before it used `reasoning_content`.
    reasoning = (message.get("reasoning") or message.get("reasoning_content") or "").strip()
    content = (message.get("content") or "").strip()
    metrics: Metrics = {
        "latency_ms": round(latency * 1000, 1),
        "completion_tokens": _completion_tokens(data),
        "reasoning_chars": len(reasoning),
        "content_chars": len(content),
        "finish_reason": finish,
        "max_tokens": THINKING_MAX_TOKENS,
    }
    if finish == "length" and not content and reasoning:
        raise _CheckFailed(
            f"max_tokens ({THINKING_MAX_TOKENS}) ran out inside the thinking block: "
            f"{len(reasoning)} chars of reasoning and no answer (finish_reason length). Thinking "
            "tokens count against max_tokens: raise max_tokens (Qwen3 suggests up to 32768), or "
            'disable thinking with "chat_template_kwargs": {"enable_thinking": false}',
            metrics,
        )
    if "<think>" in content or "</think>" in content:
        raise _CheckFailed(
            "the reasoning is not separated: content holds the <think> block "
            f"(is --reasoning-parser {service.reasoning_parser} set on the container?)",
            metrics,
        )
    if not reasoning:
        raise _CheckFailed(
            f"no reasoning returned with enable_thinking true (finish_reason {finish})", metrics
        )
    if not content:
        raise _CheckFailed(f"reasoning but an empty answer (finish_reason {finish})", metrics)
    return (
        f"reasoning {len(reasoning)} chars, answer {len(content)} chars in {latency * 1000:.0f} ms",
        metrics,
    )


_CheckFn = Callable[[_Client, ServicePlan], tuple[str, Metrics]]
_CHECK_FUNCTIONS: tuple[tuple[str, _CheckFn], ...] = (
    ("health", _check_health),
    ("models", _check_models),
    ("auth", _check_auth),
    ("chat", _check_chat),
    ("stream", _check_stream),
    ("thinking", _check_thinking),
)


def _run(client: _Client, service: ServicePlan, check: str, fn: _CheckFn) -> CheckResult:
    start = time.perf_counter()
    try:
        detail, metrics = fn(client, service)
        ok = True
    except _CheckFailed as failed:
        detail, metrics, ok = failed.detail, failed.metrics, False
    elapsed_ms = (time.perf_counter() - start) * 1000
    return CheckResult(service.name, check, ok, detail, elapsed_ms, metrics)


def _not_run(service: ServicePlan, check: str, detail: str, ok: bool = False) -> CheckResult:
    return CheckResult(service.name, check, ok, detail, 0.0, skipped=True)


# --- entry points ---------------------------------------------------------------------------


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
    client = _Client(session, base_url, api_key, retry.clock() + deadline_s, deadline_s, retry)
    client.container_state = container_state
    results: list[CheckResult] = []
    for check, fn in _CHECK_FUNCTIONS:
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
    chosen = [plan.service(n) for n in services] if services else list(plan.services)
    chosen = list({s.name: s for s in chosen}.values())
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
    return VerificationReport(
        deployment=plan.deployment,
        started_at=started_at,
        deadline_s=deadline_s,
        elapsed_ms=(retry.clock() - start) * 1000,
        services=tuple(results),
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

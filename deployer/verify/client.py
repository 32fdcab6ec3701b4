"""HTTP with retries for the checks: transient failures (connection refused while the engine
loads, 502/503/504) are retried with exponential backoff and jitter until the service's
deadline; any other answer is final. Error answers become one bounded line."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from deployer import openai_wire as wire
from deployer.plan import ServicePlan
from deployer.verify.report import Metrics

TRANSIENT_STATUS = frozenset({502, 503, 504})


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


class CheckFailed(Exception):
    def __init__(self, detail: str, metrics: Metrics | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.metrics = metrics or {}


@dataclass
class Client:
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
                    raise CheckFailed(f"not run: the {self.deadline_s:g} s deadline had passed")
                waited = self.retry.clock() - start
                if last.startswith("HTTP"):
                    why = "still loading, or the engine died?"
                elif self.reached:
                    why = "it answered before: crashed or restarting?"
                else:
                    why = "still loading, or exited?"
                raise CheckFailed(
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
                raise CheckFailed(
                    f"no answer within {timeout[1]:.1f} s{cut}", {"attempts": attempt}
                ) from None
            except requests.ConnectionError as exc:  # refused, reset, connect timeout
                last = _connection_problem(exc)
            except requests.RequestException as exc:
                raise CheckFailed(f"request failed: {exc}", {"attempts": attempt}) from None
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


def impostor(client: Client, service: ServicePlan) -> str | None:
    """What to say when the service's own container is not running, yet something answers on
    its port: that something is another process, whatever it answers (D24)."""
    state = client.container_state
    if state is None or state == "running":
        return None
    return (
        f"the container of {service.name} is {state}, so another process answers on port "
        f"{service.port}"
    )


def http_failure(
    response: requests.Response, what: str, client: Client | None = None, service: Any = None
) -> CheckFailed:
    status = response.status_code
    text = error_text(response)
    other = impostor(client, service) if client is not None and service is not None else None
    if other:
        return CheckFailed(f"{what}: HTTP {status}" + (f": {text}" if text else "") + f"; {other}")
    if status == 401:
        return CheckFailed(
            f"{what}: 401 {text or 'Unauthorized'}: the key in the deployment's .env was "
            "refused (was the container started with another key? `qwen-deploy up` recreates it)"
        )
    return CheckFailed(f"{what}: HTTP {status}" + (f": {text}" if text else ""))


def json_object(
    response: requests.Response, what: str, client: Client | None = None, service: Any = None
) -> dict[str, Any]:
    if response.status_code != 200:
        raise http_failure(response, what, client, service)
    try:
        data = response.json()
    except ValueError:
        raise CheckFailed(f"{what}: answered 200 with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise CheckFailed(f"{what}: answered 200 with JSON that is not an object")
    return data

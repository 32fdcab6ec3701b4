"""The gateway's side of each tier: one pooled HTTP client, its readiness (with the tier's own
key, unlike most routers), its saturation and its /tokenize."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx

from deployer.gateway.admission import parse_saturation
from deployer.gateway.config import Limits, Tier
from deployer.gateway.errors import ApiError
from deployer.gateway.wire import Pool, UpstreamError

log = logging.getLogger("qwen_deploy.gateway")
CHECK_TIMEOUT_S = 5.0
RETRY_AFTER_LOADING_S = 10
RETRY_AFTER_DOWN_S = 30


class TierState(str, Enum):
    READY = "ready"
    LOADING = "loading"
    ASLEEP = "asleep"
    DOWN = "down"


@dataclass
class TierStatus:
    state: TierState = TierState.LOADING
    detail: str = "not checked yet"
    ever_ready: bool = False
    waiting: float = 0.0
    kv_usage: float = 0.0
    tokenize: bool | None = None  # None: not tried yet


class TierClient:
    def __init__(
        self,
        tier: Tier,
        limits: Limits,
        started: float | None = None,
    ) -> None:
        self.tier = tier
        self.limits = limits
        self.started = time.monotonic() if started is None else started
        self.status = TierStatus()
        headers = {"authorization": f"Bearer {tier.api_key}"} if tier.api_key else {}
        self.client = httpx.AsyncClient(
            base_url=tier.base_url,
            headers=headers,
            # No read timeout: a long generation is not an error. Streams get first-byte and
            # idle-gap deadlines from the relay instead.
            timeout=httpx.Timeout(
                connect=limits.connect_timeout_s, read=None, write=60.0, pool=None
            ),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=512, keepalive_expiry=30.0
            ),
        )
        self.pool = Pool(tier.base_url, headers, limits.connect_timeout_s)  # completions

    async def aclose(self) -> None:
        self.pool.close()
        await self.client.aclose()

    @property
    def ready(self) -> bool:
        return self.status.state is TierState.READY

    # --- readiness ----------------------------------------------------------------------------

    async def check(self) -> TierStatus:
        """Ask the tier: /health, then /v1/models with its key, then /metrics."""
        try:
            health = await self.client.get("/health", timeout=CHECK_TIMEOUT_S)
            if health.status_code != 200:
                self._set(TierState.DOWN, f"/health answers {health.status_code}")
                return self.status
            if self.tier.sleep_mode:
                sleeping = await self.client.get("/is_sleeping", timeout=CHECK_TIMEOUT_S)
                if sleeping.status_code == 200 and sleeping.json().get("is_sleeping") is True:
                    self._set(TierState.ASLEEP, "asleep (vLLM sleep mode)")
                    return self.status
            models = await self.client.get("/v1/models", timeout=CHECK_TIMEOUT_S)
            if models.status_code == 401:
                self._set(TierState.DOWN, "rejects the key the gateway holds for it")
                return self.status
            if models.status_code != 200:
                self._set(TierState.DOWN, f"/v1/models answers {models.status_code}")
                return self.status
            served = [m.get("id") for m in models.json().get("data", [])]
            if self.tier.served_model_name not in served:
                self._set(TierState.DOWN, f"serves {served}, not {self.tier.served_model_name}")
                return self.status
            metrics = await self.client.get("/metrics", timeout=CHECK_TIMEOUT_S)
            if metrics.status_code == 200:
                self.status.waiting, self.status.kv_usage = parse_saturation(metrics.text)
            self._set(TierState.READY, "ready")
        except (httpx.TransportError, ValueError) as exc:
            self.mark_unreachable(exc)
        return self.status

    def mark_unreachable(self, exc: BaseException) -> None:
        reason = _reason(exc)
        within = time.monotonic() - self.started < self.tier.startup_timeout_s
        if not self.status.ever_ready and within:
            self._set(TierState.LOADING, f"loading ({reason})")
        else:
            self._set(TierState.DOWN, f"down ({reason})")

    def _set(self, state: TierState, detail: str) -> None:
        if state is not self.status.state:
            log.info("tier %s: %s", self.tier.name, detail)
        self.status.state = state
        self.status.detail = detail
        if state is TierState.READY:
            self.status.ever_ready = True

    @property
    def saturated(self) -> bool:
        return self.status.waiting > 0 or self.status.kv_usage >= self.limits.kv_saturation

    def unavailable(self) -> ApiError:
        """503 for a tier that is not ready, naming it, with a Retry-After."""
        state = self.status.state
        name = self.tier.name
        if state is TierState.LOADING:
            return ApiError(
                503, f"tier {name} is loading", retry_after=RETRY_AFTER_LOADING_S, tier=name
            )
        if state is TierState.ASLEEP:
            return ApiError(
                503,
                f"tier {name} is asleep; wake it with POST /api/v1/model/load (admin key)",
                retry_after=RETRY_AFTER_LOADING_S,
                tier=name,
            )
        return ApiError(
            503,
            f"tier {name} is {self.status.detail}",
            retry_after=RETRY_AFTER_DOWN_S,
            tier=name,
        )

    # --- tokens ---------------------------------------------------------------------------

    async def count_tokens(self, body: dict[str, Any], chat: bool) -> int | None:
        """Prompt tokens by the tier's own tokenizer (vLLM's /tokenize); None if it has none."""
        if self.status.tokenize is False:
            return None
        payload: dict[str, Any] = {"model": self.tier.served_model_name}
        if chat:
            payload["messages"] = body.get("messages")
            payload["add_generation_prompt"] = True
            if isinstance(body.get("chat_template_kwargs"), dict):
                payload["chat_template_kwargs"] = body["chat_template_kwargs"]
        else:
            payload["prompt"] = body.get("prompt")
        try:
            answer = await self.client.post("/tokenize", json=payload, timeout=CHECK_TIMEOUT_S)
        except httpx.TransportError as exc:
            self.mark_unreachable(exc)
            raise self.unavailable() from None
        if answer.status_code in (404, 405):
            log.warning(
                "tier %s has no /tokenize: `auto` estimates its prompt sizes", self.tier.name
            )
            self.status.tokenize = False
            return None
        if answer.status_code != 200:
            detail = answer.text[:300]
            raise ApiError(answer.status_code, f"tier {self.tier.name} /tokenize: {detail}")
        self.status.tokenize = True
        count = answer.json().get("count")
        return int(count) if isinstance(count, int) else None

    async def wake_up(self) -> None:
        answer = await self.client.post("/wake_up", timeout=CHECK_TIMEOUT_S * 12)
        if answer.status_code != 200:
            raise ApiError(502, f"tier {self.tier.name} /wake_up answered {answer.status_code}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UpstreamError):
        return str(exc)
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return type(exc).__name__

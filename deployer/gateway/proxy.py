"""The gateway's core: pick a tier, admit the request on its GPU, forward it with the tier's key,
retry before the first byte only, fall back when allowed (and say so), count what was used."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from deployer.gateway import routing, wire
from deployer.gateway.admission import GroupGate, KeyLimiter
from deployer.gateway.config import GatewayConfig, GatewayKey
from deployer.gateway.errors import ApiError, utf8_error, with_request_id
from deployer.gateway.metrics import GatewayMetrics
from deployer.gateway.streaming import (
    ClientGone,
    OpenAITap,
    RelayResponse,
    Seed004Tap,
    Tap,
    until_disconnect,
)
from deployer.gateway.upstream import TierClient, TierState

log = logging.getLogger("qwen_deploy.gateway")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
RETRY_BACKOFF_S = 0.05
FALLBACK_STATUSES = (429, 503)  # the tier cannot take it now; another may


def request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.match(given) else f"gw-{uuid.uuid4().hex}"


@dataclass
class Lease:
    """What a request holds while it runs: a slot on its GPU group and on its key."""

    releases: list[Callable[[], None]] = field(default_factory=list)

    def release(self) -> None:
        while self.releases:
            self.releases.pop()()


@dataclass
class Call:
    """One client request on its way through the gateway."""

    rid: str
    key: GatewayKey
    body: dict[str, Any]
    chat: bool
    seed: bool = False  # seed 004's /api/v1 stream shape
    headers: dict[str, str] = field(default_factory=dict)
    relayed: bool = False  # a stream's relay took over the key's slot

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        started = time.monotonic()
        self.clients = {t.name: TierClient(t, config.limits, started) for t in config.tiers}
        limits = config.limits
        self.gates = {
            g.name: GroupGate(g, limits.max_queue, limits.queue_timeout_s) for g in config.groups
        }
        self.limiters = {k.name: KeyLimiter(k) for k in config.keys}
        self._monitor: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.check_all()
        self._monitor = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        if self._monitor:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await asyncio.gather(*(c.aclose() for c in self.clients.values()))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.limits.health_interval_s)
            try:
                await self.check_all()
            except Exception:  # one bad round must not end the monitoring
                log.exception("health round failed")

    async def check_all(self) -> None:
        await asyncio.gather(*(c.check() for c in self.clients.values()))
        for name, client in self.clients.items():
            self.gates[client.tier.group].set_saturated(name, client.ready and client.saturated)
            self.metrics.tier_ready.labels(name).set(1 if client.ready else 0)
        for gate in self.gates.values():
            self.metrics.queued.labels(gate.group.name).set(gate.queued)

    # --- auth and body --------------------------------------------------------------------

    def authorize(self, request: Request) -> GatewayKey:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        key = self.config.key_for(secret.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            why = "no API key" if not header else "wrong API key"
            raise ApiError(401, f"Unauthorized: {why}; send `Authorization: Bearer <gateway key>`")
        return key

    async def read_json(self, request: Request) -> dict[str, Any]:
        limit = self.config.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {declared} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        problem = utf8_error(raw)
        if problem:
            raise problem
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    # --- routing --------------------------------------------------------------------------

    async def choose(self, call: Call) -> tuple[str, bool]:
        """The tier for the request, and whether its prompt size was only estimated."""
        target = routing.resolve_model(self.config, call.body.get("model"))
        if target != routing.AUTO:
            if not call.key.allows(target):
                raise ApiError(
                    403, f"key {call.key.name!r} may not use tier {target}", param="model"
                )
            return target, False
        allowed = [t for t in routing.by_size(self.config.tiers) if call.key.allows(t.name)]
        ready = [t for t in allowed if self.clients[t.name].ready]
        if not ready:
            if not allowed:
                raise ApiError(403, f"key {call.key.name!r} may use no tier")
            raise self.clients[allowed[0].name].unavailable()
        max_tokens = routing.max_tokens_of(call.body)
        estimated = False
        prompt = 0
        for tier in ready:
            count = await self.clients[tier.name].count_tokens(call.body, call.chat)
            if count is None:
                count, estimated = routing.estimate_tokens(call.body, call.chat), True
            prompt = count
            if routing.fits(tier, count, max_tokens):
                return tier.name, estimated
        raise routing.context_error(ready, prompt, max_tokens)

    async def handle(self, request: Request, call: Call) -> Response:
        """Route, admit and forward; fall back to other tiers when allowed and announced."""
        tier, estimated = await self.choose(call)
        mode = routing.fallback_mode(self.config, request.headers.get("x-qwen-deploy-fallback"))
        candidates = [tier, *routing.fallback_order(self.config, tier, call.key, mode)]
        if estimated:
            call.headers["x-qwen-deploy-token-count"] = "estimated"
        limiter = self.limiters[call.key.name]
        try:
            limiter.acquire()
        except ApiError:
            self.metrics.rejected.labels(tier, call.key.name, "key-limit").inc()
            raise
        try:
            first_error: ApiError | None = None
            for name in candidates:
                try:
                    response = await until_disconnect(self._serve(call, name), request.receive)
                except ApiError as exc:
                    self._count_refusal(name, call.key.name, exc)
                    if exc.status not in FALLBACK_STATUSES or name == candidates[-1]:
                        raise first_error or exc from None
                    first_error = first_error or exc
                    continue
                if name != tier:
                    response.headers["x-qwen-deploy-fallback-from"] = tier
                    self.metrics.fallbacks.labels(tier, name, call.key.name).inc()
                    log.info("request %s: tier %s -> %s (fallback)", call.rid, tier, name)
                return response
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if not call.relayed:
                limiter.release()

    def _count_refusal(self, tier: str, key: str, exc: ApiError) -> None:
        if exc.status in (429, 503, 504):
            reason = {429: "busy", 503: "unavailable", 504: "timeout"}[exc.status]
            self.metrics.rejected.labels(tier, key, reason).inc()

    # --- one tier -------------------------------------------------------------------------

    async def _serve(self, call: Call, name: str) -> Response:
        client = self.clients[name]
        if client.status.state is not TierState.READY:
            raise client.unavailable()
        gate = self.gates[client.tier.group]
        try:
            await gate.acquire()
        except ApiError as exc:
            exc.tier = name
            raise
        lease = Lease([gate.release])
        in_flight = self.metrics.in_flight.labels(name, call.key.name)
        in_flight.inc()
        lease.releases.append(in_flight.dec)
        try:
            return await self._forward(call, client, lease)
        except BaseException:
            lease.release()
            raise

    def _upstream_body(self, call: Call, client: TierClient) -> tuple[bytes, bool]:
        body = dict(call.body)
        body["model"] = client.tier.served_model_name
        strip_usage = False
        if call.stream:
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            if not options.get("include_usage"):
                # Count the tokens of every stream (gpustack#4874); the client did not ask for
                # the usage chunk, so it is dropped on the way back.
                options["include_usage"] = True
                strip_usage = not call.seed
            body["stream_options"] = options
        return json.dumps(body, ensure_ascii=False).encode(), strip_usage

    async def _open(self, call: Call, client: TierClient, content: bytes) -> wire.Response:
        """Send the request; retry a refused connection or a 502/503 (nothing reached the
        client yet) a few times with a short jittered backoff."""
        retries = self.config.limits.retries
        headers = {"content-type": "application/json", "x-request-id": call.rid}
        for attempt in range(retries + 1):
            try:
                response = await client.pool.request("POST", call.path, content, headers)
            except wire.UpstreamError as exc:
                if attempt < retries:
                    await asyncio.sleep(RETRY_BACKOFF_S * (1 + random.random()) * (attempt + 1))
                    continue
                client.mark_unreachable(exc)
                raise client.unavailable() from None
            if response.status_code in (502, 503) and attempt < retries:
                await response.aclose()
                await asyncio.sleep(RETRY_BACKOFF_S * (1 + random.random()) * (attempt + 1))
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _answer_headers(self, call: Call, tier: str) -> dict[str, str]:
        return {**call.headers, "x-qwen-deploy-tier": tier, "x-request-id": call.rid}

    async def _forward(self, call: Call, client: TierClient, lease: Lease) -> Response:
        name = client.tier.name
        content, strip_usage = self._upstream_body(call, client)
        started = time.monotonic()
        upstream = await self._open(call, client, content)
        headers = self._answer_headers(call, name)
        if not call.stream or upstream.status_code != 200:
            try:
                data = await upstream.read()
            except wire.UpstreamError as exc:
                raise ApiError(502, f"tier {name} failed: {exc}", tier=name) from None
            finally:
                await upstream.aclose()
            self.metrics.ttft.labels(name).observe(time.monotonic() - started)
            if upstream.status_code == 200:
                self._count_usage(name, call.key.name, _usage_of(data))
            self.metrics.requests.labels(name, call.key.name, str(upstream.status_code)).inc()
            lease.release()
            if upstream.status_code != 200:
                data = with_request_id(data, call.rid)
            return Response(data, upstream.status_code, headers, "application/json")
        chunks = upstream.chunks()
        try:
            first = await asyncio.wait_for(
                chunks.__anext__(), self.config.limits.first_byte_timeout_s
            )
        except (asyncio.TimeoutError, StopAsyncIteration, wire.UpstreamError) as exc:
            await upstream.aclose()
            if isinstance(exc, asyncio.TimeoutError):
                raise ApiError(
                    504,
                    f"tier {name} sent nothing within "
                    f"{self.config.limits.first_byte_timeout_s:g} s",
                    tier=name,
                ) from None
            raise ApiError(
                502, f"tier {name} closed the stream before its first byte", tier=name
            ) from None
        self.metrics.ttft.labels(name).observe(time.monotonic() - started)
        tap: Tap = (
            Seed004Tap(call.rid, name) if call.seed else OpenAITap(strip_usage, call.rid, name)
        )
        key_name = call.key.name
        limiter = self.limiters[key_name]

        def finish(usage: dict[str, Any] | None, outcome: str) -> None:
            self._count_usage(name, key_name, usage)
            self.metrics.requests.labels(
                name, key_name, "200" if outcome == "ok" else outcome
            ).inc()
            lease.release()
            limiter.release()

        call.relayed = True  # the relay releases the key's slot when the stream ends
        limits = self.config.limits
        return RelayResponse(
            upstream,
            first,
            chunks,
            tap,
            keepalive_s=limits.keepalive_s,
            idle_timeout_s=limits.idle_timeout_s,
            headers=headers,
            on_finish=finish,
        )

    def _count_usage(self, tier: str, key: str, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.metrics.prompt_tokens.labels(tier, key).inc(prompt)
        if isinstance(completion, int):
            self.metrics.completion_tokens.labels(tier, key).inc(completion)


def _usage_of(data: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    usage = payload.get("usage") if isinstance(payload, dict) else None
    return usage if isinstance(usage, dict) else None


__all__ = ["Call", "ClientGone", "Gateway", "request_id"]

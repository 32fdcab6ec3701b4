"""The ASGI app: OpenAI-compatible /v1, seed 004's /api/v1, /health and /metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployer.gateway import routing
from deployer.gateway.config import GatewayConfig, GatewayKey
from deployer.gateway.errors import ApiError, error_body
from deployer.gateway.proxy import Call, ClientGone, Gateway, request_id
from deployer.gateway.seed_api import add_seed_routes
from deployer.gateway.upstream import TierState

log = logging.getLogger("qwen_deploy.gateway")
CLIENT_CLOSED = 499  # nginx's code for a request the client abandoned


def build_app(config: GatewayConfig) -> FastAPI:
    """The gateway for one deployment; health monitoring runs while the app does."""
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title=f"qwen-deploy gateway ({config.deployment})",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
    )
    app.state.gateway = gateway

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        rid = _rid(request)
        return JSONResponse(exc.body(rid), exc.status, headers=exc.headers(rid))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        rid = _rid(request)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(
            error_body(exc.status_code, message, rid), exc.status_code, {"x-request-id": rid}
        )

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        rid = _rid(request)
        body = error_body(500, f"gateway error: {type(exc).__name__}: {exc}", rid)
        return JSONResponse(body, 500, {"x-request-id": rid})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The gateway answers (tiers' states beside it); no key needed."""
        return {"status": overall(gateway), "tiers": tier_states(gateway)}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        gateway.authorize(request)
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        key = gateway.authorize(request)
        return {"object": "list", "data": model_cards(gateway, key)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _openai(gateway, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _openai(gateway, request, chat=False)

    add_seed_routes(app, gateway)
    return app


def _rid(request: Request) -> str:
    rid = getattr(request.state, "rid", None)
    if rid is None:
        rid = request.state.rid = request_id(request)
    return str(rid)


async def _openai(gateway: Gateway, request: Request, chat: bool) -> Response:
    rid = _rid(request)
    key = gateway.authorize(request)
    body = await gateway.read_json(request)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: expected a non-empty list of messages", param="messages")
    elif body.get("prompt") in (None, "", []):
        raise ApiError(400, "prompt: expected a prompt", param="prompt")
    return await gateway.handle(request, Call(rid, key, body, chat))


def overall(gateway: Gateway) -> str:
    ready = [c.ready for c in gateway.clients.values()]
    if all(ready):
        return "healthy"
    return "degraded" if any(ready) else "unhealthy"


def tier_states(gateway: Gateway) -> dict[str, dict[str, str]]:
    return {
        name: {"state": c.status.state.value, "detail": c.status.detail}
        for name, c in gateway.clients.items()
    }


def model_cards(gateway: Gateway, key: GatewayKey) -> list[dict[str, Any]]:
    """One card per name this key may send: served names, tier names, aliases, `auto`.
    Built from the config and the last health round, so a tier down never breaks it."""
    cards = []
    tiers = [t for t in gateway.config.tiers if key.allows(t.name)]
    for tier in tiers:
        state = gateway.clients[tier.name].status.state
        for name in dict.fromkeys(tier.names()):
            cards.append(
                {
                    "id": name,
                    "object": "model",
                    "owned_by": "qwen-deploy",
                    "root": tier.served_model_name,
                    "max_model_len": tier.max_model_len,
                    "tier": tier.name,
                    "state": state.value,
                }
            )
    ready = [t for t in tiers if gateway.clients[t.name].ready]
    cards.append(
        {
            "id": routing.AUTO,
            "object": "model",
            "owned_by": "qwen-deploy",
            "root": None,
            "max_model_len": max((t.max_model_len for t in ready), default=0),
            "tier": routing.AUTO,
            "state": TierState.READY.value if ready else TierState.DOWN.value,
            "tiers": [t.name for t in routing.by_size(tiers)],
        }
    )
    return cards

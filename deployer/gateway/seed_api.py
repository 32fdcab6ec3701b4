"""Seed 004's chat API over the tiers: /api/v1/chat, /chat/stream (with `thinking` events),
/health, /model/info and /model/load, same paths and shapes; optional fields `model` (a tier,
alias or `auto`), `thinking`, `max_tokens`, `temperature`."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from deployer.gateway.errors import ApiError
from deployer.gateway.proxy import Call, Gateway, request_id
from deployer.gateway.streaming import SSE_HEADERS, Seed004Tap
from deployer.gateway.upstream import TierState

_FIELDS = {"message", "history", "model", "tier", "thinking", "max_tokens", "temperature"}


def chat_body(raw: dict[str, Any], stream: bool) -> dict[str, Any]:
    """Seed 004's request as an OpenAI chat request."""
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; fields are {sorted(_FIELDS)}")
    message = raw.get("message")
    if not isinstance(message, str) or not message.strip():
        raise ApiError(400, "message: expected a non-empty string", param="message")
    history = raw.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(m, dict)
        and m.get("role") in ("user", "assistant", "system")
        and isinstance(m.get("content"), str)
        for m in history
    ):
        raise ApiError(
            400,
            'history: expected a list of {"role": "user"|"assistant"|"system", "content": "…"}',
            param="history",
        )
    body: dict[str, Any] = {
        "model": raw.get("model") or raw.get("tier") or "auto",
        "messages": [*history, {"role": "user", "content": message}],
        "stream": stream,
    }
    thinking = raw.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, bool):
            raise ApiError(400, "thinking: expected true or false", param="thinking")
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    for name in ("max_tokens", "temperature"):
        if raw.get(name) is not None:
            body[name] = raw[name]
    return body


def add_seed_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.post("/api/v1/chat")
    async def chat(request: Request) -> Response:
        rid = request_id(request)
        try:
            key = gateway.authorize(request)
            call = Call(rid, key, chat_body(await gateway.read_json(request), False), True)
            answer = await gateway.handle(request, call)
        except ApiError as exc:
            return _seed_error(exc, rid)
        data = json.loads(bytes(answer.body)) if answer.body else {}
        if answer.status_code != 200:
            message = (data.get("error") or {}).get("message") if isinstance(data, dict) else ""
            return _seed_error(ApiError(answer.status_code, str(message)), rid, answer.headers)
        message = data["choices"][0]["message"]
        payload = {
            "response": message.get("content") or "",
            "success": True,
            "error": None,
            "thinking": message.get("reasoning") or message.get("reasoning_content"),
            "tier": answer.headers.get("x-qwen-deploy-tier"),
            "usage": data.get("usage"),
        }
        return JSONResponse(payload, headers=_pass(answer.headers))

    @app.post("/api/v1/chat/stream")
    async def chat_stream(request: Request) -> Response:
        rid = request_id(request)
        try:
            key = gateway.authorize(request)
            body = chat_body(await gateway.read_json(request), True)
            answer = await gateway.handle(request, Call(rid, key, body, True, seed=True))
        except ApiError as exc:
            events = Seed004Tap.event("start", "") + Seed004Tap.event("error", exc.message)
            return Response(
                events, exc.status, {**SSE_HEADERS, **exc.headers(rid)}, "text/event-stream"
            )
        if answer.status_code != 200:  # the tier refused before streaming: say why as events
            data = json.loads(bytes(answer.body) or b"{}")
            message = str((data.get("error") or {}).get("message", data))
            events = Seed004Tap.event("start", "") + Seed004Tap.event("error", message)
            return Response(events, answer.status_code, _pass(answer.headers), "text/event-stream")
        return answer

    @app.get("/api/v1/health")
    async def health() -> Response:
        """healthy: every tier ready; degraded: some; unhealthy: none (503). No key needed."""
        states = {n: c.status for n, c in gateway.clients.items()}
        ready = [n for n, s in states.items() if s.state is TierState.READY]
        if len(ready) == len(states):
            status, message = "healthy", f"all {len(states)} tiers are ready"
        elif ready:
            others = ", ".join(f"{n} {s.detail}" for n, s in states.items() if n not in ready)
            status, message = "degraded", f"ready: {', '.join(ready)}; not ready: {others}"
        else:
            status, message = "unhealthy", "no tier is ready"
        payload = {
            "status": status,
            "message": message,
            "tiers": {n: {"state": s.state.value, "detail": s.detail} for n, s in states.items()},
        }
        return JSONResponse(payload, 503 if status == "unhealthy" else 200)

    @app.get("/api/v1/model/info")
    async def model_info(request: Request) -> dict[str, Any]:
        gateway.authorize(request)
        tiers = [_tier_info(gateway, t.name) for t in gateway.config.tiers]
        return {**tiers[0], "tiers": tiers}

    @app.post("/api/v1/model/load")
    async def model_load(request: Request) -> dict[str, Any]:
        key = gateway.authorize(request)
        if not key.admin:
            raise ApiError(403, f"key {key.name!r} is not an admin key; model/load needs one")
        raw = await gateway.read_json(request) if request.headers.get("content-length") else {}
        names = [t.name for t in gateway.config.tiers]
        wanted = raw.get("tier") or raw.get("model") or (names[0] if len(names) == 1 else None)
        if not wanted:
            raise ApiError(400, f"tier: name the tier to load ({', '.join(names)})", param="tier")
        from deployer.gateway.routing import resolve_model

        name = resolve_model(gateway.config, wanted)
        client = gateway.clients.get(name)
        if client is None:
            raise ApiError(400, "tier: `auto` is not a tier", param="tier")
        await client.check()
        if client.ready:
            return {"status": "loaded", "message": f"tier {name} is loaded", "tier": name}
        if client.tier.sleep_mode and client.status.state is TierState.ASLEEP:
            await client.wake_up()
            await client.check()
            return {"status": "loaded", "message": f"tier {name} woke up", "tier": name}
        deployment = gateway.config.deployment
        raise ApiError(
            409,
            f"tier {name} is {client.status.detail}; the gateway does not start containers: run "
            f"`qwen-deploy --deployment {deployment} restart {name}` (or `qwen-deploy up`) on "
            "the host",
            tier=name,
        )


def _tier_info(gateway: Gateway, name: str) -> dict[str, Any]:
    tier = gateway.config.tier(name)
    status = gateway.clients[name].status
    return {
        "model_name": tier.served_model_name,
        "tier": tier.name,
        "aliases": list(tier.aliases),
        "device": ",".join(f"cuda:{g}" for g in tier.gpus) or "cpu",
        "is_loaded": status.state is TierState.READY,
        "state": status.state.value,
        "model_size": tier.size_bytes,
        "max_model_len": tier.max_model_len,
        "gpu_group": tier.group,
    }


def _pass(headers: Any) -> dict[str, str]:
    return {
        k: v
        for k, v in headers.items()
        if k.startswith("x-qwen-deploy-") or k in ("x-request-id", "retry-after")
    }


def _seed_error(exc: ApiError, rid: str, headers: Any = None) -> Response:
    payload = {"response": "", "success": False, "error": exc.message, "request_id": rid}
    return JSONResponse(
        payload, exc.status, {**exc.headers(rid), **(_pass(headers) if headers else {})}
    )

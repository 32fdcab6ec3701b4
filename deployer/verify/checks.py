"""The six checks of one service: /health, /v1/models, auth, chat, streamed chat, thinking.
Each returns (detail, metrics) or raises CheckFailed saying why."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from deployer import openai_wire as wire
from deployer.plan import ServicePlan
from deployer.verify.client import CheckFailed, Client, http_failure, impostor, json_object
from deployer.verify.report import Metrics

CHAT_MAX_TOKENS = 32
# Generous on purpose: a Qwen3 thinking block for a one-line sum is ~50-300 tokens, and a
# budget that runs out inside it is exactly the failure this check reports.
THINKING_MAX_TOKENS = 1024
WRONG_KEY = "qwen-deploy-verify-wrong-key"
CHAT_PROMPT = "Reply with the single word: ready."
THINKING_PROMPT = "What is 2 + 3? Answer with the number only."


def _check_health(client: Client, service: ServicePlan) -> tuple[str, Metrics]:
    response = client.send("GET", "/health", key=None)
    response.close()
    if response.status_code != 200:
        raise CheckFailed(f"/health answered HTTP {response.status_code}")
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


def _check_models(client: Client, service: ServicePlan) -> tuple[str, Metrics]:
    data = json_object(
        client.send("GET", "/v1/models", key=client.api_key), "/v1/models", client, service
    )
    entries = [e for e in data.get("data") or [] if isinstance(e, dict)]
    served = [str(e.get("id")) for e in entries]
    metrics: Metrics = {"models": served}
    entry = next((e for e in entries if e.get("id") == service.served_model_name), None)
    if entry is None:
        other = impostor(client, service) or f"another container on port {service.port}?"
        raise CheckFailed(
            f"serves {', '.join(served) or 'no model'}, not the planned "
            f"{service.served_model_name!r} ({other})",
            metrics,
        )
    length = entry.get("max_model_len")
    metrics["max_model_len"] = length
    if length is None:
        raise CheckFailed(f"{service.served_model_name} listed without max_model_len", metrics)
    if length != service.max_model_len:
        raise CheckFailed(
            f"{service.served_model_name} has max_model_len {length}, planned "
            f"{service.max_model_len} (the container runs an older config: `qwen-deploy up`)",
            metrics,
        )
    return f"{service.served_model_name}, max_model_len {length}", metrics


def _check_auth(client: Client, service: ServicePlan) -> tuple[str, Metrics]:
    statuses: Metrics = {}
    if service.auth == "none":  # the profile and --allow-unauthenticated asked for an open port
        response = client.send("GET", "/v1/models", key=None)
        response.close()
        statuses["no_key"] = response.status_code
        if response.status_code != 200:
            raise CheckFailed(
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
            other = impostor(client, service)
            raise CheckFailed(
                f"/v1/models answered 200 with {label}: "
                + (
                    other
                    or "the endpoint is open to anyone (the container must get "
                    "VLLM_API_KEY or --api-key)"
                ),
                statuses,
            )
        if response.status_code != 401:
            raise CheckFailed(
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
        raise CheckFailed(f"{what}: no choices in the answer")
    message = choices[0].get("message") or {}
    if not isinstance(message, dict):
        raise CheckFailed(f"{what}: choices[0].message is not an object")
    return message, choices[0].get("finish_reason")


def _completion_tokens(data: dict[str, Any]) -> int | None:
    usage = data.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    return None


def _check_chat(client: Client, service: ServicePlan) -> tuple[str, Metrics]:
    body = chat_body(service, CHAT_PROMPT, thinking=False, max_tokens=CHAT_MAX_TOKENS)
    start = time.perf_counter()
    response = client.send("POST", "/v1/chat/completions", key=client.api_key, body=body)
    data = json_object(response, "chat completion", client, service)
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
        raise CheckFailed(f"empty content with thinking disabled (finish_reason {finish})", metrics)
    if "<think>" in content:
        raise CheckFailed(
            "content holds a <think> block although enable_thinking was false", metrics
        )
    rate = f", {metrics['tokens_per_second']} tok/s" if metrics["tokens_per_second"] else ""
    return f"{len(content.strip())} chars in {latency * 1000:.0f} ms{rate}", metrics


def sse_events(response: requests.Response) -> Iterator[str]:
    """The data fields of an SSE stream (one event per `data:` line, as vLLM sends them)."""
    return wire.iter_sse_data(response.iter_lines())


def _check_stream(client: Client, service: ServicePlan) -> tuple[str, Metrics]:
    body = chat_body(service, CHAT_PROMPT, thinking=False, max_tokens=CHAT_MAX_TOKENS, stream=True)
    start = time.perf_counter()
    response = client.send(
        "POST", "/v1/chat/completions", key=client.api_key, body=body, stream=True
    )
    with response:
        if response.status_code != 200:
            raise http_failure(response, "streaming chat completion", client, service)
        kind = response.headers.get("Content-Type", "")
        if "text/event-stream" not in kind:
            raise CheckFailed(f"answered {kind or 'no Content-Type'}, not text/event-stream")
        ttft: float | None = None
        tokens: int | None = None
        stream = wire.ChunkStream(response.iter_lines())
        try:
            for chunk in stream:
                problem = wire.chunk_error(chunk)
                if problem is not None:
                    raise CheckFailed(f"error in the stream: {problem}")
                tokens = _completion_tokens(chunk) or tokens
                if ttft is None and wire.delta_text(chunk):
                    ttft = time.perf_counter() - start
        except wire.StreamError as exc:
            raise CheckFailed(str(exc)) from None
        except (requests.RequestException, ConnectionError) as exc:
            raise CheckFailed(
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
        raise CheckFailed(f"stream ended after {chunks} chunks without data: [DONE]", metrics)
    if ttft is None:
        raise CheckFailed(f"{chunks} chunks and [DONE] but no text in any delta", metrics)
    return f"{chunks} chunks, first token after {ttft * 1000:.0f} ms, [DONE]", metrics


def _check_thinking(client: Client, service: ServicePlan) -> tuple[str, Metrics]:
    body = chat_body(service, THINKING_PROMPT, thinking=True, max_tokens=THINKING_MAX_TOKENS)
    start = time.perf_counter()
    response = client.send("POST", "/v1/chat/completions", key=client.api_key, body=body)
    data = json_object(response, "chat completion with thinking", client, service)
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
        raise CheckFailed(
            f"max_tokens ({THINKING_MAX_TOKENS}) ran out inside the thinking block: "
            f"{len(reasoning)} chars of reasoning and no answer (finish_reason length). Thinking "
            "tokens count against max_tokens: raise max_tokens (Qwen3 suggests up to 32768), or "
            'disable thinking with "chat_template_kwargs": {"enable_thinking": false}',
            metrics,
        )
    if "<think>" in content or "</think>" in content:
        raise CheckFailed(
            "the reasoning is not separated: content holds the <think> block "
            f"(is --reasoning-parser {service.reasoning_parser} set on the container?)",
            metrics,
        )
    if not reasoning:
        raise CheckFailed(
            f"no reasoning returned with enable_thinking true (finish_reason {finish})", metrics
        )
    if not content:
        raise CheckFailed(f"reasoning but an empty answer (finish_reason {finish})", metrics)
    return (
        f"reasoning {len(reasoning)} chars, answer {len(content)} chars in {latency * 1000:.0f} ms",
        metrics,
    )


CheckFn = Callable[[Client, ServicePlan], tuple[str, Metrics]]
CHECK_FUNCTIONS: tuple[tuple[str, CheckFn], ...] = (
    ("health", _check_health),
    ("models", _check_models),
    ("auth", _check_auth),
    ("chat", _check_chat),
    ("stream", _check_stream),
    ("thinking", _check_thinking),
)

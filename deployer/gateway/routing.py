"""Which tier serves a request: the model name, a tier name, an alias or `auto`. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from deployer.gateway.config import Fallback, GatewayConfig, GatewayKey, Tier
from deployer.gateway.errors import ApiError

AUTO = "auto"


def resolve_model(config: GatewayConfig, model: Any) -> str:
    """The tier a `model` field names, or AUTO; 404 in vLLM's words for anything else."""
    if model is None or model == "":
        return AUTO
    if not isinstance(model, str):
        raise ApiError(400, f"model: expected a string, got {type(model).__name__}", param="model")
    wanted = model.lower()
    if wanted == AUTO:
        return AUTO
    for tier in config.tiers:
        if any(wanted == name.lower() for name in tier.names()):
            return tier.name
    raise ApiError(
        404,
        f"The model `{model}` does not exist. Valid models: {', '.join(model_names(config))}.",
        param="model",
    )


def model_names(config: GatewayConfig) -> list[str]:
    names = [n for tier in config.tiers for n in dict.fromkeys(tier.names())]
    return [*names, AUTO]


def by_size(tiers: Iterable[Tier]) -> list[Tier]:
    """Smallest model first (ties: shorter context first)."""
    return sorted(tiers, key=lambda t: (t.size_bytes, t.max_model_len, t.name))


def fits(tier: Tier, prompt_tokens: int, max_tokens: int | None) -> bool:
    """Whether the tier's context holds the prompt plus the tokens asked for (or one token)."""
    return prompt_tokens + (max_tokens or 1) <= tier.max_model_len


def context_error(tiers: Sequence[Tier], prompt_tokens: int, max_tokens: int | None) -> ApiError:
    largest = max(tiers, key=lambda t: t.max_model_len)
    asked = f"{prompt_tokens} prompt tokens" + (f" + max_tokens {max_tokens}" if max_tokens else "")
    return ApiError(
        400,
        f"no tier can hold {asked}: the largest context available is {largest.max_model_len} "
        f"tokens (tier {largest.name}); shorten the prompt or lower max_tokens",
        param="messages",
    )


def fallback_order(config: GatewayConfig, tier: str, key: GatewayKey, mode: Fallback) -> list[str]:
    """The tiers that may take over from `tier`, best first: larger models, then (with `any`)
    smaller ones, nearest first."""
    if mode is Fallback.OFF:
        return []
    ordered = by_size(config.tiers)
    index = next(i for i, t in enumerate(ordered) if t.name == tier)
    larger = [t.name for t in ordered[index + 1 :]]
    smaller = [t.name for t in reversed(ordered[:index])] if mode is Fallback.ANY else []
    return [name for name in larger + smaller if key.allows(name)]


def fallback_mode(config: GatewayConfig, header: str | None) -> Fallback:
    """The profile's policy unless the request's `x-qwen-deploy-fallback` header says otherwise."""
    if header is None:
        return config.fallback
    value = header.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return Fallback.LARGER if config.fallback is Fallback.OFF else config.fallback
    if value in ("0", "false", "no"):
        return Fallback.OFF
    try:
        return Fallback(value)
    except ValueError:
        raise ApiError(
            400, f"x-qwen-deploy-fallback: expected off, larger or any, got {header!r}"
        ) from None


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def estimate_tokens(body: Mapping[str, Any], chat: bool) -> int:
    """A generous prompt-size guess for a tier without /tokenize: Qwen3's tokenizer averages
    about 4 characters of English per token; 3 leaves room for other scripts."""
    if chat:
        messages = body.get("messages")
        total = 3
        for message in messages if isinstance(messages, list) else []:
            content = message.get("content") if isinstance(message, dict) else None
            text = content if isinstance(content, str) else str(content or "")
            total += 4 + math.ceil(len(text) / 3)
        return total
    prompt = body.get("prompt")
    text = prompt if isinstance(prompt, str) else str(prompt or "")
    return math.ceil(len(text) / 3)

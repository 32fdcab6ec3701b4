"""One builder per response and chunk shape, with vLLM 0.33.0's keys in its order.

Streamed chunks follow pydantic's exclude_unset as vLLM's serving code uses it: a key is there
only where serving_chat.py / serving_completion.py set it, null or not.
"""

from __future__ import annotations

import time
import uuid
from typing import Any


def usage_info(prompt: int, completion: int, details: dict[str, int] | None) -> dict[str, Any]:
    """UsageInfo with every field, as a non-streamed response carries it."""
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
        "completion_tokens_details": details,
    }


def stream_usage(prompt: int, completion: int, details: dict[str, int] | None) -> dict[str, Any]:
    """UsageInfo on a chat chunk (continuous_usage_stats): prompt_tokens_details is not set."""
    usage = usage_info(prompt, completion, details)
    del usage["prompt_tokens_details"]
    return usage


def without_none(payload: dict[str, Any]) -> dict[str, Any]:
    """pydantic's exclude_none on one object (vLLM's final usage chunk)."""
    return {k: v for k, v in payload.items() if v is not None}


def model_list(names: list[str], root: str, max_model_len: int) -> dict[str, Any]:
    """GET /v1/models."""
    now = int(time.time())
    cards = [
        {
            "id": name,
            "object": "model",
            "created": now,
            "owned_by": "vllm",
            "root": root,
            "parent": None,
            "max_model_len": max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": now,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        for name in names
    ]
    return {"object": "list", "data": cards}


def chat_choice(
    index: int,
    content: str | None,
    reasoning: str | None,
    finish_reason: str,
    stop_reason: str | int | None,
) -> dict[str, Any]:
    """One choice of a non-streamed chat completion."""
    return {
        "index": index,
        "message": {
            "role": "assistant",
            "content": content,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "reasoning": reasoning,
        },
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
        "token_ids": None,
        "routed_experts": None,
        "weight_versions": None,
    }


def chat_response(
    request_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any],
    fingerprint: str,
    prompt_text: str | None,
) -> dict[str, Any]:
    """A non-streamed chat completion."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": fingerprint,
        "usage": usage,
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": prompt_text,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def _chat_chunk(
    request_id: str, created: int, model: str, choice: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def chat_role_chunk(
    request_id: str,
    created: int,
    model: str,
    usage: dict[str, Any] | None,
    prompt_text: str | None,
) -> dict[str, Any]:
    """The first chat chunk: the assistant role and empty content (usage: continuous stats)."""
    choice = {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    payload = _chat_chunk(request_id, created, model, choice)
    if usage is not None:
        payload["usage"] = usage
    payload.update(prompt_token_ids=None, prompt_text=prompt_text)
    return payload


def chat_token_chunk(
    request_id: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None,
    stop_reason: str | int | None,
    usage: dict[str, Any] | None,
    fingerprint: str | None,
) -> dict[str, Any]:
    """A chat chunk with a token's delta; the last one carries the finish reason.

    fingerprint: set on the last chunk when no usage chunk follows it.
    """
    choice: dict[str, Any] = {
        "index": 0,
        "delta": delta,
        "logprobs": None,
        "finish_reason": finish_reason,
    }
    if finish_reason:
        choice["stop_reason"] = stop_reason
    choice["token_ids"] = None
    if finish_reason:
        choice["weight_versions"] = None
    payload = _chat_chunk(request_id, created, model, choice)
    if usage is not None:
        payload["usage"] = usage
    if fingerprint is not None:
        payload["system_fingerprint"] = fingerprint
    payload["kv_transfer_params"] = None
    return payload


def completion_response(
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    stop_reason: str | int | None,
    usage: dict[str, Any],
    fingerprint: str,
) -> dict[str, Any]:
    """A non-streamed /v1/completions response."""
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason,
                "token_ids": None,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "routed_experts": None,
                "weight_versions": None,
            }
        ],
        "service_tier": None,
        "system_fingerprint": fingerprint,
        "usage": usage,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


def completion_chunk(
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None,
    stop_reason: str | int | None,
    usage: dict[str, Any] | None,
    fingerprint: str | None,
) -> dict[str, Any]:
    """A /v1/completions chunk (usage: continuous stats, fingerprint: last chunk, no usage
    chunk after it)."""
    payload: dict[str, Any] = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason,
                "prompt_token_ids": None,
                "token_ids": None,
                "weight_versions": None,
            }
        ],
    }
    if usage is not None:
        payload["usage"] = usage
    if fingerprint is not None:
        payload["system_fingerprint"] = fingerprint
    payload["kv_transfer_params"] = None
    return payload


def completion_stream_usage(prompt: int, completion: int) -> dict[str, Any]:
    """UsageInfo on a completion chunk (continuous_usage_stats)."""
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }


def usage_chunk(
    request_id: str,
    kind: str,
    created: int,
    model: str,
    usage: dict[str, Any],
    fingerprint: str,
) -> dict[str, Any]:
    """The last chunk before [DONE] when stream_options.include_usage asks for it."""
    return {
        "id": request_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [],
        "usage": without_none(usage),
        "system_fingerprint": fingerprint,
    }

"""The OpenAI wire format as vLLM speaks it: auth headers, chat and completion request bodies,
the SSE stream of chunks, error text from an error body and the model list. Pure: it takes
bytes, lines and dicts and has no HTTP client of its own, so `verify`, the load generator, the
readiness probe, the gateway and the benchmark scripts share one reading of the format.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "DONE",
    "MODELS_PATH",
    "ChunkStream",
    "StreamError",
    "auth_headers",
    "chat_body",
    "chunk_error",
    "chunk_usage",
    "completion_body",
    "delta_parts",
    "delta_text",
    "error_text",
    "finish_reason",
    "iter_sse_data",
    "model_ids",
]

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
DONE = "[DONE]"  # the data of the last SSE event of an OpenAI stream
ERROR_TEXT_LIMIT = 200

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


def auth_headers(api_key: str | None) -> dict[str, str]:
    """`Authorization: Bearer KEY`, or no header for None or "" (a service without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _stream_fields(body: dict[str, Any], stream: bool, include_usage: bool) -> dict[str, Any]:
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def chat_body(
    model: str,
    messages: str | Iterable[Mapping[str, Any]],
    *,
    max_tokens: int | None = None,
    stream: bool = False,
    include_usage: bool = True,
    thinking: bool | None = None,
    ignore_eos: bool = False,
    sampling: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A /v1/chat/completions body; a str is one user message. `thinking` sets Qwen3's
    `chat_template_kwargs.enable_thinking`; `ignore_eos` (vLLM's own field) makes the server
    generate exactly `max_tokens`; `extra` is merged last."""
    if isinstance(messages, str):
        listed: list[dict[str, Any]] = [{"role": "user", "content": messages}]
    else:
        listed = [dict(m) for m in messages]
    body: dict[str, Any] = {"model": model, "messages": listed}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(sampling or {})
    if thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    if ignore_eos:
        body["ignore_eos"] = True
    _stream_fields(body, stream, include_usage)
    body.update(extra or {})
    return body


def completion_body(
    model: str,
    prompt: str,
    *,
    max_tokens: int | None = None,
    stream: bool = False,
    include_usage: bool = True,
    ignore_eos: bool = False,
    sampling: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A /v1/completions body (a raw prompt, no chat template)."""
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body.update(sampling or {})
    if ignore_eos:
        body["ignore_eos"] = True
    _stream_fields(body, stream, include_usage)
    body.update(extra or {})
    return body


# --- the SSE stream --------------------------------------------------------------------------


class StreamError(ValueError):
    """A stream that is not the OpenAI SSE format (a chunk that is not a JSON object)."""


def iter_sse_data(lines: Iterable[bytes | str]) -> Iterator[str]:
    """The data of each SSE event, one per `data:` line as vLLM sends them, `[DONE]` included;
    comments, `event:`/`id:` fields and blank separators are skipped."""
    for raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if line.startswith("data:"):
            yield line[5:].strip()


class ChunkStream:
    """The JSON chunks of a streamed completion, up to `[DONE]`; after iterating, `done` says
    whether `[DONE]` came (a stream cut short ends without it) and `events` counts the chunks.
    A chunk that is not a JSON object raises StreamError."""

    def __init__(self, lines: Iterable[bytes | str]) -> None:
        self._data = iter_sse_data(lines)
        self.done = False
        self.events = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for data in self._data:
            if data == DONE:
                self.done = True
                return
            self.events += 1
            try:
                chunk = json.loads(data)
            except ValueError:
                raise StreamError(f"chunk {self.events} is not JSON: {data[:80]!r}") from None
            if not isinstance(chunk, dict):
                raise StreamError(f"chunk {self.events} is not a JSON object")
            yield chunk


def _first_choice(chunk: Mapping[str, Any]) -> dict[str, Any] | None:
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def delta_parts(chunk: Mapping[str, Any]) -> tuple[str, str]:
    """(answer text, reasoning text) of a chunk's first choice. vLLM >= 0.23 streams reasoning
    as `delta.reasoning`, older servers as `delta.reasoning_content`; completions stream `text`."""
    choice = _first_choice(chunk)
    if choice is None:
        return "", ""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        text = choice.get("text")
        return (text if isinstance(text, str) else ""), ""
    content = delta.get("content") or ""
    reasoning = delta.get("reasoning") or delta.get("reasoning_content") or ""
    return str(content), str(reasoning)


def delta_text(chunk: Mapping[str, Any]) -> str:
    """The new text of a chunk, answer or reasoning (a token of either kind counts)."""
    content, reasoning = delta_parts(chunk)
    return content or reasoning


def finish_reason(chunk: Mapping[str, Any]) -> str | None:
    choice = _first_choice(chunk)
    reason = choice.get("finish_reason") if choice is not None else None
    return reason if isinstance(reason, str) else None


def chunk_usage(chunk: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `usage` object (the last chunk with `stream_options.include_usage`), or None."""
    usage = chunk.get("usage")
    return usage if isinstance(usage, dict) else None


def chunk_error(chunk: Mapping[str, Any]) -> str | None:
    """The message of an error sent inside the stream (vLLM does when generation fails)."""
    if "error" not in chunk:
        return None
    return _message(chunk["error"]) or "error"


# --- error bodies and the model list ---------------------------------------------------------


def _one_line(text: str, limit: int) -> str:
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _message(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        return str(message) if message else json.dumps(error)
    return "" if error is None else str(error)


def error_text(
    body: bytes | str, *, content_type: str = "", reason: str = "", limit: int = ERROR_TEXT_LIMIT
) -> str:
    """One line of at most `limit` characters saying what an error body says. vLLM sends
    {"error": "Unauthorized"}, {"error": {"message": ...}} or {"object": "error", "message": ...};
    a proxy may send an HTML page, of which only its title is kept; `reason` (the HTTP reason
    phrase) stands in for an empty body."""
    raw = body if isinstance(body, bytes) else body.encode("utf-8", "replace")
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return _one_line(reason, limit)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    else:
        if isinstance(data, dict):
            if data.get("error"):
                return _one_line(_message(data["error"]), limit)
            if "message" in data:
                return _one_line(str(data["message"]), limit)
            if "detail" in data:  # FastAPI's shape
                return _one_line(_message(data["detail"]), limit)
        return _one_line(json.dumps(data), limit)
    if "html" in content_type.lower() or text[:1] == "<":
        title = _TITLE.search(raw)
        if title is not None:
            return _one_line(html.unescape(title.group(1).decode("utf-8", "replace")), limit)
        return _one_line(reason or "an HTML page", limit)
    return _one_line(text, limit)


def model_ids(data: Any) -> list[str]:
    """The ids in a /v1/models answer ({"object": "list", "data": [{"id": ...}, ...]})."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return []
    return [str(m["id"]) for m in data["data"] if isinstance(m, dict) and "id" in m]

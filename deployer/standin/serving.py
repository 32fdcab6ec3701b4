"""The generating endpoints: /v1/chat/completions and /v1/completions, streamed or not.

Like vLLM's serving_chat.py and serving_completion.py: validate the request (protocol), make
its tokens (generation), run them through the engine at its pace, and write one response or
SSE chunks (responses).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from . import process, responses, tokenizer
from .engine import ClientGone, Engine
from .generation import (
    Generation,
    chat_prompt_text,
    chat_prompt_tokens,
    count_tokens,
    generate_chat,
    generate_completion,
    message_text,
)
from .protocol import (
    _int_field,
    chat_messages,
    check_model,
    check_sampling,
    completion_prompt,
    include_usage,
    max_tokens,
    prompt_token_ids,
    stop_conditions,
)


class Responder(Protocol):
    """What the HTTP handler offers a serving function."""

    close_connection: bool

    def json(self, status: int, payload: Any) -> None: ...

    def start_stream(self) -> None: ...

    def event(self, payload: Any) -> None: ...

    def end_stream(self) -> None: ...

    def client_gone(self) -> bool: ...


class StreamCut(Exception):
    """broken_stream: stop sending in the middle of a stream."""


def _reasoning_details(engine: Engine, reasoning_tokens: int) -> dict[str, int] | None:
    """usage.completion_tokens_details: only a server with a reasoning parser counts."""
    if not engine.settings.args.reasoning_parser:
        return None
    return {"reasoning_tokens": reasoning_tokens}


def _after_chat(engine: Engine) -> None:
    """die_after: the engine dies once it has answered that many chat requests."""
    faults = engine.settings.faults
    if "die_after" not in faults:
        return
    with engine.cv:
        engine.chat_served += 1
        served = engine.chat_served
    if served >= int(faults["die_after"] or 1):
        process.die_after_requests(served)


def _run(
    engine: Engine,
    out: Responder,
    request_id: str,
    prompt_tokens: int,
    generation: Generation,
    emit: Callable[[int], None],
) -> bool:
    """Run the request in the engine; False when the client went away (the engine aborted it
    and nothing more is written)."""
    try:
        engine.run(request_id, prompt_tokens, generation, emit, out.client_gone)
    except (ClientGone, BrokenPipeError, ConnectionResetError):
        out.close_connection = True
        return False
    return True


def chat(engine: Engine, body: dict[str, Any], out: Responder) -> None:
    """POST /v1/chat/completions."""
    settings = engine.settings
    messages = chat_messages(body)
    check_sampling(body)
    check_model(body, settings.served_names)
    prompt_tokens = chat_prompt_tokens(messages)
    limit = max_tokens(
        body,
        prompt_tokens,
        chat=True,
        max_model_len=settings.max_model_len,
        default=settings.default_sampling.get("max_tokens"),
    )
    kwargs = dict(settings.default_chat_template_kwargs)
    if isinstance(body.get("chat_template_kwargs"), dict):
        kwargs.update(body["chat_template_kwargs"])
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last_user = message_text(users[-1]) if users else ""
    enable_thinking = bool(kwargs.get("enable_thinking", True))
    generation = generate_chat(
        last_user,
        max_tokens=limit,
        thinking=enable_thinking and "/no_think" not in last_user,
        reasoning_parser=settings.args.reasoning_parser in ("qwen3", "deepseek_r1"),
        thinking_tokens=settings.thinking_tokens,
        answer_tokens=settings.answer_tokens,
        stop=stop_conditions(body, limit),
    )
    prompt_text = (
        chat_prompt_text(messages, enable_thinking)
        if body.get("return_prompt_text") is True
        else None
    )
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = settings.served_names[0]
    if body.get("stream"):
        _chat_stream(
            engine, out, body, request_id, created, model, prompt_tokens, prompt_text, generation
        )
    else:
        n = max(1, _int_field(body, "n") or 1)
        if not _run(engine, out, request_id, prompt_tokens, generation, lambda i: None):
            return
        content = generation.text("content")
        if "empty_content" in settings.faults:
            content = ""
        choices = [
            responses.chat_choice(
                i,
                content,
                generation.text("reasoning"),
                generation.finish_reason,
                generation.stop_reason,
            )
            for i in range(n)
        ]
        usage = responses.usage_info(
            prompt_tokens,
            generation.completion_tokens * n,
            _reasoning_details(engine, generation.reasoning_tokens() * n),
        )
        out.json(
            200,
            responses.chat_response(
                request_id, created, model, choices, usage, settings.fingerprint, prompt_text
            ),
        )
    _after_chat(engine)


def _chat_stream(
    engine: Engine,
    out: Responder,
    body: dict[str, Any],
    request_id: str,
    created: int,
    model: str,
    prompt_tokens: int,
    prompt_text: str | None,
    generation: Generation,
) -> None:
    settings = engine.settings
    final_usage, continuous_usage = include_usage(
        body.get("stream_options"), bool(settings.args.enable_force_include_usage)
    )
    cut = generation.completion_tokens // 2 if "broken_stream" in settings.faults else -1

    def running_usage(tokens: int) -> dict[str, Any] | None:
        if not continuous_usage:
            return None
        details = _reasoning_details(engine, generation.reasoning_tokens(tokens))
        return responses.stream_usage(prompt_tokens, tokens, details)

    def token_chunk(delta: dict[str, Any], tokens: int, finish: str | None) -> None:
        fingerprint = settings.fingerprint if finish and not final_usage else None
        out.event(
            responses.chat_token_chunk(
                request_id,
                created,
                model,
                delta,
                finish,
                generation.stop_reason if finish else None,
                running_usage(tokens),
                fingerprint,
            )
        )

    role_sent = False

    def role_chunk() -> None:
        # serving_chat.py sends the role with the first engine output (the first token).
        nonlocal role_sent
        role_sent = True
        out.event(
            responses.chat_role_chunk(request_id, created, model, running_usage(0), prompt_text)
        )

    out.start_stream()
    last = generation.completion_tokens - 1

    def emit(i: int) -> None:
        if not role_sent:
            role_chunk()
        if i == cut:
            raise StreamCut
        piece = generation.pieces[i]
        finish = generation.finish_reason if i == last else None
        if piece.text or finish:
            token_chunk({piece.channel: piece.text} if piece.text else {}, i + 1, finish)

    try:
        if not _run(engine, out, request_id, prompt_tokens, generation, emit):
            return
    except StreamCut:
        out.end_stream()
        out.close_connection = True
        return
    if not role_sent:
        role_chunk()
    if generation.completion_tokens == 0:
        token_chunk({}, 0, generation.finish_reason)
    if final_usage:
        usage = responses.usage_info(
            prompt_tokens,
            generation.completion_tokens,
            _reasoning_details(engine, generation.reasoning_tokens()),
        )
        out.event(
            responses.usage_chunk(
                request_id, "chat.completion.chunk", created, model, usage, settings.fingerprint
            )
        )
    out.event("[DONE]")
    out.end_stream()


def completions(engine: Engine, body: dict[str, Any], out: Responder) -> None:
    """POST /v1/completions."""
    settings = engine.settings
    prompt = completion_prompt(body)
    token_ids = prompt_token_ids(body)
    if token_ids is not None:  # the words behind the ids this stand-in handed out
        prompt = tokenizer.decode(token_ids)
    check_sampling(body)
    check_model(body, settings.served_names)
    prompt_tokens = len(token_ids) if token_ids is not None else count_tokens(prompt)
    limit = max_tokens(
        body,
        prompt_tokens,
        chat=False,
        max_model_len=settings.max_model_len,
        default=settings.default_sampling.get("max_tokens"),
    )
    if body.get("max_tokens") is None:
        limit = min(limit, 16)  # CompletionRequest.max_tokens defaults to 16
    generation = generate_completion(
        prompt,
        max_tokens=limit,
        answer_tokens=settings.answer_tokens,
        stop=stop_conditions(body, limit),
    )
    request_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = settings.served_names[0]
    if not body.get("stream"):
        if not _run(engine, out, request_id, prompt_tokens, generation, lambda i: None):
            return
        usage = responses.usage_info(prompt_tokens, generation.completion_tokens, None)
        out.json(
            200,
            responses.completion_response(
                request_id,
                created,
                model,
                generation.text("content") or "",
                generation.finish_reason,
                generation.stop_reason,
                usage,
                settings.fingerprint,
            ),
        )
        return
    final_usage, continuous_usage = include_usage(
        body.get("stream_options"), bool(settings.args.enable_force_include_usage)
    )
    last = generation.completion_tokens - 1
    out.start_stream()

    def emit(i: int) -> None:
        finish = generation.finish_reason if i == last else None
        usage = (
            responses.completion_stream_usage(prompt_tokens, i + 1) if continuous_usage else None
        )
        fingerprint = settings.fingerprint if finish and not final_usage else None
        out.event(
            responses.completion_chunk(
                request_id,
                created,
                model,
                generation.pieces[i].text,
                finish,
                generation.stop_reason if finish else None,
                usage,
                fingerprint,
            )
        )

    if not _run(engine, out, request_id, prompt_tokens, generation, emit):
        return
    if final_usage:
        usage = responses.usage_info(prompt_tokens, generation.completion_tokens, None)
        out.event(
            responses.usage_chunk(
                request_id, "text_completion", created, model, usage, settings.fingerprint
            )
        )
    out.event("[DONE]")
    out.end_stream()

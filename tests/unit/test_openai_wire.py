"""The OpenAI wire format: bodies, SSE chunks, error text, model lists (pure, real inputs)."""

from __future__ import annotations

import json

import pytest

from deployer.openai_wire import (
    DONE,
    ChunkStream,
    StreamError,
    auth_headers,
    chat_body,
    chunk_error,
    chunk_usage,
    completion_body,
    delta_parts,
    delta_text,
    error_text,
    finish_reason,
    iter_sse_data,
    model_ids,
)


def sse(*events: object) -> list[bytes]:
    """An SSE body as requests' iter_lines yields it: data lines and blank separators."""
    lines: list[bytes] = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        lines += [f"data: {data}".encode(), b""]
    return lines


def test_auth_headers() -> None:
    assert auth_headers("k-1") == {"Authorization": "Bearer k-1"}
    assert auth_headers("") == {}
    assert auth_headers(None) == {}


def test_chat_body_streamed_with_usage_thinking_and_ignore_eos() -> None:
    body = chat_body(
        "qwen3-mini",
        "hi",
        max_tokens=64,
        stream=True,
        thinking=False,
        ignore_eos=True,
        sampling={"temperature": 0.7},
        extra={"min_tokens": 8},
    )
    assert body == {
        "model": "qwen3-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "temperature": 0.7,
        "chat_template_kwargs": {"enable_thinking": False},
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "min_tokens": 8,
    }


def test_chat_body_plain_keeps_messages_and_adds_nothing() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert chat_body("m", messages) == {"model": "m", "messages": messages}


def test_completion_body() -> None:
    body = completion_body("m", "once upon", max_tokens=5, stream=True, include_usage=False)
    assert body == {"model": "m", "prompt": "once upon", "max_tokens": 5, "stream": True}


def test_iter_sse_data_skips_comments_and_fields() -> None:
    lines = [": ping", "event: x", "id: 3", "data: {}", "", "data:[DONE]"]
    assert list(iter_sse_data(lines)) == ["{}", DONE]


def test_chunk_stream_reads_up_to_done() -> None:
    stream = ChunkStream(sse({"a": 1}, {"b": 2}, DONE, {"after": 3}))
    assert list(stream) == [{"a": 1}, {"b": 2}]
    assert stream.done and stream.events == 2


def test_chunk_stream_cut_short_is_not_done() -> None:
    stream = ChunkStream(sse({"a": 1}))
    assert list(stream) == [{"a": 1}]
    assert not stream.done


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]"])
def test_chunk_stream_rejects_non_objects(bad: str) -> None:
    with pytest.raises(StreamError, match="chunk 1"):
        list(ChunkStream(sse(bad)))


def test_delta_parts_content_reasoning_and_completion_text() -> None:
    def chunk(delta: object) -> dict[str, object]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

    assert delta_parts(chunk({"content": "hi"})) == ("hi", "")
    assert delta_parts(chunk({"reasoning": "hm"})) == ("", "hm")
    assert delta_parts(chunk({"reasoning_content": "old"})) == ("", "old")
    assert delta_parts(chunk({"role": "assistant", "content": ""})) == ("", "")
    assert delta_parts({"choices": [{"text": "tok"}]}) == ("tok", "")
    assert delta_parts({"choices": []}) == ("", "")
    assert delta_text(chunk({"reasoning": "hm"})) == "hm"


def test_finish_usage_and_error_of_chunks() -> None:
    last = {"choices": [{"delta": {}, "finish_reason": "length"}]}
    assert finish_reason(last) == "length"
    assert finish_reason({"choices": [{"delta": {}}]}) is None
    assert chunk_usage({"choices": [], "usage": {"completion_tokens": 4}}) == {
        "completion_tokens": 4
    }
    assert chunk_usage(last) is None
    assert chunk_error({"error": {"message": "boom", "code": 500}}) == "boom"
    assert chunk_error({"error": "bad"}) == "bad"
    assert chunk_error(last) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": "Unauthorized"}', "Unauthorized"),
        (b'{"error": {"message": "model not found", "code": 404}}', "model not found"),
        (
            b'{"object": "error", "message": "max_tokens too large", "code": 400}',
            "max_tokens too large",
        ),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b"plain text\nover lines", "plain text over lines"),
        (b"[1, 2]", "[1, 2]"),
    ],
)
def test_error_text_shapes(body: bytes, expected: str) -> None:
    assert error_text(body) == expected


def test_error_text_of_an_html_page_is_its_title_on_one_line() -> None:
    page = b"<html><head><title>502 Bad\n Gateway</title></head><body>" + b"x" * 5000 + b"</body>"
    assert error_text(page, content_type="text/html") == "502 Bad Gateway"
    assert error_text(b"<html><body>oops</body></html>", reason="Bad Gateway") == "Bad Gateway"


def test_error_text_bounded_and_empty_body_uses_reason() -> None:
    long = error_text(json.dumps({"error": "e" * 1000}), limit=50)
    assert len(long) == 50 and long.endswith("…")
    assert error_text(b"", reason="Service Unavailable") == "Service Unavailable"
    assert error_text("  ") == ""


def test_model_ids() -> None:
    data = {"object": "list", "data": [{"id": "a", "object": "model"}, {"id": "b"}, {"x": 1}]}
    assert model_ids(data) == ["a", "b"]
    assert model_ids({"data": "no"}) == []
    assert model_ids([]) == []

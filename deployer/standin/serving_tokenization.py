"""POST /tokenize and /detokenize with vLLM's request and response shapes
(vllm/entrypoints/serve/tokenize/protocol.py): the gateway counts prompt tokens with them."""

from __future__ import annotations

from typing import Any

from . import tokenizer
from .engine import Engine
from .protocol import RequestError, _bool_field, check_model, validation_error
from .serving import Responder


def tokenize(engine: Engine, body: dict[str, Any], out: Responder) -> None:
    """TokenizeCompletionRequest (`prompt`) or TokenizeChatRequest (`messages`)."""
    settings = engine.settings
    check_model(body, settings.served_names)
    if "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list):
            error = {
                "type": "list_type",
                "loc": "body.messages",
                "msg": "Input should be a valid list",
                "input": messages,
            }
            raise validation_error([error], "body.messages")
        add_generation_prompt = _bool_field(body, "add_generation_prompt")
        continue_final = bool(_bool_field(body, "continue_final_message"))
        if continue_final and add_generation_prompt:
            raise RequestError(
                400,
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                "BadRequestError",
            )
        tokens = tokenizer.chat_tokens(
            messages, add_generation_prompt is not False and not continue_final, continue_final
        )
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            missing = prompt is None
            error = {
                "type": "missing" if missing else "string_type",
                "loc": "body.prompt",
                "msg": "Field required" if missing else "Input should be a valid string",
                "input": body if missing else prompt,
            }
            raise validation_error([error], "body.prompt")
        tokens = tokenizer.prompt_tokens(prompt)
    out.json(
        200,
        {
            "count": len(tokens),
            "max_model_len": settings.max_model_len,
            "tokens": [tokenizer.token_id(t) for t in tokens],
            "token_strs": tokens if _bool_field(body, "return_token_strs") else None,
        },
    )


def detokenize(engine: Engine, body: dict[str, Any], out: Responder) -> None:
    """DetokenizeRequest: `tokens`, ids >= 0, each in the vocabulary."""
    check_model(body, engine.settings.served_names)
    ids = body.get("tokens")
    if not isinstance(ids, list):
        missing = ids is None
        error = {
            "type": "missing" if missing else "list_type",
            "loc": "body.tokens",
            "msg": "Field required" if missing else "Input should be a valid list",
            "input": body if missing else ids,
        }
        raise validation_error([error], "body.tokens")
    for i, ident in enumerate(ids):
        loc = f"body.tokens.{i}"
        if not isinstance(ident, int) or isinstance(ident, bool):
            error = {"type": "int_type", "loc": loc, "msg": "Input should be a valid integer"}
            raise validation_error([{**error, "input": ident}], loc)
        if ident < 0:
            error = {
                "type": "greater_than_equal",
                "loc": loc,
                "msg": "Input should be greater than or equal to 0",
                "input": ident,
                "ctx": {"ge": 0},
            }
            raise validation_error([error], loc)
        if ident >= tokenizer.VOCAB_SIZE:
            raise RequestError(
                400, f"Token id {ident} is out of vocabulary", "BadRequestError", "tokens"
            )
    out.json(200, {"prompt": tokenizer.decode(ids)})

"""Request validation as vLLM's pydantic models and handlers answer it (400s and their text)."""

from __future__ import annotations

import json
import re
from typing import Any

from .generation import StopConditions


class RequestError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, err_type: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = {
            "error": {"message": message, "type": err_type, "param": param, "code": status}
        }


MAX_ERROR_INPUT_CHARS = 200  # serve/exception_handling/handlers/validation.py


MAX_ERROR_CHARS = 1000


def summarize_error_input(value: Any) -> str:
    """A validation error's `input` as vLLM echoes it: containers by size, the rest as text."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{type(value).__name__} of {len(value)} bytes>"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_ERROR_INPUT_CHARS:
        return text[:MAX_ERROR_INPUT_CHARS] + "...[truncated]"
    return text


def sanitize_message(message: str) -> str:
    """vLLM's scrub of error messages: no memory addresses, tracebacks or file paths."""
    message = re.sub(r" at 0x[0-9a-fA-F]+>", ">", message)
    message = re.sub(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?', "", message)
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message)
    return message.strip()


def _format_error(error: Any) -> str:
    if isinstance(error, dict) and "input" in error:
        error = {**error, "input": summarize_error_input(error["input"])}
    text = str(error)
    return text[:MAX_ERROR_CHARS] + "...[truncated]" if len(text) > MAX_ERROR_CHARS else text


def validation_error(errors: list[Any], param: str | None) -> RequestError:
    """FastAPI RequestValidationError as vLLM renders it (400, type "Bad Request")."""
    label = "error" if len(errors) == 1 else "errors"
    message = f"{len(errors)} validation {label}:\n"
    message += "".join(f"  {_format_error(e)}\n" for e in errors)
    return RequestError(400, sanitize_message(message), "Bad Request", param)


def field_error(key: str, kind: str, msg: str, value: Any) -> RequestError:
    """One pydantic error on body field `key`."""
    error = {"type": kind, "loc": f"body.{key}", "msg": msg, "input": value}
    return validation_error([error], f"body.{key}")


_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")


_FLOAT_TEXT = re.compile(
    r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.I
)


def _int_field(body: dict[str, Any], key: str) -> int | None:
    """An optional int field with pydantic's lax coercion (true, 5.0 and "5" are accepted)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, int):  # bool included: pydantic takes true as 1
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        msg = "Input should be a valid integer, got a number with a fractional part"
        raise field_error(key, "int_from_float", msg, value)
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            return int(text.split(".", 1)[0])
        msg = "Input should be a valid integer, unable to parse string as an integer"
        raise field_error(key, "int_parsing", msg, value)
    raise field_error(key, "int_type", "Input should be a valid integer", value)


def _float_field(body: dict[str, Any], key: str) -> float | None:
    """An optional float field with pydantic's lax coercion (true and "0.5" are accepted)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value.strip())
    if isinstance(value, str):
        msg = "Input should be a valid number, unable to parse string as a number"
        raise field_error(key, "float_parsing", msg, value)
    raise field_error(key, "float_type", "Input should be a valid number", value)


def include_usage(options: Any, force: bool) -> tuple[bool, bool]:
    """(usage chunk at the end, usage on every chunk): serve/utils/api_utils.py."""
    if force:
        return True, True
    if not isinstance(options, dict):
        return False, False
    usage = bool(options.get("include_usage"))
    return usage, usage and bool(options.get("continuous_usage_stats"))


def parse_body(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object of a POST body, or vLLM's 400 for another media type or bad JSON."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise validation_error(["Unsupported Media Type: Only 'application/json' is allowed"], None)
    try:
        body = json.loads(raw.decode("utf-8") if raw else "")
    except (ValueError, UnicodeDecodeError) as exc:
        msg = getattr(exc, "msg", "Invalid UTF-8")
        pos = getattr(exc, "pos", 0)
        raise validation_error(
            [
                {
                    "type": "json_invalid",
                    "loc": f"body.{pos}",
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": msg},
                }
            ],
            f"body.{pos}",
        ) from None
    if not isinstance(body, dict):
        raise validation_error(
            [
                {
                    "type": "model_attributes_type",
                    "loc": "body",
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": body,
                }
            ],
            "body",
        )
    return body


def check_model(body: dict[str, Any], names: list[str]) -> None:
    """A request for a model this server does not serve is a 404 naming the aliases."""
    model = body.get("model")
    if model and model not in names:
        raise RequestError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {', '.join(names)}.",
            "NotFoundError",
            "model",
        )


def max_tokens(
    body: dict[str, Any],
    prompt_tokens: int,
    *,
    chat: bool,
    max_model_len: int,
    default: int | None,
) -> int:
    """vLLM 0.33.0's checks (renderers/params.py, v1/engine/input_processor.py) and clamp
    (serve/utils/api_utils.py::get_max_tokens)."""
    param = "max_tokens"
    requested = _int_field(body, "max_tokens")
    if chat and body.get("max_completion_tokens") is not None:
        param, requested = "max_completion_tokens", _int_field(body, "max_completion_tokens")
    if requested is not None and requested > max_model_len:
        raise RequestError(
            400,
            f"{param}={requested} cannot be greater than max_model_len={max_model_len}. "
            f"Please request fewer output tokens. (parameter={param}, value={requested})",
            "BadRequestError",
            param,
        )
    if requested is not None and requested < 1:  # SamplingParams._verify_args
        raise RequestError(
            400,
            f"max_tokens must be at least 1, got {requested}. "
            f"(parameter=max_tokens, value={requested})",
            "BadRequestError",
            "max_tokens",
        )
    if prompt_tokens > max_model_len:
        raise RequestError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {prompt_tokens} input tokens, which exceeds this limit even "
            "without any output tokens. Please reduce the length of the input prompt. "
            f"(parameter=input_tokens, value={prompt_tokens})",
            "BadRequestError",
            "input_tokens",
        )
    if prompt_tokens == max_model_len:
        raise RequestError(
            400,
            f"The decoder prompt (length {prompt_tokens}) plus the number of requested "
            f"output tokens (at least 1) is longer than the maximum model length of "
            f"{max_model_len}. Make sure that `max_model_len` is no smaller than the number "
            "of text tokens (prompt + requested output tokens).",
            "BadRequestError",
        )
    limits = [max_model_len - prompt_tokens, requested, default]
    return min(v for v in limits if v is not None)


def check_sampling(body: dict[str, Any]) -> None:
    """Accept the usual sampling parameters (their effect is not simulated)."""
    for key in (
        "temperature",
        "top_p",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
    ):
        _float_field(body, key)
    _int_field(body, "top_k")
    _int_field(body, "n")
    _int_field(body, "seed")


def chat_messages(body: dict[str, Any]) -> list[Any]:
    """/v1/chat/completions' `messages` (a list), or pydantic's error."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        missing = messages is None
        raise validation_error(
            [
                {
                    "type": "missing" if missing else "list_type",
                    "loc": "body.messages",
                    "msg": "Field required" if missing else "Input should be a valid list",
                    "input": body if missing else messages,
                }
            ],
            "body.messages",
        )
    return messages


def completion_prompt(body: dict[str, Any]) -> str:
    """The text of /v1/completions' `prompt` (a string or a list of strings)."""
    prompt = body.get("prompt")
    if prompt is None or prompt == "":  # CompletionRequest.validate_prompt_and_prompt_embeds
        raise RequestError(
            400,
            "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
            "BadRequestError",
            "prompt",
        )
    if prompt == []:
        raise RequestError(
            400,
            "You must pass at least one prompt (parameter=prompt)",
            "BadRequestError",
            "prompt",
        )
    if isinstance(prompt, list):
        return " ".join(str(p) for p in prompt if isinstance(p, str))
    if not isinstance(prompt, str):
        # One error per branch of list[int] | list[list[int]] | str | list[str].
        list_type = {
            "type": "list_type",
            "loc": "body.prompt",
            "msg": "Input should be a valid list",
            "input": prompt,
        }
        string_type = {**list_type, "type": "string_type", "msg": "Input should be a valid string"}
        raise validation_error([list_type, list_type, string_type, list_type], "body.prompt")
    return prompt


def prompt_token_ids(body: dict[str, Any]) -> list[int] | None:
    """/v1/completions' `prompt` when it is one list of token ids (as benchmarks send it)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        return prompt
    return None


_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n"}


def _bool_field(body: dict[str, Any], key: str) -> bool | None:
    """An optional bool field with pydantic's lax coercion (1, "true", "yes" are accepted)."""
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, (str, int, float)):
        msg = "Input should be a valid boolean, unable to interpret input"
        raise field_error(key, "bool_parsing", msg, value)
    raise field_error(key, "bool_type", "Input should be a valid boolean", value)


def _stop_strings(body: dict[str, Any]) -> tuple[str, ...]:
    """`stop`: str | list[str] | None, as SamplingParams keeps it (a list of strings)."""
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        string_type = {
            "type": "string_type",
            "loc": "body.stop.str",
            "msg": "Input should be a valid string",
            "input": stop,
        }
        list_type = {
            **string_type,
            "type": "list_type",
            "loc": "body.stop.list[str]",
            "msg": "Input should be a valid list",
        }
        raise validation_error([string_type, list_type], "body.stop")
    if any(s == "" for s in stop):
        raise RequestError(
            400, "stop cannot contain an empty string. (parameter=stop)", "BadRequestError", "stop"
        )
    return tuple(stop)


def stop_conditions(body: dict[str, Any], max_tokens: int) -> StopConditions:
    """ignore_eos, min_tokens, stop and include_stop_str_in_output, checked like
    SamplingParams._verify_args against the request's (clamped) max_tokens."""
    min_tokens = _int_field(body, "min_tokens") or 0
    if min_tokens < 0:
        raise RequestError(
            400,
            f"min_tokens must be greater than or equal to 0, got {min_tokens}. "
            f"(parameter=min_tokens, value={min_tokens})",
            "BadRequestError",
            "min_tokens",
        )
    if min_tokens > max_tokens:
        raise RequestError(
            400,
            f"min_tokens must be less than or equal to max_tokens={max_tokens}, got "
            f"{min_tokens}. (parameter=min_tokens, value={min_tokens})",
            "BadRequestError",
            "min_tokens",
        )
    return StopConditions(
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=bool(_bool_field(body, "ignore_eos")),
        stop=_stop_strings(body),
        include_stop_str_in_output=bool(_bool_field(body, "include_stop_str_in_output")),
    )

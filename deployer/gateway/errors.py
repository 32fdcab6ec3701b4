"""Errors the gateway answers with: OpenAI-shaped JSON carrying the request id."""

from __future__ import annotations

import json
from typing import Any

# vLLM's error types (serve/engine/protocol.py::ErrorResponse) by status.
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class ApiError(Exception):
    """An HTTP error answer; raised anywhere in a handler, rendered in one place."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        retry_after: int | None = None,
        tier: str | None = None,
        err_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.tier = tier
        self.err_type = err_type or ERROR_TYPES.get(status, "Error")

    def body(self, request_id: str) -> dict[str, Any]:
        return error_body(self.status, self.message, request_id, self.param, self.err_type)

    def headers(self, request_id: str) -> dict[str, str]:
        headers = {"x-request-id": request_id}
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        if self.tier:
            headers["x-qwen-deploy-tier"] = self.tier
        return headers


def error_body(
    status: int,
    message: str,
    request_id: str,
    param: str | None = None,
    err_type: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": err_type or ERROR_TYPES.get(status, "Error"),
            "param": param,
            "code": status,
            "request_id": request_id,
        }
    }


def with_request_id(data: bytes, request_id: str) -> bytes:
    """A tier's error answer (vLLM's {"error": {...}}) with the gateway's request id added, as
    the gateway's own errors carry it; any other body is passed on as it came."""
    try:
        doc = json.loads(data)
    except ValueError:
        return data
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), dict):
        return data
    doc["error"].setdefault("request_id", request_id)
    return json.dumps(doc, ensure_ascii=False).encode()


def stream_error_event(status: int, message: str, request_id: str) -> bytes:
    """What vLLM sends when a stream fails after it started: an error event, then [DONE]."""
    body = json.dumps(error_body(status, message, request_id))
    return f"data: {body}\n\ndata: [DONE]\n\n".encode()


def utf8_error(raw: bytes) -> ApiError | None:
    """400 naming the first byte that is not UTF-8, or None when the body decodes."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        return ApiError(
            400,
            f"the request body is not UTF-8: byte 0x{bad} at offset {exc.start} ({exc.reason}). "
            "A shell or terminal re-encoded the text (accents are the usual victims); save the "
            "JSON as a UTF-8 file and send it with `curl --data-binary @body.json`",
        )
    return None

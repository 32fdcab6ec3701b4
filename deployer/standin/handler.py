"""The HTTP handler: `vllm serve`'s routes, auth and error handling on http.server."""

from __future__ import annotations

import hashlib
import json
import select
import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from . import responses, serving
from . import serving_tokenization as tokenization
from .engine import Engine
from .logger import log, log_uvicorn
from .protocol import RequestError, parse_body
from .version import VLLM_VERSION

GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")  # serve/middleware/authenticate.py


class Handler(BaseHTTPRequestHandler):
    """The OpenAI-compatible API of `vllm serve`."""

    protocol_version = "HTTP/1.1"
    # Small writes (SSE chunks, short JSON) must not wait for delayed ACKs (Nagle): vLLM's
    # uvicorn sets TCP_NODELAY too.
    disable_nagle_algorithm = True
    server_version = "uvicorn"
    sys_version = ""
    engine: Engine  # set on the subclass made by api_server.main()
    _raw: bytes = b""
    _streaming = False

    # -- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def version_string(self) -> str:
        return "uvicorn"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        args = self.engine.settings.args
        if args.disable_uvicorn_access_log:
            return
        try:
            phrase = " " + self.responses[int(code)][0]
        except (KeyError, ValueError):
            phrase = ""
        client = f"{self.client_address[0]}:{self.client_address[1]}"
        log_uvicorn("info", f'{client} - "{self.requestline}" {code}{phrase}')

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def json(self, status: int, payload: Any) -> None:
        """A JSON response."""
        self._send(status, json.dumps(payload).encode(), "application/json")

    def start_stream(self) -> None:
        """Headers of an SSE response (chunked, like uvicorn's StreamingResponse)."""
        self._streaming = True
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def event(self, payload: Any) -> None:
        """One SSE `data:` event (a JSON object, or a string such as [DONE])."""
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(f"data: {text}\n\n".encode())

    def end_stream(self) -> None:
        """The last (empty) chunk of the chunked body."""
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def client_gone(self) -> bool:
        """True when the client closed the connection (it sends nothing while it waits)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _body(self) -> dict[str, Any]:
        return parse_body(self._raw, self.headers.get("content-type"))

    def _authorized(self) -> bool:
        settings = self.engine.settings
        if not settings.api_keys or "no_auth" in settings.faults:
            return True
        path = self.path.split("?", 1)[0]
        if not path.startswith(GUARDED_PREFIXES):
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        return any(hashlib.sha256(k.encode()).digest() == digest for k in settings.api_keys)

    # -- routing ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_OPTIONS(self) -> None:
        self._send(200, b"", "text/plain")

    def _route(self, method: str) -> None:
        # Read the whole body first, whatever the answer: on a kept-alive connection unread
        # bytes would be taken for the next request.
        length = int(self.headers.get("content-length") or 0)
        self._raw = self.rfile.read(length) if length > 0 else b""
        self._streaming = False
        path = self.path.split("?", 1)[0]
        engine = self.engine
        routes: dict[str, dict[str, Callable[[], None]]] = {
            "/health": {"GET": self._health},
            "/ping": {"GET": self._health, "POST": self._health},
            "/version": {"GET": lambda: self.json(200, {"version": VLLM_VERSION})},
            "/metrics": {"GET": self._metrics},
            "/load": {"GET": lambda: self.json(200, {"server_load": engine.running})},
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": lambda: serving.chat(engine, self._body(), self)},
            "/v1/completions": {"POST": lambda: serving.completions(engine, self._body(), self)},
            "/tokenize": {"POST": lambda: tokenization.tokenize(engine, self._body(), self)},
            "/detokenize": {"POST": lambda: tokenization.detokenize(engine, self._body(), self)},
        }
        try:
            if not self._authorized():
                self.json(401, {"error": "Unauthorized"})
                return
            if path.startswith("/v1") and not engine.healthy:
                raise RequestError(503, "The engine is not ready.", "ServiceUnavailableError")
            handlers = routes.get(path)
            if handlers is None:
                self.json(404, {"detail": "Not Found"})
            elif method not in handlers:
                self.json(405, {"detail": "Method Not Allowed"})
            else:
                handlers[method]()
        except RequestError as exc:
            self.json(exc.status, exc.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a stand-in bug: answer like vLLM's fallback handler
            log("ERROR", "exception.py:40", f"Error in {method} {path}: {exc!r}")
            self.close_connection = True
            if not self._streaming:
                error = RequestError(500, str(exc), "InternalServerError")
                self.json(500, error.body)

    def _health(self) -> None:
        self._send(200 if self.engine.healthy else 503, b"", "application/json")

    def _metrics(self) -> None:
        self._send(200, self.engine.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _models(self) -> None:
        settings = self.engine.settings
        names = settings.served_names
        if "wrong_model" in settings.faults:
            names = [settings.faults["wrong_model"] or "wrong-model"]
        self.json(200, responses.model_list(names, settings.args.model, settings.max_model_len))

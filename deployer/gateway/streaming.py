"""Stream relay: chunks go to the client as they come, usage is read on the way, idle streams
get keep-alive comments, an idle gap or a broken tier ends the stream with an error event in
vLLM's shape, and a client that leaves closes the upstream request at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from deployer.gateway.errors import stream_error_event
from deployer.gateway.wire import Response as UpstreamResponse
from deployer.gateway.wire import UpstreamError

T = TypeVar("T")
KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {
    "cache-control": "no-cache, no-transform",
    "x-accel-buffering": "no",  # nginx and friends: do not buffer this response
}


class ClientGone(Exception):
    """The client closed its connection before the answer was complete."""


class Tap(Protocol):
    """Sees the tier's bytes and decides what the client gets."""

    usage: dict[str, Any] | None

    def feed(self, data: bytes) -> bytes: ...

    def end(self, error: tuple[int, str] | None) -> bytes: ...


class OpenAITap:
    """Pass-through of vLLM's SSE; complete events only, the usage chunk read (and dropped
    when the gateway asked for it on the client's behalf)."""

    def __init__(self, strip_usage: bool, request_id: str, tier: str) -> None:
        self.strip_usage = strip_usage
        self.request_id = request_id
        self.tier = tier
        self.buf = b""
        self.usage: dict[str, Any] | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self.buf + data if self.buf else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:  # half an event: nobody can use it yet
            self.buf = buf
            return b""
        out, self.buf = buf[: cut + 2], buf[cut + 2 :]
        if b'"usage"' in out:
            out = self._usage(out)
        if b"data: [DONE]" in out:
            self.done = True
        return out

    def _usage(self, out: bytes) -> bytes:
        kept = []
        for event in out.split(b"\n\n"):
            if b'"usage"' in event and event.startswith(b"data: {"):
                try:
                    payload = json.loads(event[6:])
                except ValueError:
                    payload = None
                if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
                    self.usage = payload["usage"]
                    if self.strip_usage and payload.get("choices") == []:
                        continue
            kept.append(event)
        return b"\n\n".join(kept)

    def end(self, error: tuple[int, str] | None) -> bytes:
        if error is None and not self.done:
            error = (502, f"tier {self.tier} ended the stream before [DONE]: the answer is cut")
        return stream_error_event(*error, self.request_id) if error else b""


class Seed004Tap:
    """vLLM's chat stream as seed 004's events: start, thinking, chunk, end, error."""

    def __init__(self, request_id: str, tier: str) -> None:
        self.request_id = request_id
        self.tier = tier
        self.buf = b""
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.started = False

    @staticmethod
    def event(kind: str, content: str) -> bytes:
        body = json.dumps({"type": kind, "content": content}, ensure_ascii=False)
        return f"data: {body}\n\n".encode()

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        *events, self.buf = self.buf.split(b"\n\n")
        out = [] if self.started else [self.event("start", "")]
        self.started = True
        for raw in events:
            if not raw.startswith(b"data: "):
                continue
            body = raw[6:].strip()
            if body == b"[DONE]":
                self.done = True
                out.append(self.event("end", ""))
                continue
            try:
                payload = json.loads(body)
            except ValueError:
                continue
            out += self._translate(payload)
        return b"".join(out)

    def _translate(self, payload: Any) -> list[bytes]:
        if not isinstance(payload, dict):
            return []
        if isinstance(payload.get("error"), dict):
            return [self.event("error", str(payload["error"].get("message")))]
        if isinstance(payload.get("usage"), dict):
            self.usage = payload["usage"]
        out = []
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            # vLLM >= 0.11 sends `reasoning`; older images sent `reasoning_content`.
            thought = delta.get("reasoning") or delta.get("reasoning_content")
            if thought:
                out.append(self.event("thinking", thought))
            if delta.get("content"):
                out.append(self.event("chunk", delta["content"]))
        return out

    def end(self, error: tuple[int, str] | None) -> bytes:
        if error is None and not self.done:
            error = (502, f"tier {self.tier} ended the stream before it was complete")
        if error is None:
            return b""
        start = b"" if self.started else self.event("start", "")
        return start + self.event("error", error[1])


Finish = Callable[[dict[str, Any] | None, str], None]


class RelayResponse(Response):
    """An SSE response fed from an open upstream stream (its first chunk already read)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        upstream: UpstreamResponse,
        first: bytes,
        chunks: AsyncIterator[bytes],
        tap: Tap,
        *,
        keepalive_s: float,
        idle_timeout_s: float,
        headers: dict[str, str],
        on_finish: Finish,
    ) -> None:
        super().__init__(status_code=200, headers={**SSE_HEADERS, **headers})
        # Response sized its empty body; a stream has no length (chunked encoding).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.upstream = upstream
        self.first = first
        self.chunks = chunks
        self.tap = tap
        self.keepalive_s = keepalive_s
        self.idle_timeout_s = idle_timeout_s
        self.on_finish = on_finish
        self.outcome = "ok"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        listen = asyncio.ensure_future(wait_disconnect(receive))
        try:
            await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
            if listen.done() and not pump.done():
                self.outcome = "disconnect"
        finally:
            for task in (pump, listen):
                task.cancel()
            await asyncio.gather(pump, listen, return_exceptions=True)
            await self.upstream.aclose()  # an unfinished stream: the tier sees the abort
            self.on_finish(self.tap.usage, self.outcome)

    async def _pump(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        last = [time.monotonic()]

        async def produce() -> None:
            try:
                async for chunk in self.chunks:
                    last[0] = time.monotonic()
                    queue.put_nowait(chunk)
                queue.put_nowait(None)
            except (UpstreamError, OSError) as exc:
                queue.put_nowait(exc)

        async def tick() -> None:
            while True:
                await asyncio.sleep(min(self.keepalive_s, self.idle_timeout_s))
                silent = time.monotonic() - last[0]
                if silent >= self.idle_timeout_s:
                    queue.put_nowait(TimeoutError(f"no chunk for {silent:.0f} s"))
                    return
                if silent >= self.keepalive_s:
                    queue.put_nowait(KEEPALIVE)

        producer = asyncio.ensure_future(produce())
        ticker = asyncio.ensure_future(tick())
        try:
            error = await self._relay(send, queue)
        finally:
            producer.cancel()
            ticker.cancel()
            await asyncio.gather(producer, ticker, return_exceptions=True)
        tail = self.tap.end(error)
        if tail:
            self.outcome = "error"
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _relay(
        self, send: Send, queue: asyncio.Queue[bytes | BaseException | None]
    ) -> tuple[int, str] | None:
        out = self.tap.feed(self.first)
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})
        while True:
            items = [await queue.get()]
            while not queue.empty():  # send what has piled up in one write
                items.append(queue.get_nowait())
            parts = []
            stop: tuple[int, str] | bool | None = False
            for item in items:
                if item is None:
                    stop = None
                    break
                if isinstance(item, BaseException):
                    stop = _stream_failure(item, self.tap)
                    break
                parts.append(KEEPALIVE if item is KEEPALIVE else self.tap.feed(item))
            body = b"".join(parts)
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if stop is not False:
                return stop  # type: ignore[return-value]


def _stream_failure(exc: BaseException, tap: Tap) -> tuple[int, str]:
    tier = getattr(tap, "tier", "?")
    if isinstance(exc, TimeoutError):
        return 504, f"tier {tier} stalled mid-stream: {exc}"
    return 502, f"tier {tier} failed mid-stream ({type(exc).__name__}: {exc or 'closed'})"


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """Run `work` unless the client leaves first; then cancel it (closing the upstream
    request, so the tier stops generating) and raise ClientGone."""
    task = asyncio.ensure_future(work)
    listen = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait({task, listen}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping: stop the work too
        task.cancel()
        raise
    finally:
        listen.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listen
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone()
    return task.result()

"""A small HTTP/1.1 client for the data path (completions to the tiers): asyncio streams and a
pool of kept-alive connections per tier. httpx's pool scans every connection per request and
parses chunks in pure Python; under 64 concurrent streams that was most of the gateway's CPU.
The tiers are vLLM (uvicorn) on loopback or the compose network: plain HTTP/1.1, nothing more.
Control calls (health, /tokenize, /wake_up) stay on httpx."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024
MAX_IDLE = 256


class UpstreamError(Exception):
    """The tier could not be reached, or broke the connection."""

    def __init__(self, message: str, connect: bool = False) -> None:
        super().__init__(message)
        self.connect = connect  # nothing was sent: safe to retry anywhere


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Response:
    """Status and headers read; the body is read by `read()` or `chunks()`, once."""

    def __init__(self, pool: Pool, conn: Connection, status: int, headers: dict[str, str]):
        self.pool = pool
        self.conn: Connection | None = conn
        self.status_code = status
        self.headers = headers
        self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = headers.get("content-length")
        self.length = int(length) if length and length.isdigit() else None
        self.keep_alive = headers.get("connection", "").lower() != "close"
        self.done = False

    async def read(self) -> bytes:
        parts = [part async for part in self.chunks()]
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self.conn
        if conn is None:
            return
        reader = conn.reader
        try:
            if self.chunked:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    size = int(line.split(b";", 1)[0], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass  # trailers
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self.length is not None:
                if self.length:
                    yield await reader.readexactly(self.length)
            else:
                self.keep_alive = False
                while data := await reader.read(65536):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError) as exc:
            self._drop()
            raise UpstreamError(f"the tier broke the connection ({type(exc).__name__})") from None
        self.done = True
        self._release()

    def _release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.give_back(conn, self.keep_alive and self.done)

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Done with it: an unread body closes the connection (the tier sees the abort)."""
        if self.done:
            self._release()
        else:
            self._drop()


class Pool:
    def __init__(self, base_url: str, headers: Mapping[str, str], connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.netloc = parts.netloc
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.connect_timeout_s = connect_timeout_s
        self.idle: list[Connection] = []

    async def _connect(self) -> Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=MAX_HEADER_BYTES),
                self.connect_timeout_s,
            )
        except asyncio.TimeoutError:
            raise UpstreamError("connect timed out", connect=True) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise UpstreamError(f"connection refused ({reason})", connect=True) from None
        return Connection(reader, writer)

    def give_back(self, conn: Connection, reusable: bool) -> None:
        if reusable and len(self.idle) < MAX_IDLE and not conn.writer.is_closing():
            conn.reused = True
            self.idle.append(conn)
        else:
            conn.close()

    async def request(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> Response:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.netloc}\r\n{self.headers}"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        while True:
            conn = self.idle.pop() if self.idle else await self._connect()
            try:
                conn.writer.write(head + body)
                await conn.writer.drain()
                status, response_headers = await _read_head(conn.reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                conn.close()
                if conn.reused:
                    continue  # the tier closed an idle connection: a fresh one
                raise UpstreamError("the tier closed the connection before answering") from None
            except BaseException:
                conn.close()
                raise
            return Response(self, conn, status, response_headers)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers

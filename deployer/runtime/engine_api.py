"""A small read-only client of the Docker Engine API on the standard library, for `status`.

The Docker SDK costs `status` most of its start-up (requests, urllib3 and some sixty modules of
its own), and so would http.client (it imports email and ssl): listing and inspecting containers
are GET requests, one HTTP/1.1 exchange each on a fresh connection to where DOCKER_HOST points,
as docker.from_env reads it. Hosts it does not speak (TLS, ssh, npipe) go through the SDK:
`engine_address` says None. Its errors become the DeployErrors the SDK's would
(deployer.runtime.engine_errors)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from deployer.errors import DeployError, DeployFailed, DockerUnavailable, StateError

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT_S = 120.0  # as the CLI's SDK client
MAX_RESPONSE_BYTES = 64 << 20  # a listing of thousands of containers is a few MiB


@dataclass(frozen=True)
class EngineAddress:
    """A unix socket's path, or a TCP host and port (plain HTTP)."""

    unix_socket: str = ""
    host: str = ""
    port: int = 0


class EngineApiError(Exception):
    """The engine answered with an HTTP error; `message` is its own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def engine_address(environ: Mapping[str, str]) -> EngineAddress | None:
    """Where the engine listens, read from DOCKER_HOST as the SDK's from_env reads it; None
    where only the SDK can go (TLS, ssh, npipe, or an address it would refuse itself)."""
    if environ.get("DOCKER_CERT_PATH") or environ.get("DOCKER_TLS_VERIFY"):
        return None  # the SDK turns TLS on for either
    host = (environ.get("DOCKER_HOST") or "").strip()
    if not host or host == "unix://":
        return EngineAddress(unix_socket=DEFAULT_SOCKET)
    parts = urlsplit(host)
    if parts.query or parts.fragment or parts.password:
        return None
    if parts.scheme in ("unix", "http+unix"):
        path = f"{parts.netloc}/{parts.path}" if parts.netloc else parts.path
        return EngineAddress(unix_socket=path.rstrip("/")) if path else None
    if parts.scheme in ("tcp", "http") and parts.hostname:
        try:
            port = parts.port or 0
        except ValueError:
            return None
        if port > 0 and parts.path in ("", "/"):
            return EngineAddress(host=parts.hostname, port=port)
    return None


class EngineApi:
    """GET requests to the engine: JSON in, JSON out; no version prefix (the engine's own)."""

    def __init__(self, address: EngineAddress, timeout: float = TIMEOUT_S) -> None:
        self.address = address
        self.timeout = timeout

    def ping(self) -> None:
        """Raise unless the engine answers /_ping."""
        self._request("/_ping")

    def list_containers(self, filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        """The summaries `docker ps -a --filter …` lists."""
        query = quote(json.dumps({k: list(v) for k, v in filters.items()}), safe="")
        found = json.loads(self._request(f"/containers/json?all=1&filters={query}"))
        return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        """What `docker inspect` prints for one container."""
        attrs = json.loads(self._request(f"/containers/{quote(container_id, safe='')}/json"))
        return attrs if isinstance(attrs, dict) else {}

    def container_attrs(self, filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        """Each listed container inspected, as the SDK's `containers.list` does (a container
        removed in between is an error there too)."""
        return [self.inspect_container(str(c.get("Id", ""))) for c in self.list_containers(filters)]

    def _connect(self) -> socket.socket:
        if self.address.unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.address.unix_socket)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection((self.address.host, self.address.port), self.timeout)

    def _request(self, path: str) -> bytes:
        """The body of a 2xx answer to GET `path`; EngineApiError for any other status."""
        request = f"GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
        with self._connect() as sock:
            sock.sendall(request.encode("ascii"))
            chunks = []
            size = 0
            while chunk := sock.recv(1 << 16):  # Connection: close -> the engine ends it
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ValueError("the engine's answer is too large")
        status, _headers, body = parse_response(b"".join(chunks))
        if not 200 <= status < 300:
            raise EngineApiError(status, error_message(body))
        return body


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP/1.1 response read to its end."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    words = lines[0].split(" ", 2)
    if not sep or len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise ValueError("not an HTTP response")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = dechunk(body)
    elif headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        if len(body) < length:
            raise ValueError("the engine's answer ended early")
        body = body[:length]
    return int(words[1]), headers, body


def dechunk(data: bytes) -> bytes:
    """A chunked transfer-encoded body, decoded."""
    parts: list[bytes] = []
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise ValueError("bad chunk size in the engine's answer") from None
        if not sep or size < 0 or len(rest) < size:
            raise ValueError("the engine's answer ended early")
        if size == 0:
            return b"".join(parts)
        parts.append(rest[:size])
        data = rest[size + 2 :]


def error_message(body: bytes) -> str:
    """The engine's words for an error: its JSON `message`, else the body's text."""
    text = body.decode(errors="replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        return text
    message = document.get("message") if isinstance(document, dict) else None
    return str(message) if message else text


# What a failed connection is, to this client; EngineApiError is an answer, not one of these.
TRANSPORT_ERRORS = (OSError, ValueError)


def unreachable(exc: BaseException) -> DockerUnavailable:
    """The error for an engine that does not answer at all (the CLI's docker_client's)."""
    if "Permission denied" in str(exc):
        return DockerUnavailable(
            "permission denied on the Docker socket",
            hint="add your user to the docker group or run as root",
        )
    return DockerUnavailable(
        "cannot reach the Docker engine (is dockerd running?)",
        hint="start it, or check DOCKER_HOST",
    )


def connect(address: EngineAddress, timeout: float = TIMEOUT_S) -> EngineApi:
    """A client whose engine answered a ping; DockerUnavailable otherwise."""
    client = EngineApi(address, timeout)
    try:
        client.ping()
    except (EngineApiError, *TRANSPORT_ERRORS) as exc:
        raise unreachable(exc) from None
    return client


@contextlib.contextmanager
def engine_api_errors(what: str) -> Iterator[None]:
    """This client's errors as deployer.runtime.engine_errors turns the SDK's."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except DeployError:
        raise
    except EngineApiError as exc:
        if exc.status == 404:
            raise StateError(
                f"{prefix}{exc.message}",
                hint="the container or network went away meanwhile; run the command again",
            ) from None
        raise DeployFailed(f"{prefix}Docker refused: {exc.message}") from None
    except TRANSPORT_ERRORS as exc:
        raise DockerUnavailable(
            f"{prefix}lost the connection to the Docker engine ({exc})",
            hint="is dockerd running? check DOCKER_HOST",
        ) from None

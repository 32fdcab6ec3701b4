"""The Engine API client's pure half: where DOCKER_HOST points (as the Docker SDK reads it) and
how an engine's HTTP answer is read. Its requests to a real engine are in
tests/integration/test_engine_api.py."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from docker.utils import parse_host

from deployer.errors import DockerUnavailable
from deployer.runtime.engine_api import (
    DEFAULT_SOCKET,
    EngineAddress,
    EngineApi,
    connect,
    dechunk,
    engine_address,
    error_message,
    parse_response,
)

HOSTS = (
    "",
    "unix://",
    "unix:///var/run/docker.sock",
    "unix:///tmp/other engine.sock",
    "unix://relative/engine.sock",
    "http+unix:///run/user/1000/docker.sock",
    "tcp://10.0.0.5:2375",
    "tcp://localhost:2375/",
    "http://engine.internal:2375",
    "https://engine.internal:2376",
    "ssh://me@engine.internal",
    "npipe:////./pipe/docker_engine",
    "localhost:2375",
    "tcp://:2375",
    "tcp://engine.internal",
    "tcp://engine.internal:2375?x=1",
)


def as_sdk_url(address: EngineAddress) -> str:
    if address.unix_socket:
        return f"http+unix://{address.unix_socket}"
    return f"http://{address.host}:{address.port}"


@pytest.mark.parametrize("host", HOSTS)
def test_an_address_it_takes_is_where_the_sdk_would_go(host: str) -> None:
    address = engine_address({"DOCKER_HOST": host} if host else {})
    if address is not None:
        assert as_sdk_url(address) == parse_host(host or None)


def test_the_default_socket_and_what_it_leaves_to_the_sdk() -> None:
    assert engine_address({}) == EngineAddress(unix_socket=DEFAULT_SOCKET)
    assert engine_address({"DOCKER_HOST": "tcp://10.0.0.5:2375"}) == EngineAddress(
        host="10.0.0.5", port=2375
    )
    # TLS (either variable turns it on in the SDK), ssh, npipe and what the SDK refuses.
    assert engine_address({"DOCKER_TLS_VERIFY": "1"}) is None
    assert engine_address({"DOCKER_CERT_PATH": "/certs", "DOCKER_HOST": "tcp://h:2376"}) is None
    for host in ("https://h:2376", "ssh://me@h", "npipe:////./pipe/x", "tcp://h", "h:2375"):
        assert engine_address({"DOCKER_HOST": host}) is None, host
    # An empty DOCKER_TLS_VERIFY is "off" to the SDK too.
    assert engine_address({"DOCKER_TLS_VERIFY": ""}) == EngineAddress(unix_socket=DEFAULT_SOCKET)


def test_a_response_with_a_length_and_a_chunked_one() -> None:
    sized = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n[]\n"
    assert parse_response(sized) == (200, {"content-type": "application/json",
                                          "content-length": "3"}, b"[]\n")  # fmt: skip
    body = json.dumps([{"Id": "a" * 64}]).encode()
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{10:x}\r\n".encode() + body[:10] + b"\r\n"
        + f"{len(body) - 10:x};ext=1\r\n".encode() + body[10:] + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    status, headers, decoded = parse_response(chunked)
    assert (status, headers["transfer-encoding"], decoded) == (200, "chunked", body)
    assert dechunk(b"0\r\n\r\n") == b""


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[]",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_an_answer_that_is_not_whole_http_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_response(data)


def test_the_engines_words_for_an_error() -> None:
    assert error_message(b'{"message":"No such container: abc"}\n') == "No such container: abc"
    assert error_message(b"page not found\n") == "page not found"
    assert error_message(b'{"other": 1}') == '{"other": 1}'


def test_no_engine_at_the_socket_is_docker_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DockerUnavailable, match="cannot reach the Docker engine"):
        connect(EngineAddress(unix_socket=str(tmp_path / "none.sock")), timeout=2)
    # Something listens there but never speaks HTTP: it closes at once.
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        client = EngineApi(EngineAddress(unix_socket=str(path)), timeout=0.3)
        with pytest.raises(OSError):  # sent, then nothing: the timeout
            client.ping()

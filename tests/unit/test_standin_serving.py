"""The stand-in over real HTTP (a local process, no Docker): the role chunk waits for the first
token, prefill grows with the prompt, ignore_eos / min_tokens / stop, /tokenize and /detokenize,
and a client that disconnects is aborted as vLLM aborts it."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from deployer.standin import server

SERVER = Path(server.__file__)
TTFT_MS = 300
PREFILL_RATE = 1000  # prompt tokens per second


@dataclass
class Local:
    url: str
    log: Path

    def post(self, path: str, **body: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=30)

    def metric(self, name: str, **labels: str) -> float:
        text = requests.get(self.url + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {name} {labels} in /metrics")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = tmp_path_factory.mktemp("standin") / "stdout.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "STANDIN_LOAD_SECONDS": "0",
        "STANDIN_TTFT_MS": str(TTFT_MS),
        "STANDIN_PREFILL_TOKENS_PER_SECOND": str(PREFILL_RATE),
        "STANDIN_TOKENS_PER_SECOND": "1000",
        "STANDIN_THINKING_TOKENS": "2",
    }
    argv = ["Qwen/Qwen3-8B", "--host", "127.0.0.1", "--port", str(port), "--enable-log-requests"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), "serve", *argv], stdout=out, stderr=out, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield Local(url, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _events(response: requests.Response) -> list[dict[str, Any]]:
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


CHAT = {"messages": [{"role": "user", "content": "Hello there /no_think"}]}


def test_role_chunk_comes_with_the_first_token(local: Local) -> None:
    start = time.monotonic()
    with requests.post(
        local.url + "/v1/chat/completions", json={**CHAT, "stream": True}, stream=True, timeout=30
    ) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        waited = time.monotonic() - start
        second = next(line for line in lines if line)
    assert json.loads(first.removeprefix(b"data: "))["choices"][0]["delta"]["role"] == "assistant"
    assert "content" in json.loads(second.removeprefix(b"data: "))["choices"][0]["delta"]
    assert waited >= TTFT_MS / 1000 * 0.9


def test_prefill_grows_with_the_prompt(local: Local) -> None:
    def seconds(words: int) -> float:
        start = time.monotonic()
        local.post("/v1/completions", prompt="word " * words, max_tokens=1).raise_for_status()
        return time.monotonic() - start

    short, long = seconds(5), seconds(505)
    # lower bounds only: a busy machine adds time, never takes it away
    assert long >= (TTFT_MS / 1000 + 505 / PREFILL_RATE) * 0.95
    assert long - short >= 500 / PREFILL_RATE * 0.6


def test_ignore_eos_gives_exactly_max_tokens(local: Local) -> None:
    body = local.post("/v1/chat/completions", **CHAT, max_tokens=40, ignore_eos=True).json()
    assert body["usage"]["completion_tokens"] == 40
    assert body["choices"][0]["finish_reason"] == "length"
    streamed = _events(
        local.post(
            "/v1/completions",
            prompt="a b c",
            max_tokens=25,
            ignore_eos=True,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert sum(1 for e in streamed if e["choices"]) == 25
    assert streamed[-2]["choices"][0]["finish_reason"] == "length"
    assert streamed[-1]["usage"]["completion_tokens"] == 25


def test_min_tokens_and_stop_strings(local: Local) -> None:
    body = local.post("/v1/completions", prompt="a b c", max_tokens=50, min_tokens=20).json()
    assert (body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]) == (
        20,
        "stop",
    )
    body = local.post("/v1/completions", prompt="a b c", max_tokens=50, stop=["to:"]).json()
    choice = body["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == (
        " Stand-in reply ",
        "stop",
        "to:",
    )
    events = _events(local.post("/v1/chat/completions", **CHAT, stop="reply", stream=True))
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"][0]["stop_reason"] == "reply"
    error = local.post("/v1/completions", prompt="a", max_tokens=5, min_tokens=6)
    assert error.status_code == 400
    assert "min_tokens must be less than or equal to max_tokens=5" in error.text


def test_tokenize_counts_what_usage_counts(local: Local) -> None:
    chat_usage = local.post("/v1/chat/completions", **CHAT, max_tokens=1).json()["usage"]
    tokenized = local.post("/tokenize", **CHAT).json()
    assert list(tokenized) == ["count", "max_model_len", "tokens", "token_strs"]
    assert tokenized["count"] == len(tokenized["tokens"]) == chat_usage["prompt_tokens"]
    assert tokenized["max_model_len"] == 40960 and tokenized["token_strs"] is None
    prompt = "The quick brown fox"
    done = local.post("/tokenize", prompt=prompt, return_token_strs=True).json()
    usage = local.post("/v1/completions", prompt=prompt, max_tokens=1).json()["usage"]
    assert done["count"] == usage["prompt_tokens"] == 4
    assert done["token_strs"] == prompt.split()
    assert local.post("/detokenize", tokens=done["tokens"]).json() == {"prompt": prompt}
    assert local.post("/detokenize", tokens=[-1]).status_code == 400
    assert local.post("/detokenize", tokens=[10**9]).status_code == 400
    assert local.post("/tokenize", model="other", prompt="x").status_code == 404
    assert local.post("/tokenize").status_code == 400


def _aborts(local: Local) -> float:
    return local.metric("vllm:request_success_total", finished_reason="abort")


def _wait_for(predicate: Any, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _raw_post(url: str, path: str, body: dict[str, Any]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def test_a_client_that_disconnects_is_aborted(local: Local) -> None:
    before, seen = _aborts(local), len(local.log.read_text())
    # streamed: gone after the first chunk, with most of 2000 tokens still to come
    sock = _raw_post(
        local.url,
        "/v1/completions",
        {"prompt": "x", "max_tokens": 2000, "ignore_eos": True, "stream": True},
    )
    received = b""
    while b"data: " not in received:
        received += sock.recv(4096)
    sock.close()
    _wait_for(lambda: _aborts(local) == before + 1)
    # not streamed: gone during the prefill
    sock = _raw_post(local.url, "/v1/chat/completions", {**CHAT, "max_tokens": 5})
    time.sleep(0.05)
    sock.close()
    _wait_for(lambda: _aborts(local) == before + 2)
    assert local.metric("vllm:num_requests_running") == 0
    log = local.log.read_text()[seen:]
    aborted = re.findall(r"Aborted request\(s\) ((?:cmpl|chatcmpl)-\w+)\.", log)
    assert len(aborted) == 2 and aborted[0].startswith("cmpl-")
    assert f"Request {aborted[1]} aborted." in log
    assert f"Added request {aborted[0]}." in log


def test_completions_take_a_prompt_of_token_ids(local: Local) -> None:
    ids = local.post("/tokenize", prompt="alpha beta gamma delta").json()["tokens"]
    body = local.post("/v1/completions", prompt=ids, max_tokens=8).json()
    assert body["usage"]["prompt_tokens"] == 4
    assert body["choices"][0]["text"] == " Stand-in reply to: alpha beta gamma delta"
    unknown = local.post("/v1/completions", prompt=[5, 6, 7], max_tokens=2).json()
    assert unknown["usage"]["prompt_tokens"] == 3

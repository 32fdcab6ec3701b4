"""The vLLM stand-in image behaves like `vllm serve` of the pinned vLLM from the outside (real containers,
real HTTP)."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import pytest
import requests

from deployer.vllm_pin import VLLM_VERSION
from tests.helpers.standin import StartStandin

pytestmark = pytest.mark.integration

MODEL = "Qwen/Qwen3-8B"
SMALL = "Qwen/Qwen3-0.6B"  # 1.2 GB of weights: fits in small GPU-memory fractions
KEY = "sk-standin-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
FREE_MEMORY = "ValueError: Free memory on device cuda:0"
NO_CACHE_MEMORY = "ValueError: No available memory for the cache blocks."


def chat(
    url: str,
    content: str = "What is two plus two?",
    headers: dict[str, str] | None = None,
    **body: Any,
) -> requests.Response:
    """POST one user message to /v1/chat/completions (with the test API key by default)."""
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": content}], **body}
    return requests.post(
        url + "/v1/chat/completions",
        json=payload,
        headers=AUTH if headers is None else headers,
        timeout=30,
    )


def sse_events(response: requests.Response) -> list[str]:
    """The `data:` payloads of a server-sent-events body."""
    return [
        line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")
    ]


def metric(url: str, name: str) -> float:
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# -- API surface ---------------------------------------------------------------------------


def test_api_key_guards_v1_only(standin: StartStandin) -> None:
    s = standin(MODEL, "--served-model-name", "qwen3-8b", "--api-key", KEY)

    health = requests.get(s.url + "/health", timeout=5)
    assert (health.status_code, health.content) == (200, b"")
    assert requests.get(s.url + "/version", timeout=5).json() == {"version": VLLM_VERSION}
    metrics = requests.get(s.url + "/metrics", timeout=5).text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
    ):
        assert f'{name}{{model_name="qwen3-8b"' in metrics

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        denied = requests.get(s.url + "/v1/models", headers=headers, timeout=5)
        assert denied.status_code == 401
        assert denied.json() == {"error": "Unauthorized"}
    assert chat(s.url, headers={}).status_code == 401
    assert requests.get(s.url + "/v1/models", headers=AUTH, timeout=5).status_code == 200


def test_api_key_from_environment(standin: StartStandin) -> None:
    s = standin(MODEL, env={"VLLM_API_KEY": "from-env"})
    assert requests.get(s.url + "/v1/models", timeout=5).status_code == 401
    ok = requests.get(s.url + "/v1/models", headers={"Authorization": "Bearer from-env"}, timeout=5)
    assert ok.status_code == 200


def test_models_lists_served_names(standin: StartStandin) -> None:
    s = standin(MODEL, "--served-model-name", "qwen3-8b", "alias")
    data = requests.get(s.url + "/v1/models", timeout=5).json()["data"]
    assert [card["id"] for card in data] == ["qwen3-8b", "alias"]
    assert data[0]["root"] == MODEL
    assert data[0]["max_model_len"] == 40960  # Qwen3's max_position_embeddings
    assert data[0]["owned_by"] == "vllm"

    t = standin("--model", MODEL, "--max-model-len", "8k", "-tp", "1")
    card = requests.get(t.url + "/v1/models", timeout=5).json()["data"][0]
    assert (card["id"], card["max_model_len"]) == (MODEL, 8000)
    assert "`--model` option will be removed" in t.logs()


def test_port_listens_only_after_loading(standin: StartStandin) -> None:
    s = standin(MODEL, env={"STANDIN_LOAD_SECONDS": "2"}, wait=False)
    time.sleep(0.8)
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/health", timeout=2)
    assert s.wait_listening().status_code == 200
    logs = s.logs()
    for line in (
        "Loading weights took",
        "Available KV cache memory:",
        "GPU KV cache size:",
        "Maximum concurrency for 40,960 tokens per request:",
        "Default vLLM sampling parameters have been overridden",
        "Starting vLLM server on http://0.0.0.0:8000",
        "Application startup complete.",
    ):
        assert line in logs
    assert logs.index("Loading weights took") < logs.index("Application startup complete.")


# -- chat ----------------------------------------------------------------------------------


def test_chat_splits_reasoning_with_qwen3_parser(standin: StartStandin) -> None:
    s = standin(
        MODEL,
        "--served-model-name",
        "qwen3",
        "--reasoning-parser",
        "qwen3",
        "--api-key",
        KEY,
        env={"STANDIN_THINKING_TOKENS": "10"},
    )
    body = chat(s.url, model="qwen3", max_tokens=200, temperature=0.6, top_p=0.95, top_k=20).json()
    message = body["choices"][0]["message"]
    assert body["model"] == "qwen3"
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert message["content"].strip() == "Stand-in reply to: What is two plus two?"
    assert len(message["reasoning"].split()) == 10
    assert "reasoning_content" not in message
    assert "<think>" not in message["content"] + message["reasoning"]
    usage = body["usage"]
    # 5 words + 4 template tokens for the one message + 3 for the assistant prefix
    assert usage["prompt_tokens"] == 12
    # <think> + 10 thinking words + </think> + 8 answer words
    assert usage["completion_tokens"] == 20
    assert usage["total_tokens"] == 32


def test_thinking_off_and_inline_think(standin: StartStandin) -> None:
    s = standin(MODEL, "--reasoning-parser", "qwen3", "--api-key", KEY)
    off = chat(s.url, chat_template_kwargs={"enable_thinking": False}).json()
    message = off["choices"][0]["message"]
    assert message["reasoning"] is None
    assert message["content"] == "Stand-in reply to: What is two plus two?"
    assert off["usage"]["completion_tokens"] == 8

    t = standin(MODEL, env={"STANDIN_THINKING_TOKENS": "4"})  # no reasoning parser
    inline = chat(t.url).json()["choices"][0]["message"]
    assert inline["reasoning"] is None
    assert inline["content"].startswith("<think>\n")
    assert "\n</think>\n\nStand-in reply to:" in inline["content"]

    u = standin(
        MODEL,
        "--reasoning-parser",
        "qwen3",
        "--default-chat-template-kwargs",
        '{"enable_thinking": false}',
    )
    assert chat(u.url).json()["choices"][0]["message"]["reasoning"] is None


def test_thinking_can_use_up_max_tokens(standin: StartStandin) -> None:
    s = standin(MODEL, "--reasoning-parser", "qwen3", env={"STANDIN_THINKING_TOKENS": "100000"})
    body = chat(s.url, max_tokens=64).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] is None
    assert len(choice["message"]["reasoning"].split()) == 63  # <think> is the 64th token
    assert body["usage"]["completion_tokens"] == 64


def test_chat_stream(standin: StartStandin) -> None:
    s = standin(MODEL, "--reasoning-parser", "qwen3", env={"STANDIN_THINKING_TOKENS": "5"})
    response = requests.post(
        s.url + "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "stream please"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        stream=True,
        timeout=30,
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning", "") for c in chunks[:-1])
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert len(reasoning.split()) == 5
    assert content.strip() == "Stand-in reply to: stream please"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 2 + 5 + 5  # tags, thinking, answer


def test_completions_endpoint(standin: StartStandin) -> None:
    s = standin(MODEL)
    body = requests.post(
        s.url + "/v1/completions", json={"prompt": "one two three", "max_tokens": 4}, timeout=10
    ).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == " Stand-in reply to: one"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 7,
        "completion_tokens": 4,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,  # as vLLM 0.33 sends on /v1/completions
    }


def test_request_errors_have_vllm_shapes(standin: StartStandin) -> None:
    s = standin(MODEL, "--served-model-name", "qwen3", "--max-model-len", "64")

    missing = chat(s.url, model="qwen3-14b")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "The model `qwen3-14b` does not exist. Valid aliases: qwen3.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }

    too_many = chat(s.url, max_tokens=65)
    assert too_many.status_code == 400
    error = too_many.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", "max_tokens", 400)
    assert error["message"].startswith("max_tokens=65 cannot be greater than max_model_len=64.")

    long_prompt = chat(s.url, content="word " * 80)
    assert long_prompt.status_code == 400
    assert long_prompt.json()["error"]["message"].startswith(
        "This model's maximum context length is 64 tokens. However, your prompt contains 87 "
        "input tokens"
    )

    # prompt + max_tokens over the context is clamped, as vLLM 0.33 does (no error)
    clamped = chat(
        s.url, content="word " * 50, max_tokens=60, chat_template_kwargs={"enable_thinking": False}
    )
    assert clamped.status_code == 200
    assert clamped.json()["usage"]["completion_tokens"] == 64 - 57
    assert clamped.json()["choices"][0]["finish_reason"] == "length"

    bad_json = requests.post(
        s.url + "/v1/chat/completions",
        data="{not json",
        headers={"content-type": "application/json"},
        timeout=5,
    )
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "Bad Request"
    assert "json_invalid" in bad_json.json()["error"]["message"]

    assert requests.get(s.url + "/v1/nothing", timeout=5).status_code == 404


def test_requests_beyond_max_num_seqs_wait(standin: StartStandin) -> None:
    s = standin(MODEL, "--max-num-seqs", "1", env={"STANDIN_TOKENS_PER_SECOND": "40"})
    results: list[int] = []

    def one() -> None:  # 30 answer tokens at 40 tokens/s: 0.75 s each, one at a time
        response = chat(
            s.url, "w " * 40, max_tokens=30, chat_template_kwargs={"enable_thinking": False}
        )
        results.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 2
    seen = (0.0, 0.0)
    while time.monotonic() < deadline and seen != (1, 2):
        seen = (
            metric(s.url, "vllm:num_requests_running"),
            metric(s.url, "vllm:num_requests_waiting"),
        )
        time.sleep(0.02)
    assert seen == (1, 2)
    for t in threads:
        t.join()
    assert results == [200, 200, 200]
    assert metric(s.url, "vllm:num_requests_waiting") == 0
    assert metric(s.url, "vllm:generation_tokens_total") == 90


# -- start-up: flags and the shared GPU memory ledger ----------------------------------------


def test_unknown_flag_exits_2_like_vllm(standin: StartStandin) -> None:
    s = standin(MODEL, "--enable-reasoning", wait=False)
    assert s.wait_exit() == 2
    assert "vllm: error: unrecognized arguments: --enable-reasoning" in s.logs()

    t = standin(MODEL, "--gpu-memory-utilization", "1.2", wait=False)
    assert t.wait_exit() == 1
    assert "Input should be less than or equal to 1" in t.logs()


def test_second_instance_overflowing_the_gpu_fails(standin: StartStandin) -> None:
    env = {"STANDIN_GPU_FOREIGN_MIB": "0:410"}
    first = standin(SMALL, "--gpu-memory-utilization", "0.5", gpus="0", env=env)
    assert first.wait_listening().status_code == 200
    second = standin(SMALL, "--gpu-memory-utilization", "0.6", gpus="0", env=env, wait=False)
    assert second.wait_exit() == 1
    assert (
        "ValueError: Free memory on device cuda:0 (11.59/23.99 GiB) on startup is less than "
        "desired GPU memory utilization (0.6, 14.39 GiB). Decrease GPU memory utilization or "
        "reduce GPU memory used by other processes."
    ) in second.logs()
    # another GPU is unaffected, and so is the first instance
    third = standin(SMALL, "--gpu-memory-utilization", "0.6", gpus="1", env=env)
    assert third.wait_listening().status_code == 200
    assert first.status() == "running"


def test_simultaneous_start_on_one_gpu_races(standin: StartStandin) -> None:
    env = {"STANDIN_LOAD_SECONDS": "3"}  # the second starts well within the first's load
    a = standin(SMALL, "--gpu-memory-utilization", "0.4", gpus="2", env=env, wait=False)
    b = standin(SMALL, "--gpu-memory-utilization", "0.4", gpus="2", env=env, wait=False)
    assert a.wait_exit() == 1
    assert b.wait_exit() == 1
    for s in (a, b):
        assert NO_CACHE_MEMORY in s.logs()
        assert FREE_MEMORY not in s.logs()


def test_staggered_start_on_one_gpu_works(standin: StartStandin) -> None:
    a = standin(SMALL, "--gpu-memory-utilization", "0.4", gpus="2")
    b = standin(SMALL, "--gpu-memory-utilization", "0.4", gpus="2")
    assert a.wait_listening().status_code == 200
    assert b.wait_listening().status_code == 200
    assert chat(a.url).status_code == chat(b.url).status_code == 200


def test_ledger_forgets_stopped_and_killed_instances(standin: StartStandin) -> None:
    a = standin(SMALL, "--gpu-memory-utilization", "0.7", gpus="0")
    started = time.monotonic()
    a.docker.stop(timeout=10)  # SIGTERM
    assert time.monotonic() - started < 3
    assert a.wait_exit() == 0
    b = standin(SMALL, "--gpu-memory-utilization", "0.7", gpus="0")
    b.docker.kill()  # SIGKILL: its ledger entry stays behind, unlocked
    c = standin(SMALL, "--gpu-memory-utilization", "0.7", gpus="0")
    assert c.wait_listening().status_code == 200


def test_context_that_does_not_fit_fails_like_vllm(standin: StartStandin) -> None:
    # Qwen3-8B in BF16 (16.4 GB) on a 24 GiB GPU at 0.7: under 1 GiB left for the KV cache
    s = standin(MODEL, "--gpu-memory-utilization", "0.7", gpus="0", wait=False)
    assert s.wait_exit() == 1
    logs = s.logs()
    assert "ValueError: To serve at least one request with the model's max seq len (40960)" in logs
    assert "the estimated maximum model length is" in logs

    fitted = standin(MODEL, "--gpu-memory-utilization", "0.7", "--max-model-len", "auto", gpus="0")
    card = requests.get(fitted.url + "/v1/models", timeout=5).json()["data"][0]
    assert 0 < card["max_model_len"] < 40960


def test_tensor_parallel_needs_enough_gpus(standin: StartStandin) -> None:
    s = standin(SMALL, "-tp", "2", gpus="0", wait=False)
    assert s.wait_exit() == 1
    assert "World size (2) is larger than the number of available GPUs (1)" in s.logs()
    t = standin(SMALL, "-tp", "2", "--gpu-memory-utilization", "0.5", gpus="0,1")
    assert t.wait_listening().status_code == 200


# -- fault modes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("crash_on_start", "RuntimeError: CUDA error: an illegal memory access was encountered"),
        ("oom_on_start", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"),
    ],
)
def test_fault_start_failures(standin: StartStandin, fault: str, expected: str) -> None:
    s = standin(SMALL, gpus="0", env={"STANDIN_FAULT": fault}, wait=False)
    assert s.wait_exit() == 1
    logs = s.logs()
    assert expected in logs
    assert "Engine core initialization failed" in logs


def test_fault_never_healthy(standin: StartStandin) -> None:
    s = standin(MODEL, env={"STANDIN_FAULT": "never_healthy"})
    assert requests.get(s.url + "/health", timeout=5).status_code == 503
    assert requests.get(s.url + "/v1/models", timeout=5).status_code == 503
    assert chat(s.url).status_code == 503


def test_fault_die_after(standin: StartStandin) -> None:
    s = standin(MODEL, env={"STANDIN_FAULT": "die_after:2"})
    assert chat(s.url).status_code == 200
    assert chat(s.url).status_code == 200
    assert s.wait_exit(timeout=10) == 1
    with pytest.raises(requests.ConnectionError):
        chat(s.url)


def test_fault_slow_and_no_auth(standin: StartStandin) -> None:
    s = standin(MODEL, "--api-key", KEY, env={"STANDIN_FAULT": "slow:1,no_auth"})
    started = time.monotonic()
    response = chat(s.url, headers={})
    assert response.status_code == 200
    assert time.monotonic() - started >= 1.0


def test_fault_wrong_model_and_empty_content(standin: StartStandin) -> None:
    s = standin(
        MODEL,
        "--served-model-name",
        "qwen3",
        env={"STANDIN_FAULT": "wrong_model:other-model,empty_content"},
    )
    ids = [card["id"] for card in requests.get(s.url + "/v1/models", timeout=5).json()["data"]]
    assert ids == ["other-model"]
    body = chat(s.url, model="qwen3").json()
    assert body["choices"][0]["message"]["content"] == ""


def test_fault_broken_stream(standin: StartStandin) -> None:
    s = standin(MODEL, env={"STANDIN_FAULT": "broken_stream"})
    response = requests.post(
        s.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=10,
    )
    events = sse_events(response)
    assert events, response.text
    assert "[DONE]" not in events
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events)


# -- issue 12: generation length, first-chunk timing, tokenizer, aborts ----------------------


def test_ignore_eos_and_the_role_chunk_after_the_prefill(standin: StartStandin) -> None:
    s = standin(MODEL, env={"STANDIN_TTFT_MS": "400", "STANDIN_TOKENS_PER_SECOND": "2000"})
    started = time.monotonic()
    with requests.post(
        s.url + "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi /no_think"}],
            "max_tokens": 64,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        stream=True,
        timeout=30,
    ) as response:
        lines = (line for line in response.iter_lines() if line)
        first = json.loads(next(lines).removeprefix(b"data: "))
        first_at = time.monotonic() - started
        rest = [line.removeprefix(b"data: ") for line in lines]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first_at >= 0.35  # sent with the first token, not before the prefill
    assert rest[-1] == b"[DONE]"
    usage = json.loads(rest[-2])["usage"]
    assert usage["completion_tokens"] == 64
    assert json.loads(rest[-3])["choices"][0]["finish_reason"] == "length"


def test_tokenize_detokenize_and_stop(standin: StartStandin) -> None:
    s = standin(MODEL, "--api-key", KEY)
    messages = [{"role": "user", "content": "count these five words now"}]
    tokenized = requests.post(s.url + "/tokenize", json={"messages": messages}, timeout=5).json()
    usage = chat(s.url, "count these five words now", max_tokens=1).json()["usage"]
    assert tokenized["count"] == usage["prompt_tokens"] == 5 + 4 + 3
    text = requests.post(s.url + "/detokenize", json={"tokens": tokenized["tokens"]}, timeout=5)
    assert "count these five words now" in text.json()["prompt"]
    body = chat(s.url, "hi /no_think", stop=["to:"]).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["stop_reason"] == "to:"


def test_a_disconnected_client_is_aborted(standin: StartStandin) -> None:
    s = standin(MODEL, "--enable-log-requests", env={"STANDIN_TOKENS_PER_SECOND": "100"})
    with requests.post(
        s.url + "/v1/completions",
        json={"prompt": "go on", "max_tokens": 1000, "ignore_eos": True, "stream": True},
        stream=True,
        timeout=30,
    ) as response:
        next(line for line in response.iter_lines() if line)
    deadline = time.monotonic() + 10
    while "Aborted request(s) cmpl-" not in s.logs():
        assert time.monotonic() < deadline, s.logs()
        time.sleep(0.1)
    assert re.search(r"Request cmpl-\w+ aborted\.", s.logs())
    text = requests.get(s.url + "/metrics", timeout=5).text
    assert re.search(r'vllm:request_success_total\{[^}]*finished_reason="abort"\} 1\.0', text)
    assert metric(s.url, "vllm:num_requests_running") == 0
    # it stopped generating: far fewer than 1000 tokens were counted
    assert metric(s.url, "vllm:generation_tokens_total") < 500


# -- issue 11: vLLM 0.33's start-up accounting ------------------------------------------------

RTX_4090 = {"STANDIN_GPU_RESERVED_MIB": "0:358,1:358,2:358,3:358", "STANDIN_CONTEXT_MIB": "460"}


def test_startup_prints_vllms_memory_lines(standin: StartStandin) -> None:
    s = standin(SMALL, "--gpu-memory-utilization", "0.5", gpus="0", env=RTX_4090)
    logs = s.logs()
    assert re.search(r"\[model_runner\.py:\d+\] Model loading took 1\.12 GiB memory", logs)
    available = re.search(r"Available KV cache memory: ([\d.]+) GiB", logs)
    size = re.search(
        r"GPU KV cache size: ([\d,]+) tokens, Maximum concurrency for 40,960 tokens per "
        r"request: ([\d.]+)x",
        logs,
    )
    assert available and size, logs
    # vLLM's total for a 4090 (NVML's less reserved) and the terms that add up to the KV cache
    assert "Free memory on device (23.19/23.64 GiB) on startup." in logs
    assert "Desired GPU memory utilization is (0.5, 11.82 GiB)." in logs
    usage = re.search(
        r"Actual usage is ([\d.]+) GiB for consumed memory \(weights \+ non-torch\), ([\d.]+) "
        r"GiB for peak activation, and ([\d.]+) GiB for CUDAGraph memory\.",
        logs,
    )
    assert usage, logs
    terms = sum(float(g) for g in usage.groups())
    assert float(available.group(1)) == pytest.approx(11.82 - terms, abs=0.03)
    tokens = int(size.group(1).replace(",", ""))
    assert tokens == pytest.approx(float(available.group(1)) * 2**30 / 114688, rel=0.01)


def test_a_fraction_without_room_for_the_context_fails(standin: StartStandin) -> None:
    s = standin(SMALL, "--gpu-memory-utilization", "0.99", gpus="1", env=RTX_4090, wait=False)
    assert s.wait_exit() == 1
    assert (
        "ValueError: Free memory on device cuda:0 (23.19/23.64 GiB) on startup is less than "
        "desired GPU memory utilization (0.99, 23.4 GiB)."
    ) in s.logs()
    t = standin(SMALL, "--gpu-memory-utilization", "0.98", gpus="1", env=RTX_4090)
    assert t.wait_listening().status_code == 200

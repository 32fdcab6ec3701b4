"""The gateway when things go wrong: a tier killed mid-stream, a slow tier, a client that
leaves, a tier still loading, a gateway restart; and 1,000 streams with nothing lost."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from deployer.gateway.config import GatewaySpec, Limits
from tests.integration.gateway_support import Deployment, start_deployment, wait_state

pytestmark = pytest.mark.integration

LIMITS = Limits(
    health_interval_s=0.3, first_byte_timeout_s=1.5, idle_timeout_s=2.0, keepalive_s=0.3
)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = start_deployment(
        tmp_path,
        GatewaySpec(limits=LIMITS),
        tier_env={
            "mini": {"STANDIN_TOKENS_PER_SECOND": "50"},
            "medium": {"STANDIN_FAULT": "slow:4"},
        },
    )
    yield d
    d.stop()


def stream(
    d: Deployment, model: str, max_tokens: int, timeout: float = 30, **extra: object
) -> requests.Response:
    return requests.post(
        d.gateway.url + "/v1/chat/completions",
        headers=d.headers(),
        json={
            "model": model,
            "messages": [{"role": "user", "content": "tell me"}],
            "max_tokens": max_tokens,
            "stream": True,
            "chat_template_kwargs": {"enable_thinking": False},
            **extra,
        },
        stream=True,
        timeout=timeout,
    )


def test_a_tier_killed_mid_stream_ends_it_with_an_error_event(deployment: Deployment) -> None:
    started = time.monotonic()
    with stream(deployment, "mini", 500, ignore_eos=True) as answer:
        assert answer.status_code == 200
        lines = answer.iter_lines(decode_unicode=True)
        first = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in first)
        deployment.tiers["mini"].stop(signal.SIGKILL)
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert time.monotonic() - started < 10  # no hang
    assert rest[-1] == "[DONE]"
    error = json.loads(rest[-2])["error"]
    assert error["code"] == 502 and "tier mini" in error["message"]
    assert error["request_id"]


def test_a_slow_tier_gets_504_after_the_first_byte_timeout(deployment: Deployment) -> None:
    started = time.monotonic()
    answer = stream(deployment, "medium", 5)
    elapsed = time.monotonic() - started
    assert answer.status_code == 504
    assert "tier medium sent nothing within 1.5 s" in answer.json()["error"]["message"]
    assert answer.headers["x-qwen-deploy-tier"] == "medium"
    assert 1.4 < elapsed < 4
    # A non-streamed request has no such cap: a long generation is not an error.
    slow = requests.post(
        deployment.gateway.url + "/v1/chat/completions",
        headers=deployment.headers(),
        json={"model": "medium", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
        timeout=30,
    )
    assert slow.status_code == 200


def test_idle_streams_get_keepalive_comments(deployment: Deployment) -> None:
    mini = deployment.tiers["mini"]
    mini.stop()
    mini.start(STANDIN_TOKENS_PER_SECOND="1")  # 1 s between tokens: 3x keepalive_s, < idle
    wait_state(deployment, "mini", "ready")
    with stream(deployment, "mini", 4) as answer:
        raw = b"".join(answer.iter_content(chunk_size=None))
    assert b": keep-alive\n\n" in raw
    assert raw.endswith(b"data: [DONE]\n\n")


def test_a_client_that_leaves_aborts_the_request_on_the_tier(deployment: Deployment) -> None:
    mini = deployment.tiers["mini"]
    aborts = 'vllm:request_success_total{model_name="Qwen/Qwen3-8B-AWQ",engine="0",finished_reason="abort"}'
    before = mini.metrics().get(aborts, 0.0)
    answer = stream(deployment, "mini", 1000, ignore_eos=True)  # 20 s of tokens at 50/s
    lines = answer.iter_lines()
    next(lines)
    next(lines)
    answer.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and mini.metrics().get(aborts, 0.0) <= before:
        time.sleep(0.1)
    assert mini.metrics().get(aborts, 0.0) == before + 1
    assert (
        mini.metrics()['vllm:num_requests_running{model_name="Qwen/Qwen3-8B-AWQ",engine="0"}'] == 0
    )


def test_a_tier_not_started_yet_is_loading(tmp_path: Path) -> None:
    d = start_deployment(tmp_path, GatewaySpec(limits=LIMITS), start_tiers=False)
    try:
        wait_state(d, "micro", "loading")
        answer = requests.post(
            d.gateway.url + "/v1/chat/completions",
            headers=d.headers(),
            json={"model": "micro", "messages": [{"role": "user", "content": "x"}]},
            timeout=10,
        )
        assert answer.status_code == 503
        assert answer.json()["error"]["message"] == "tier micro is loading"
        assert answer.headers["retry-after"] == "10"
        health = requests.get(d.gateway.url + "/api/v1/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        d.tiers["micro"].start()
        wait_state(d, "micro", "ready")
        assert requests.get(d.gateway.url + "/api/v1/health").json()["status"] == "degraded"
    finally:
        d.stop()


def test_the_gateway_restarted_serves_again(deployment: Deployment) -> None:
    deployment.gateway.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(deployment.gateway.url + "/health", timeout=2)
    deployment.gateway.start()
    wait_state(deployment, "micro", "ready")
    answer = requests.post(
        deployment.gateway.url + "/v1/chat/completions",
        headers=deployment.headers(),
        json={"model": "micro", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
        timeout=10,
    )
    assert answer.status_code == 200


def test_a_thousand_streams_lose_nothing_and_count_every_token(tmp_path: Path) -> None:
    d = start_deployment(tmp_path, GatewaySpec(limits=Limits(health_interval_s=1.0)))
    try:
        tiers = ("micro", "mini")
        before = {t: d.tiers[t].counter("vllm:generation_tokens_total") for t in tiers}

        def one(i: int) -> tuple[str, int, bool]:
            with stream(d, tiers[i % 2], 8 + i % 5) as answer:
                assert answer.status_code == 200, answer.text
                events = [line[6:] for line in answer.iter_lines() if line.startswith(b"data: ")]
            words = sum(
                1
                for e in events[:-1]
                for c in json.loads(e)["choices"]
                if c["delta"].get("content")
            )
            return answer.headers["x-qwen-deploy-tier"], words, events[-1] == b"[DONE]"

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(1000)))
        assert all(done for _, _, done in results)
        assert len(results) == 1000
        text = requests.get(d.gateway.url + "/metrics", headers=d.headers(), timeout=10).text
        for tier in tiers:
            generated = d.tiers[tier].counter("vllm:generation_tokens_total") - before[tier]
            counted = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("qwen_deploy_gateway_completion_tokens_total{")
                and f'tier="{tier}"' in line
            )
            assert counted == generated > 0
            served = sum(1 for t, _, _ in results if t == tier)
            assert served == 500
            requests_line = f'qwen_deploy_gateway_requests_total{{key="default",status="200",tier="{tier}"}} 500.0'
            assert requests_line in text
    finally:
        d.stop()


def test_a_client_that_leaves_a_non_streamed_request_aborts_it_too(deployment: Deployment) -> None:
    mini = deployment.tiers["mini"]
    aborts = 'vllm:request_success_total{model_name="Qwen/Qwen3-8B-AWQ",engine="0",finished_reason="abort"}'
    before = mini.metrics().get(aborts, 0.0)
    with pytest.raises(requests.Timeout):
        requests.post(
            deployment.gateway.url + "/v1/chat/completions",
            headers=deployment.headers(),
            json={
                "model": "mini",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 1000,
                "ignore_eos": True,
            },
            timeout=(2, 0.5),  # 20 s of tokens at 50/s; the client gives up after 0.5 s
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and mini.metrics().get(aborts, 0.0) <= before:
        time.sleep(0.1)
    assert mini.metrics().get(aborts, 0.0) == before + 1


def test_a_stream_that_stalls_ends_with_a_504_event_not_a_hang(deployment: Deployment) -> None:
    mini = deployment.tiers["mini"]
    mini.stop()
    mini.start(STANDIN_TOKENS_PER_SECOND="0.3")  # 3.3 s between tokens; idle_timeout_s is 2
    wait_state(deployment, "mini", "ready")
    started = time.monotonic()
    with stream(deployment, "mini", 5) as answer:
        assert answer.status_code == 200
        raw = b"".join(answer.iter_content(chunk_size=None)).decode()
    assert time.monotonic() - started < 15
    events = [e[6:] for e in raw.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 504 and "stalled mid-stream" in error["message"]
    assert ": keep-alive" in raw  # the client heard from the gateway while it waited

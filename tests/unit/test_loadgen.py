"""loadgen's pure parts: synthetic prompts, the request body, /metrics parsing, request counts."""

from __future__ import annotations

from deployer.bench.client import (
    CHAT_TEMPLATE_TOKENS,
    Endpoint,
    Load,
    chat_request,
    parse_metrics,
    synthetic_prompt,
)
from deployer.bench.samples import EngineSample
from deployer.bench.sweep import requests_for
from deployer.catalog import Catalog
from tests.helpers import tri_tier_plan


def test_synthetic_prompts_have_the_stand_in_token_count_and_unique_starts() -> None:
    a, b = synthetic_prompt(128, "r1-0"), synthetic_prompt(128, "r1-1")
    assert len(a.split()) + CHAT_TEMPLATE_TOKENS == 128
    assert a.split()[0] == "r1-0" and a.split()[1:] == b.split()[1:]
    assert len(synthetic_prompt(3, "n").split()) == 1  # never empty


def test_the_request_streams_with_usage_thinking_off_and_ignore_eos(catalog: Catalog) -> None:
    mini = tri_tier_plan(catalog).service("mini")
    load = Load(Endpoint(mini, "http://127.0.0.1:5001", "k" * 8), 4, 128, 64, 16, 30.0)
    body = chat_request(load, "hello")
    assert body["model"] == "Qwen/Qwen3-8B-AWQ" and body["max_tokens"] == 64
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["ignore_eos"] is True and body["temperature"] == 0.6
    thinking = chat_request(Load(load.endpoint, 1, 8, 8, 1, 1.0, thinking=True), "x")
    assert thinking["chat_template_kwargs"] == {"enable_thinking": True}


def test_metrics_are_read_from_vllm_prometheus_text() -> None:
    text = "\n".join(
        [
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5',
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 2.0',
            'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0',
            'vllm:num_requests_waiting{engine="1",model_name="m"} 0.0',
            "vllm:odd_metric not-a-number",
        ]
    )
    assert parse_metrics(text) == EngineSample(kv_usage=0.5, running=5.0, waiting=1.0)
    old = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.1\n'
    assert parse_metrics(old) == EngineSample(0.1, None, None)
    assert parse_metrics("") == EngineSample(None, None, None)


def test_requests_per_point_default_to_four_per_worker() -> None:
    assert [requests_for(c, None) for c in (1, 4, 8, 32)] == [16, 16, 32, 128]
    assert requests_for(32, 5) == 5

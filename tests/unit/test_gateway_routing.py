"""Routing and admission decisions, and the stream taps: pure parts of the gateway."""

from __future__ import annotations

import asyncio
import json

import pytest

from deployer.catalog import Catalog
from deployer.gateway import routing
from deployer.gateway.admission import GroupGate, KeyLimiter, parse_saturation, retry_after
from deployer.gateway.config import (
    Fallback,
    GatewayConfig,
    GatewayKey,
    GatewaySpec,
    GpuGroup,
    build_config,
    resolve_gateway_keys,
)
from deployer.gateway.errors import ApiError, utf8_error
from deployer.gateway.streaming import OpenAITap, Seed004Tap
from deployer.planner import plan
from deployer.profiles import load_profile
from tests.helpers import inventory


@pytest.fixture
def config(catalog: Catalog) -> GatewayConfig:
    the_plan = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    spec = GatewaySpec()
    secrets = {s.api_key_env: f"tier-key-{s.name}" for s in the_plan.services}
    return build_config(the_plan, spec, {**secrets, **resolve_gateway_keys(spec, {}, {})})


ALL = GatewayKey("k", "secret-secret", None, None, None, False)


def test_model_names_tiers_aliases_and_auto_resolve(config: GatewayConfig) -> None:
    assert routing.resolve_model(config, "Qwen/Qwen3-8B-AWQ") == "mini"
    assert routing.resolve_model(config, "MINI") == "mini"
    assert routing.resolve_model(config, "1.7b") == "micro"
    assert routing.resolve_model(config, "auto") == routing.AUTO
    assert routing.resolve_model(config, None) == routing.AUTO
    with pytest.raises(ApiError) as caught:
        routing.resolve_model(config, "Qwen/Qwen3-9B")
    assert caught.value.status == 404
    assert "Valid models: medium, Qwen/Qwen3-32B-AWQ" in caught.value.message


def test_auto_fits_by_context_and_names_the_largest(config: GatewayConfig) -> None:
    micro, mini = config.tier("micro"), config.tier("mini")
    assert routing.by_size(config.tiers)[0] is micro
    assert routing.fits(micro, 16000, 384)
    assert not routing.fits(micro, 16000, 385)
    assert routing.fits(mini, 16000, 385)
    error = routing.context_error(config.tiers, 40000, 100)
    assert error.status == 400
    assert "largest context available is 32768 tokens" in error.message


def test_fallback_is_opt_in_and_goes_to_larger_models_first(config: GatewayConfig) -> None:
    assert routing.fallback_order(config, "micro", ALL, Fallback.OFF) == []
    assert routing.fallback_order(config, "micro", ALL, Fallback.LARGER) == ["mini", "medium"]
    assert routing.fallback_order(config, "mini", ALL, Fallback.ANY) == ["medium", "micro"]
    only_mini = GatewayKey("m", "secret-secret", frozenset({"mini", "micro"}), None, None, False)
    assert routing.fallback_order(config, "micro", only_mini, Fallback.LARGER) == ["mini"]
    assert routing.fallback_mode(config, None) is Fallback.OFF
    assert routing.fallback_mode(config, "true") is Fallback.LARGER
    assert routing.fallback_mode(config, "any") is Fallback.ANY
    with pytest.raises(ApiError, match="expected off, larger or any"):
        routing.fallback_mode(config, "maybe")


def test_estimate_is_generous_and_max_tokens_read() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 300}], "max_tokens": 5}
    assert routing.estimate_tokens(body, chat=True) >= 300 / 4
    assert routing.max_tokens_of(body) == 5
    assert routing.max_tokens_of({"max_completion_tokens": 7, "max_tokens": 5}) == 7
    assert routing.max_tokens_of({"max_tokens": True}) is None


def test_saturation_is_read_from_vllm_metrics() -> None:
    text = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{model_name="a",engine="0"} 3.0\n'
        'vllm:num_requests_waiting{model_name="a",engine="1"} 1.0\n'
        'vllm:kv_cache_usage_perc{model_name="a",engine="0"} 0.42\n'
    )
    assert parse_saturation(text) == (4.0, 0.42)
    assert retry_after(queued=9, drain_per_s=2.0) == 5
    assert retry_after(queued=0, drain_per_s=0.0) == 5
    assert retry_after(queued=10_000, drain_per_s=1.0) == 60


def test_group_gate_caps_queues_and_rejects_with_retry_after() -> None:
    async def scenario() -> None:
        gate = GroupGate(GpuGroup("gpu2", (2,), ("mini", "micro"), cap=2), 1, 0.2)
        await gate.acquire()
        await gate.acquire()
        waiter = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0)
        assert gate.queued == 1
        with pytest.raises(ApiError) as full:  # the queue holds one
            await gate.acquire()
        assert full.value.status == 429 and "queue is full" in full.value.message
        gate.release()
        await waiter  # the slot went to the waiter, in order
        assert gate.in_flight == 2
        with pytest.raises(ApiError) as late:
            await gate.acquire()
        assert "no slot freed within 0.2 s" in late.value.message
        assert late.value.retry_after is not None and late.value.retry_after >= 1
        assert gate.queued == 0

    asyncio.run(scenario())


def test_a_saturated_tier_stops_the_groups_load_from_growing() -> None:
    gate = GroupGate(GpuGroup("gpu2", (2,), ("mini", "micro"), cap=10), 5, 1.0)
    assert gate.try_acquire() and gate.try_acquire()
    gate.set_saturated("mini", True)
    assert not gate.try_acquire()  # two in flight, no third while mini's queue is full
    gate.release()
    assert gate.try_acquire()  # a finished request is replaced
    gate.set_saturated("mini", False)
    assert gate.try_acquire()


def test_key_limiter_counts_a_sliding_minute_and_concurrency() -> None:
    now = [1000.0]
    key = GatewayKey("team", "secret-secret", None, rpm=2, concurrent=1, admin=False)
    limiter = KeyLimiter(key, clock=lambda: now[0])
    limiter.acquire()
    with pytest.raises(ApiError, match="1 concurrent requests"):
        limiter.acquire()
    limiter.release()
    now[0] += 10
    limiter.acquire()
    limiter.release()
    with pytest.raises(ApiError) as rpm:
        limiter.acquire()
    assert "2 requests per minute" in rpm.value.message and rpm.value.retry_after == 50
    now[0] += 51
    limiter.acquire()


def _sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def test_openai_tap_passes_events_whole_and_drops_the_usage_it_asked_for() -> None:
    tap = OpenAITap(strip_usage=True, request_id="r1", tier="mini")
    chunk = _sse({"choices": [{"delta": {"content": "a usage word"}}]})
    usage = _sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    assert tap.feed(chunk[:10]) == b""  # half an event waits for its end
    assert tap.feed(chunk[10:]) == chunk
    assert tap.feed(usage + b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert tap.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert tap.end(None) == b""
    kept = OpenAITap(strip_usage=False, request_id="r1", tier="mini")
    assert kept.feed(usage) == usage and kept.usage is not None


def test_a_cut_stream_ends_with_an_error_event_in_vllms_shape() -> None:
    tap = OpenAITap(strip_usage=False, request_id="r2", tier="mini")
    tap.feed(_sse({"choices": [{"delta": {"content": "x"}}]}))
    tail = tap.end(None).decode()
    error = json.loads(tail.split("\n\n")[0][len("data: ") :])["error"]
    assert error["code"] == 502 and "before [DONE]" in error["message"]
    assert error["request_id"] == "r2"
    assert tail.endswith("data: [DONE]\n\n")


def test_seed_tap_emits_thinking_from_either_reasoning_field() -> None:
    tap = Seed004Tap("r3", "micro")
    out = tap.feed(
        _sse({"choices": [{"delta": {"reasoning": "hmm"}}]})
        + _sse({"choices": [{"delta": {"reasoning_content": "old"}}]})
        + _sse({"choices": [{"delta": {"content": "héllo"}}]})
        + b"data: [DONE]\n\n"
    )
    events = [json.loads(e[6:]) for e in out.decode().split("\n\n") if e]
    assert events == [
        {"type": "start", "content": ""},
        {"type": "thinking", "content": "hmm"},
        {"type": "thinking", "content": "old"},
        {"type": "chunk", "content": "héllo"},
        {"type": "end", "content": ""},
    ]


def test_non_utf8_body_names_the_offset_and_the_fix() -> None:
    error = utf8_error(b'{"m": "caf' + b"\xe9" + b'"}')
    assert error is not None and error.status == 400
    assert "byte 0xe9 at offset 10" in error.message
    assert "curl --data-binary @" in error.message
    assert utf8_error(b"{}") is None

"""One streamed request as the bench sends it, and one read of the engine's /metrics.

Prompts are synthetic: one word per token on the vLLM stand-in (its tokenizer splits on
whitespace; the chat template adds 7). Real tokenizers count differently, so each request
records `usage.prompt_tokens` from the response when the server sends it. Takes base URLs,
keys and a `requests.Session`; never builds one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from deployer import openai_wire as wire
from deployer.bench.samples import EngineSample, RequestSample
from deployer.plan import ServicePlan

# The stand-in's chat template: 4 tokens per message + 3 for the generation prompt.
CHAT_TEMPLATE_TOKENS = 7
WORDS = ("time", "year", "people", "way", "day", "thing", "world", "school", "state", "family")
CONNECT_TIMEOUT_S = 5.0

SessionFactory = Callable[[], requests.Session]


@dataclass(frozen=True)
class Endpoint:
    """A service to load: its plan (model name, sampling), server root URL and API key ("" for
    a service planned without one)."""

    service: ServicePlan
    base_url: str
    api_key: str


@dataclass(frozen=True)
class Load:
    """One service's share of a point. Closed loop by default: `concurrency` workers, each
    sending its next request when the last ends. With `arrivals` (seconds after the start, one
    per request) it is an open loop: request i is sent at arrivals[i], or later when all
    `concurrency` workers are busy (vLLM's --max-concurrency does the same)."""

    endpoint: Endpoint
    concurrency: int
    prompt_tokens: int
    max_tokens: int
    max_requests: int
    duration_s: float
    thinking: bool = False
    timeout_s: float = 300.0
    arrivals: tuple[float, ...] = ()
    prompts: tuple[str, ...] = ()  # a dataset's prompts, used in turn; none: synthetic ones

    def prompt(self, index: int, salt: str) -> str:
        if self.prompts:
            return self.prompts[index % len(self.prompts)]
        return synthetic_prompt(self.prompt_tokens, f"{salt}-{index}")


def synthetic_prompt(tokens: int, nonce: str) -> str:
    """A prompt of `tokens` chat tokens on the stand-in; the nonce comes first so that no two
    requests share a prefix (vLLM's prefix cache would otherwise skip their prefill)."""
    words = max(1, tokens - CHAT_TEMPLATE_TOKENS)
    body = [WORDS[i % len(WORDS)] for i in range(words - 1)]
    return " ".join([nonce, *body])


def chat_request(load: Load, prompt: str) -> dict[str, Any]:
    """A chat body with the service's sampling, streamed with usage; ignore_eos makes vLLM
    produce exactly max_tokens."""
    service = load.endpoint.service
    return wire.chat_body(
        service.served_model_name,
        prompt,
        max_tokens=load.max_tokens,
        stream=True,
        thinking=load.thinking,
        ignore_eos=True,
        sampling=service.generation.as_dict(),
    )


def stream_once(
    session: requests.Session,
    load: Load,
    prompt: str,
    index: int,
    *,
    started: float,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> RequestSample:
    """Send one streaming chat completion; time the first token and the gaps between tokens.
    Failures become a sample with `ok` False and the reason; nothing is raised."""
    endpoint = load.endpoint
    start = clock()
    first: float | None = None
    last = start
    gaps: list[float] = []
    usage: dict[str, Any] = {}
    chunks = 0

    def sample(error: str | None) -> RequestSample:
        end = clock()
        prompt_tokens = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        return RequestSample(
            index=index,
            ok=error is None,
            error=error,
            start_s=round(start - started, 4),
            ttft_ms=None if first is None else round((first - start) * 1000, 2),
            e2e_ms=round((end - start) * 1000, 2),
            prompt_tokens=int(prompt_tokens) if isinstance(prompt_tokens, int) else None,
            completion_tokens=int(completion) if isinstance(completion, int) else chunks,
            itl_ms=tuple(round(g * 1000, 3) for g in gaps) if error is None else (),
        )

    try:
        response = session.post(
            endpoint.base_url + wire.CHAT_PATH,
            json=chat_request(load, prompt),
            headers=wire.auth_headers(endpoint.api_key),
            stream=True,
            timeout=(CONNECT_TIMEOUT_S, load.timeout_s),
        )
    except requests.Timeout:
        return sample(f"no answer within {load.timeout_s:g} s")
    except requests.ConnectionError:
        return sample("connection failed")
    except requests.RequestException as exc:
        return sample(f"request failed: {type(exc).__name__}")
    with response:
        if response.status_code != 200:
            text = wire.error_text(
                response.content,
                content_type=response.headers.get("Content-Type", ""),
                reason=response.reason or "",
                limit=120,
            )
            return sample(f"HTTP {response.status_code}" + (f": {text}" if text else ""))
        stream = wire.ChunkStream(response.iter_lines(chunk_size=None))
        try:
            for chunk in stream:
                if stop is not None and stop.is_set():
                    return sample("stopped")
                error = wire.chunk_error(chunk)
                if error is not None:
                    return sample(f"error in the stream: {error[:120]}")
                usage = wire.chunk_usage(chunk) or usage
                if wire.delta_text(chunk):
                    now = clock()
                    if first is None:
                        first = now
                    else:
                        gaps.append(now - last)
                    last = now
                    chunks += 1
                if clock() - start > load.timeout_s:
                    return sample(f"took longer than {load.timeout_s:g} s")
        except wire.StreamError as exc:
            return sample(f"not an OpenAI stream: {exc}")
        except (requests.RequestException, ConnectionError) as exc:
            return sample(f"the stream broke after {chunks} tokens: {type(exc).__name__}")
        if not stream.done:
            return sample(f"the stream ended after {chunks} tokens without data: [DONE]")
    if first is None:
        return sample("no tokens in the answer")
    return sample(None)


def parse_metrics(text: str) -> EngineSample:
    """KV-cache usage (max over engines), running and waiting requests (sums) from vLLM's
    Prometheus text; vLLM before v1 called the first `vllm:gpu_cache_usage_perc`."""
    values: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        labels = line.find("{")
        if labels >= 0:
            name, rest = line[:labels], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        try:
            values.setdefault(name.strip(), []).append(float(rest.split()[0]))
        except (ValueError, IndexError):
            continue

    def pick(names: Sequence[str], combine: Callable[[list[float]], float]) -> float | None:
        for name in names:
            if name in values:
                return combine(values[name])
        return None

    return EngineSample(
        kv_usage=pick(("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), max),
        running=pick(("vllm:num_requests_running",), sum),
        waiting=pick(("vllm:num_requests_waiting",), sum),
    )


def scrape_metrics(session: requests.Session, base_url: str) -> EngineSample | None:
    """One read of /metrics, or None when it does not answer (the scraper then stops)."""
    try:
        response = session.get(base_url + "/metrics", timeout=2)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    return parse_metrics(response.text)

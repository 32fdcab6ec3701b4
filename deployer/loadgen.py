"""The bench's HTTP load: closed-loop workers (one thread and one `requests.Session` each) send
streaming chat completions and time every token; a scraper reads the engine's /metrics
meanwhile. Every point is bounded by a request count AND a wall time. Takes base URLs and keys,
never reads files; only the CLI builds sessions (through `session_factory`).

Prompts are synthetic: one word per token on the vLLM stand-in (its tokenizer splits on
whitespace; the chat template adds 7). Real tokenizers count differently, so each request
records `usage.prompt_tokens` from the response when the server sends it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import requests

from deployer import openai_wire as wire
from deployer.benchstats import EngineSample, PlannedPoint, Point, RequestSample, aggregate
from deployer.errors import VerifyFailed
from deployer.planner import ServicePlan

# The stand-in's chat template: 4 tokens per message + 3 for the generation prompt.
CHAT_TEMPLATE_TOKENS = 7
WORDS = ("time", "year", "people", "way", "day", "thing", "world", "school", "state", "family")
SCRAPE_INTERVAL_S = 0.2
CONNECT_TIMEOUT_S = 5.0
STOP_GRACE_S = 2.0  # after Ctrl-C, how long workers get to notice before they are left behind

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
    """One service's share of a point."""

    endpoint: Endpoint
    concurrency: int
    prompt_tokens: int
    max_tokens: int
    max_requests: int
    duration_s: float
    thinking: bool = False
    timeout_s: float = 300.0


@dataclass(frozen=True)
class LoadResult:
    load: Load
    samples: tuple[RequestSample, ...]
    engine: tuple[EngineSample, ...]
    duration_s: float
    stopped_by: str


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
        stream = wire.ChunkStream(response.iter_lines())
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


# --- /metrics --------------------------------------------------------------------------------


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


def _scrape(
    session: requests.Session, base_url: str, done: threading.Event, out: list[EngineSample]
) -> None:
    while not done.is_set():
        try:
            response = session.get(base_url + "/metrics", timeout=2)
        except requests.RequestException:
            return
        if response.status_code != 200:
            return
        out.append(parse_metrics(response.text))
        done.wait(SCRAPE_INTERVAL_S)


# --- running a point -------------------------------------------------------------------------


@dataclass
class _LoadState:
    load: Load
    deadline: float
    salt: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0
    samples: list[RequestSample] = field(default_factory=list)
    last_end: float = 0.0
    stopped_by: str = "requests"

    def next_index(self, now: float, stop: threading.Event) -> int | None:
        with self.lock:
            if stop.is_set():
                self.stopped_by = "interrupted"
                return None
            if self.issued >= self.load.max_requests:
                return None
            if now >= self.deadline:
                self.stopped_by = "duration"
                return None
            self.issued += 1
            return self.issued - 1

    def done(self) -> int:
        with self.lock:
            return len(self.samples)


def _worker(
    state: _LoadState,
    session_factory: SessionFactory,
    started: float,
    stop: threading.Event,
    clock: Callable[[], float],
) -> None:
    with session_factory() as session:
        while True:
            index = state.next_index(clock(), stop)
            if index is None:
                return
            prompt = synthetic_prompt(state.load.prompt_tokens, f"{state.salt}-{index}")
            result = stream_once(
                session, state.load, prompt, index, started=started, stop=stop, clock=clock
            )
            if result.prompt_tokens is None and result.ok:
                result = replace(result, prompt_tokens=state.load.prompt_tokens)
            with state.lock:
                state.samples.append(result)
                state.last_end = max(state.last_end, clock())


def run_loads(
    loads: Sequence[Load],
    session_factory: SessionFactory,
    *,
    progress: Callable[[int, int], None] | None = None,
    poll_s: float = 0.2,
    clock: Callable[[], float] = time.perf_counter,
) -> list[LoadResult]:
    """Run the loads at the same time (one for a solo point, one per service when mixed) and
    wait for them. Ctrl-C stops the workers and re-raises KeyboardInterrupt."""
    started = clock()
    stop = threading.Event()
    scraped = threading.Event()
    states = [_LoadState(load, started + load.duration_s, secrets.token_hex(3)) for load in loads]
    threads: list[threading.Thread] = []
    engine: list[list[EngineSample]] = [[] for _ in loads]
    scrapers: list[tuple[threading.Thread, requests.Session]] = []
    for state, out in zip(states, engine, strict=True):
        session = session_factory()
        scraper = threading.Thread(
            target=_scrape,
            args=(session, state.load.endpoint.base_url, scraped, out),
            daemon=True,
        )
        scraper.start()
        scrapers.append((scraper, session))
        for _ in range(state.load.concurrency):
            thread = threading.Thread(
                target=_worker, args=(state, session_factory, started, stop, clock), daemon=True
            )
            thread.start()
            threads.append(thread)
    limit = sum(load.max_requests for load in loads)
    try:
        while any(t.is_alive() for t in threads):
            if progress is not None:
                progress(sum(s.done() for s in states), limit)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        stop.set()
        scraped.set()
        give_up = time.monotonic() + STOP_GRACE_S
        for thread in threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        raise
    finally:
        scraped.set()
        for scraper, session in scrapers:
            scraper.join(2)
            session.close()
    if progress is not None:
        progress(sum(s.done() for s in states), limit)
    return [
        LoadResult(
            load=state.load,
            samples=tuple(sorted(state.samples, key=lambda s: s.index)),
            engine=tuple(out),
            duration_s=max(0.0, (state.last_end or started) - started),
            stopped_by=state.stopped_by,
        )
        for state, out in zip(states, engine, strict=True)
    ]


def preflight(session: requests.Session, endpoint: Endpoint, thinking: bool) -> str | None:
    """One tiny request before the sweep: why the service cannot be benched, or None."""
    load = Load(endpoint, 1, 16, 4, 1, 60.0, thinking=thinking, timeout_s=60.0)
    result = stream_once(session, load, synthetic_prompt(16, "preflight"), 0, started=0.0)
    return result.error


# --- the sweep -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointRecord:
    """A measured point with its requests (the requests go to requests.csv)."""

    point: Point
    samples: tuple[RequestSample, ...]


@dataclass(frozen=True)
class SweepProgress:
    number: int  # 1-based
    total: int
    label: str
    done: int
    limit: int
    elapsed_s: float
    duration_s: float


@dataclass(frozen=True)
class SweepResult:
    records: tuple[PointRecord, ...]
    interrupted: str | None  # the point that was running when Ctrl-C came


def requests_for(concurrency: int, requests_per_point: int | None) -> int:
    """Requests per service per point: as asked, else 4 per worker and at least 16."""
    return requests_per_point or max(16, 4 * concurrency)


def run_sweep(
    endpoints: Mapping[str, Endpoint],
    planned: Sequence[PlannedPoint],
    session_factory: SessionFactory,
    *,
    max_tokens: int,
    requests_per_point: int | None,
    duration_s: float,
    timeout_s: float = 300.0,
    thinking: bool = False,
    on_progress: Callable[[SweepProgress], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SweepResult:
    """Check every endpoint answers, then run the planned points in order. Ctrl-C ends the
    sweep: the points finished so far are returned, the interrupted one is dropped."""
    with session_factory() as session:
        for name, endpoint in endpoints.items():
            error = preflight(session, endpoint, thinking)
            if error is not None:
                raise VerifyFailed(
                    f"bench: {name} at {endpoint.base_url} cannot be benched: {error}",
                    hint="see `qwen-deploy verify` and `qwen-deploy status`",
                )
    records: list[PointRecord] = []
    for number, step in enumerate(planned, 1):
        loads = [
            Load(
                endpoints[name],
                step.concurrency,
                prompt,
                max_tokens,
                requests_for(step.concurrency, requests_per_point),
                duration_s,
                thinking=thinking,
                timeout_s=timeout_s,
            )
            for name, prompt in step.loads
        ]
        begin = clock()

        def report(
            done: int,
            limit: int,
            number: int = number,
            step: PlannedPoint = step,
            begin: float = begin,
        ) -> None:
            if on_progress is not None:
                on_progress(
                    SweepProgress(
                        number, len(planned), step.label, done, limit, clock() - begin, duration_s
                    )
                )

        try:
            results = run_loads(loads, session_factory, progress=report, clock=clock)
        except KeyboardInterrupt:
            return SweepResult(tuple(records), step.label)
        for result in results:
            load = result.load
            point = aggregate(
                load.endpoint.service.name,
                step.mode,
                load.concurrency,
                load.prompt_tokens,
                load.max_tokens,
                result.samples,
                result.duration_s,
                result.engine,
                result.stopped_by,
            )
            records.append(PointRecord(point, result.samples))
    return SweepResult(tuple(records), None)


def iter_samples(records: Sequence[PointRecord]) -> Iterator[tuple[Point, RequestSample]]:
    for record in records:
        for sample in record.samples:
            yield record.point, sample

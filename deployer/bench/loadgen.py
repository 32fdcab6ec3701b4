"""The bench's HTTP load: workers (one thread and one `requests.Session` each) send streaming
chat completions and time every token, back to back (closed loop) or at scheduled arrival
times (open loop); a scraper reads the engine's /metrics meanwhile. Every point is bounded by
a request count AND a wall time. Only the CLI builds sessions (through `session_factory`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import requests

from deployer.bench.client import (
    Load,
    SessionFactory,
    scrape_metrics,
    stream_once,
)
from deployer.bench.samples import EngineSample, RequestSample
from deployer.bench.sweep import workers_for

SCRAPE_INTERVAL_S = 0.2
STOP_GRACE_S = 2.0  # after Ctrl-C, how long workers get to notice before they are left behind


@dataclass(frozen=True)
class LoadResult:
    load: Load
    samples: tuple[RequestSample, ...]
    engine: tuple[EngineSample, ...]
    duration_s: float
    stopped_by: str


def _scrape(
    session: requests.Session, base_url: str, done: threading.Event, out: list[EngineSample]
) -> None:
    while not done.is_set():
        sample = scrape_metrics(session, base_url)
        if sample is None:
            return
        out.append(sample)
        done.wait(SCRAPE_INTERVAL_S)


@dataclass
class _LoadState:
    load: Load
    deadline: float
    salt: str
    started: float = 0.0
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
            due = self.due(self.issued)
            if max(now, due) >= self.deadline:
                self.stopped_by = "duration"
                return None
            self.issued += 1
            return self.issued - 1

    def due(self, index: int) -> float:
        """When request `index` is to be sent (open loop), or at once (closed loop)."""
        arrivals = self.load.arrivals
        return self.started + arrivals[index] if index < len(arrivals) else 0.0

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
            wait = state.due(index) - clock()
            if wait > 0 and stop.wait(wait):
                return
            prompt = state.load.prompt(index, state.salt)
            result = stream_once(
                session, state.load, prompt, index, started=started, stop=stop, clock=clock
            )
            if result.prompt_tokens is None and result.ok and not state.load.prompts:
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
    states = [
        _LoadState(load, started + load.duration_s, secrets.token_hex(3), started) for load in loads
    ]
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
        # Never more threads than requests: `-c 1000 --requests-per-point 1` starts one.
        for _ in range(workers_for(state.load.concurrency, state.load.max_requests)):
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

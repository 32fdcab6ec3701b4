"""Admission: in-flight caps per GPU group (tiers that share a GPU are capped together), the
saturation read from the tiers' own metrics, and per-key requests/minute and concurrency."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from deployer.gateway.config import GatewayKey, GpuGroup
from deployer.gateway.errors import ApiError

Clock = Callable[[], float]
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60


def parse_saturation(text: str) -> tuple[float, float]:
    """(requests waiting, KV-cache use 0..1) from a vLLM /metrics page, summed over engines."""
    waiting = 0.0
    kv = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_waiting"):
            waiting += _value(line)
        elif line.startswith(("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")):
            kv = max(kv, _value(line))
    return waiting, kv


def _value(line: str) -> float:
    try:
        return float(line.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0.0


def retry_after(queued: int, drain_per_s: float) -> int:
    """Seconds until a slot is likely free: the queue ahead over the measured drain rate."""
    if drain_per_s <= 0:
        return 5
    seconds = math.ceil((queued + 1) / drain_per_s)
    return max(MIN_RETRY_AFTER_S, min(MAX_RETRY_AFTER_S, seconds))


@dataclass
class _Drain:
    """Completions per second, smoothed over a few seconds."""

    rate: float = 0.0
    last: float = 0.0
    count: int = 0

    def tick(self, now: float) -> None:
        self.count += 1
        elapsed = now - self.last
        if elapsed >= 1.0:
            sample = self.count / elapsed
            self.rate = sample if self.rate == 0 else 0.7 * self.rate + 0.3 * sample
            self.last, self.count = now, 0


class GroupGate:
    """Caps the requests in flight on one GPU group; the rest wait in FIFO order, bounded."""

    def __init__(
        self, group: GpuGroup, max_queue: int, queue_timeout_s: float, clock: Clock = time.monotonic
    ) -> None:
        self.group = group
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.clock = clock
        self.in_flight = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.saturated_by: set[str] = set()  # tiers whose own queue or KV cache is full
        self.frozen_cap: int | None = None
        self.drain = _Drain(last=clock())

    @property
    def cap(self) -> int:
        """While a tier of the group is saturated, the load stops growing: a finished request
        is replaced, no more."""
        return self.group.cap if self.frozen_cap is None else min(self.group.cap, self.frozen_cap)

    @property
    def queued(self) -> int:
        return len(self.waiters)

    def set_saturated(self, tier: str, saturated: bool) -> None:
        was = bool(self.saturated_by)
        if saturated:
            self.saturated_by.add(tier)
        else:
            self.saturated_by.discard(tier)
        if self.saturated_by and not was:
            self.frozen_cap = max(1, self.in_flight)
        elif not self.saturated_by and was:
            self.frozen_cap = None
            self._wake()

    def try_acquire(self) -> bool:
        if self.in_flight < self.cap and not self.waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        if len(self.waiters) >= self.max_queue:
            raise self._rejection("its queue is full")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout_s)
        except asyncio.TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # granted just as the wait ran out: keep the slot
            raise self._rejection(f"no slot freed within {self.queue_timeout_s:g} s") from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the client left right after getting the slot
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter in self.waiters:
                self.waiters.remove(waiter)

    def release(self) -> None:
        self.in_flight -= 1
        self.drain.tick(self.clock())
        self._wake()

    def _wake(self) -> None:
        while self.waiters and self.in_flight < self.cap:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def _rejection(self, why: str) -> ApiError:
        gpus = ",".join(str(g) for g in self.group.gpus)
        return ApiError(
            429,
            f"GPU {gpus} ({', '.join(self.group.tiers)}) is busy: {self.in_flight} requests in "
            f"flight (cap {self.cap}), {self.queued} waiting; {why}",
            retry_after=retry_after(self.queued, self.drain.rate),
            err_type="RateLimitError",
        )


class KeyLimiter:
    """Requests per minute (sliding window) and concurrent requests of one gateway key."""

    def __init__(self, key: GatewayKey, clock: Clock = time.monotonic) -> None:
        self.key = key
        self.clock = clock
        self.recent: deque[float] = deque()
        self.in_flight = 0

    def acquire(self) -> None:
        now = self.clock()
        while self.recent and self.recent[0] <= now - 60.0:
            self.recent.popleft()
        if self.key.rpm is not None and len(self.recent) >= self.key.rpm:
            wait = math.ceil(self.recent[0] + 60.0 - now)
            raise ApiError(
                429,
                f"key {self.key.name!r} is limited to {self.key.rpm} requests per minute",
                retry_after=max(MIN_RETRY_AFTER_S, wait),
            )
        if self.key.concurrent is not None and self.in_flight >= self.key.concurrent:
            raise ApiError(
                429,
                f"key {self.key.name!r} is limited to {self.key.concurrent} concurrent requests",
                retry_after=MIN_RETRY_AFTER_S,
            )
        self.recent.append(now)
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

"""The engine: scheduling (max_num_seqs running, the rest waiting), pacing and metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .generation import Generation
from .logger import log
from .settings import Settings

POLL_SECONDS = 0.02  # how often a waiting or prefilling request looks for its client


class ClientGone(Exception):
    """The client closed its connection before the response was complete."""


def _never() -> bool:
    return False


def _sleep(seconds: float, cancelled: Callable[[], bool]) -> None:
    """Sleep, looking every POLL_SECONDS (and at the end) whether the client is gone."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(min(POLL_SECONDS, remaining))
        if cancelled():
            raise ClientGone
        if remaining <= POLL_SECONDS:
            return


class Engine:
    """The requests in flight, their pacing, and the counters /metrics and the stats log show."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cv = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.running_tokens = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0, "error": 0}
        self.chat_served = 0
        self.healthy = "never_healthy" not in settings.faults
        self._interval_prompt = 0
        self._interval_generation = 0

    def acquire(self, tokens: int, cancelled: Callable[[], bool] = _never) -> None:
        """Wait for a running slot (max_num_seqs); ClientGone if the client leaves meanwhile."""
        with self.cv:
            self.waiting += 1
            try:
                while self.running >= self.settings.max_num_seqs:
                    self.cv.wait(timeout=POLL_SECONDS)
                    if cancelled():
                        raise ClientGone
            finally:
                self.waiting -= 1
            self.running += 1
            self.running_tokens += tokens
            self.prompt_tokens_total += tokens
            self._interval_prompt += tokens

    def release(self, tokens: int, generated: int, reason: str) -> None:
        with self.cv:
            self.running -= 1
            self.running_tokens -= tokens
            self.generation_tokens_total += generated
            self._interval_generation += generated
            self.success[reason] = self.success.get(reason, 0) + 1
            self.cv.notify()

    def prefill_seconds(self, prompt_tokens: int) -> float:
        """Time to the first token: a fixed part plus the prompt at the prefill rate."""
        settings = self.settings
        rate = settings.prefill_tokens_per_second
        return settings.ttft_seconds + (prompt_tokens / rate if rate > 0 else 0.0)

    def run(
        self,
        request_id: str,
        prompt_tokens: int,
        generation: Generation,
        emit: Callable[[int], None],
        cancelled: Callable[[], bool] = _never,
    ) -> str:
        """Hold a running slot and pace the tokens; emit(i) is called as token i is produced.

        A client that goes away (cancelled() turns true, or emit cannot write) aborts the
        request as vLLM does: finished_reason "abort" in the metrics and, with
        --enable-log-requests, AsyncLLM's two log lines.
        """
        settings = self.settings
        log_requests = bool(settings.args.enable_log_requests)
        try:
            self.acquire(prompt_tokens, cancelled)
        except ClientGone:
            self._aborted(request_id, log_requests)
            with self.cv:
                self.success["abort"] += 1
            raise
        if log_requests:
            log("INFO", "async_llm.py:376", f"Added request {request_id}.")
        reason, produced = "abort", 0
        try:
            if "slow" in settings.faults:
                _sleep(float(settings.faults["slow"] or 1), cancelled)
            _sleep(self.prefill_seconds(prompt_tokens), cancelled)
            per_token = 1.0 / settings.tokens_per_second if settings.tokens_per_second > 0 else 0
            start = time.monotonic()
            for i in range(generation.completion_tokens):
                _sleep(start + i * per_token - time.monotonic(), cancelled)
                emit(i)
                produced = i + 1
            reason = generation.finish_reason
            return reason
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            self._aborted(request_id, log_requests)
            raise
        finally:
            self.release(prompt_tokens, produced, reason)

    @staticmethod
    def _aborted(request_id: str, log_requests: bool) -> None:
        if log_requests:  # vllm/v1/engine/async_llm.py: abort(), then generate()'s handler
            log("INFO", "async_llm.py:757", f"Aborted request(s) {request_id}.")
            log("INFO", "async_llm.py:560", f"Request {request_id} aborted.")

    def stats_line(self, interval: float) -> str | None:
        with self.cv:
            prompt, generation = self._interval_prompt, self._interval_generation
            self._interval_prompt = self._interval_generation = 0
            if not prompt and not generation and not self.running and not self.waiting:
                return None
            return (
                f"Engine 000: Avg prompt throughput: {prompt / interval:.1f} tokens/s, "
                f"Avg generation throughput: {generation / interval:.1f} tokens/s, "
                f"Running: {self.running} reqs, Waiting: {self.waiting} reqs, "
                f"GPU KV cache usage: {100 * self.kv_usage():.1f}%, "
                "Prefix cache hit rate: 0.0%"
            )

    def kv_usage(self) -> float:
        return (
            min(1.0, self.running_tokens / self.settings.kv_tokens)
            if self.settings.kv_tokens
            else 0.0
        )

    def metrics(self) -> str:
        name = self.settings.served_names[0].replace("\\", "\\\\").replace('"', '\\"')
        labels = f'model_name="{name}",engine="0"'
        with self.cv:
            gauges = [
                (
                    "vllm:num_requests_running",
                    "Number of requests in model execution batches.",
                    self.running,
                ),
                (
                    "vllm:num_requests_waiting",
                    "Number of requests waiting to be processed.",
                    self.waiting,
                ),
                (
                    "vllm:kv_cache_usage_perc",
                    "KV-cache usage. 1 means 100 percent usage.",
                    self.kv_usage(),
                ),
            ]
            counters = [
                (
                    "vllm:prompt_tokens_total",
                    "Number of prefill tokens processed.",
                    self.prompt_tokens_total,
                ),
                (
                    "vllm:generation_tokens_total",
                    "Number of generation tokens processed.",
                    self.generation_tokens_total,
                ),
            ]
            success = dict(self.success)
        out: list[str] = []
        for metric, help_text, value in gauges:
            out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
            out.append(f"{metric}{{{labels}}} {float(value)}")
        for metric, help_text, value in counters:
            out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
            out.append(f"{metric}{{{labels}}} {float(value)}")
        metric = "vllm:request_success_total"
        out += [
            f"# HELP {metric} Count of successfully processed requests.",
            f"# TYPE {metric} counter",
        ]
        for reason, count in success.items():
            out.append(f'{metric}{{{labels},finished_reason="{reason}"}} {float(count)}')
        return "\n".join(out) + "\n"

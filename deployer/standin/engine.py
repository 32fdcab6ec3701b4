"""The engine: scheduling (max_num_seqs running, the rest waiting), pacing and metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .generation import Generation
from .settings import Settings


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

    def acquire(self, tokens: int) -> None:
        with self.cv:
            self.waiting += 1
            while self.running >= self.settings.max_num_seqs:
                self.cv.wait()
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

    def run(self, prompt_tokens: int, generation: Generation, emit: Callable[[int], None]) -> str:
        """Hold a running slot and pace the tokens; emit(i) is called as token i is produced."""
        settings = self.settings
        self.acquire(prompt_tokens)
        reason = "abort"
        try:
            if "slow" in settings.faults:
                time.sleep(float(settings.faults["slow"] or 1))
            time.sleep(settings.ttft_seconds)
            per_token = 1.0 / settings.tokens_per_second if settings.tokens_per_second > 0 else 0
            start = time.monotonic()
            for i in range(generation.completion_tokens):
                delay = start + i * per_token - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                emit(i)
            reason = generation.finish_reason
            return reason
        finally:
            self.release(prompt_tokens, generation.completion_tokens, reason)

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

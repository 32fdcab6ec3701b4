"""/metrics: requests, tokens, TTFT, in-flight, queued, rejected and fallbacks per tier and key.
Keys appear by their name from the profile, never by their secret."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "qwen_deploy_gateway_"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests", "Requests answered.", ["tier", "key", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens",
            "Prompt tokens, as the tiers counted them.",
            ["tier", "key"],
            registry=r,
        )
        self.completion_tokens = Counter(
            PREFIX + "completion_tokens",
            "Generated tokens, streams included.",
            ["tier", "key"],
            registry=r,
        )
        self.ttft = Histogram(
            PREFIX + "ttft_seconds",
            "Time to the tier's first byte.",
            ["tier"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            PREFIX + "in_flight", "Requests being served.", ["tier", "key"], registry=r
        )
        self.queued = Gauge(
            PREFIX + "queued", "Requests waiting for a slot on a GPU group.", ["group"], registry=r
        )
        self.rejected = Counter(
            PREFIX + "rejected",
            "Requests refused (429/503/504).",
            ["tier", "key", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            PREFIX + "fallbacks",
            "Requests served by another tier than asked.",
            ["from_tier", "to_tier", "key"],
            registry=r,
        )
        self.tier_ready = Gauge(
            PREFIX + "tier_ready", "1 when the tier answers with its key.", ["tier"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

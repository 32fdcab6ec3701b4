"""Stand-in for `vllm serve` used by the integration tests."""

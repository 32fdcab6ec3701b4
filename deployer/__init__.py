"""qwen-deploy: plan, render, start and verify Qwen3 endpoints served by vLLM."""

__version__ = "0.1.0"

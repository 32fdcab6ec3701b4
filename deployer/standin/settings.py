"""The server's settings after start-up, and the stand-in's own knobs (faults, pacing)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from .model_info import ModelInfo


def parse_faults(text: str | None) -> dict[str, str]:
    """STANDIN_FAULT='slow:2,no_auth' -> {'slow': '2', 'no_auth': ''}."""
    known = {
        "crash_on_start",
        "never_healthy",
        "die_after",
        "slow",
        "no_auth",
        "wrong_model",
        "broken_stream",
        "empty_content",
        "oom_on_start",
    }
    faults: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, arg = item.partition(":")
        if name not in known:
            raise ValueError(f"unknown STANDIN_FAULT {name!r}; known: {', '.join(sorted(known))}")
        faults[name] = arg
    return faults


@dataclass
class Settings:
    """Everything the server needs after start-up."""

    args: argparse.Namespace
    info: ModelInfo
    served_names: list[str]
    max_model_len: int
    max_num_seqs: int
    api_keys: list[str]
    faults: dict[str, str]
    thinking_tokens: int
    answer_tokens: int | None
    tokens_per_second: float
    ttft_seconds: float
    kv_tokens: int
    default_sampling: dict[str, Any]
    fingerprint: str
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    prefill_tokens_per_second: float = 0.0  # 0: the prompt's length does not matter


def env_float(env: dict[str, str], key: str, default: float) -> float:
    value = env.get(key)
    return default if value in (None, "") else float(value)

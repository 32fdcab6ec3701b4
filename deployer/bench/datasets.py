"""Prompts from a ShareGPT-format file, as `vllm bench serve --dataset-name sharegpt` reads one:
a JSON list of {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}, ...]};
the first turn of each conversation with at least two turns is a prompt. Output length is the
bench's --max-tokens (sent with ignore_eos), not the recorded answer's, so every point asks for
the same work. Without a tokenizer, a prompt's length is estimated at 4 characters a token and
prompts that would not fit a service's context are left out; the measured `usage.prompt_tokens`
is what the report shows."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.errors import BenchError

CHARS_PER_TOKEN = 4  # the usual estimate for English text on BPE tokenizers
MAX_PROMPTS = 10_000  # read at most this many (vLLM samples --num-prompts from the file too)


@dataclass(frozen=True)
class Dataset:
    name: str  # what the report calls it: "sharegpt"
    source: str  # the file
    prompts: tuple[str, ...]

    def fitting(self, max_model_len: int, max_tokens: int) -> tuple[str, ...]:
        """The prompts whose estimated length leaves room for max_tokens in the context."""
        room = (max_model_len - max_tokens) * CHARS_PER_TOKEN
        return tuple(p for p in self.prompts if len(p) <= room)


def _first_turn(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    turns = entry.get("conversations") or entry.get("conversation")
    if not isinstance(turns, list) or len(turns) < 2 or not isinstance(turns[0], dict):
        return None
    value = turns[0].get("value", turns[0].get("content"))
    return value if isinstance(value, str) and value.strip() else None


def load_sharegpt(path: Path, seed: int = 0) -> Dataset:
    """The file's prompts, shuffled with `seed` (vLLM shuffles too), at most MAX_PROMPTS."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BenchError(f"--dataset: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BenchError(f"--dataset: {path} is not JSON ({exc})") from None
    if not isinstance(data, list):
        raise BenchError(f"--dataset: {path} is not a ShareGPT file (expected a JSON list)")
    prompts = [p for p in map(_first_turn, data) if p is not None]
    if not prompts:
        raise BenchError(
            f"--dataset: {path} has no conversation with two or more turns "
            '(expected [{"conversations": [{"from": "human", "value": ...}, ...]}, ...])'
        )
    random.Random(seed).shuffle(prompts)
    return Dataset("sharegpt", str(path), tuple(prompts[:MAX_PROMPTS]))

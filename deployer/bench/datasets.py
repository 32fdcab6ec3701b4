"""Prompts from a ShareGPT-format file, as `vllm bench serve --dataset-name sharegpt` reads one:
a JSON list of {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}, ...]};
the first turn of each conversation with at least two turns is a prompt. Output length is the
bench's --max-tokens (sent with ignore_eos), not the recorded answer's, so every point asks for
the same work. Without a tokenizer, a prompt's length is estimated at 4 characters a token and
prompts that would not fit a service's context are left out; the measured `usage.prompt_tokens`
is what the report shows."""

from __future__ import annotations

import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.errors import BenchError
from deployer.safeload import load_json, read_text

CHARS_PER_TOKEN = 4  # the usual estimate for English text on BPE tokenizers
MAX_PROMPTS = 10_000  # read at most this many (vLLM samples --num-prompts from the file too)
# ShareGPT_V3_unfiltered_cleaned_split.json, the file vLLM's docs use, is some 640 MiB.
MAX_DATASET_BYTES = 1 << 30


@dataclass(frozen=True)
class Dataset:
    name: str  # what the report calls it: "sharegpt"
    source: str  # the file
    prompts: tuple[str, ...]

    def fitting(self, max_model_len: int, max_tokens: int) -> tuple[str, ...]:
        """The prompts whose estimated length leaves room for max_tokens in the context."""
        room = (max_model_len - max_tokens) * CHARS_PER_TOKEN
        return tuple(p for p in self.prompts if len(p) <= room)


SHAREGPT_HINT = (
    'a ShareGPT file is [{"conversations": [{"from": "human", "value": ...}, ...]}, ...]'
)


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
        info = os.stat(path)
    except OSError as exc:
        raise BenchError(f"--dataset: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise BenchError(f"--dataset: {path} is not a regular file", hint="name a JSON file")
    if info.st_size > MAX_DATASET_BYTES:
        raise BenchError(
            f"--dataset: {path} is {info.st_size / (1 << 30):.1f} GiB, more than "
            f"{MAX_DATASET_BYTES >> 30} GiB",
            hint="keep a sample of its conversations in a smaller file",
        )
    # safeload's limits: size (again: the file may grow), UTF-8 with its line, JSON without
    # NaN, huge integers or nesting deeper than 64, each as a BenchError that names the file.
    try:
        text = read_text(path, "file", BenchError, MAX_DATASET_BYTES)
    except BenchError as exc:
        raise BenchError(f"--dataset: {exc.message}", hint=exc.hint) from None
    try:
        data = load_json(text, "dataset", BenchError)
    except BenchError as exc:
        detail = exc.message.removeprefix("dataset: ").removeprefix("not valid JSON ")
        raise BenchError(
            f"--dataset: {path} is not JSON ({detail.strip('()')})", hint=SHAREGPT_HINT
        ) from None
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

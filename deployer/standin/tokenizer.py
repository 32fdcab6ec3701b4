"""The stand-in's tokenizer: one token per whitespace-separated word, with Qwen3's special tokens.

Ids are stable (a hash of the word), so every stand-in gives a word the same id; /detokenize
turns back the ids this process has handed out (others decode to nothing).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

from .generation import message_text

VOCAB_SIZE = 151936  # Qwen3's config.json vocab_size
SPECIAL_TOKENS = {"\n": 198, "<|im_start|>": 151644, "<|im_end|>": 151645}
_FIRST_WORD_ID, _WORD_IDS = 1000, 150000  # word ids stay below Qwen3's special tokens
_seen: dict[int, str] = {v: k for k, v in SPECIAL_TOKENS.items()}
_lock = threading.Lock()


def token_id(token: str) -> int:
    """The id of one token (a word or a special token); remembered for detokenize."""
    special = SPECIAL_TOKENS.get(token)
    if special is not None:
        return special
    digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
    ident = _FIRST_WORD_ID + int.from_bytes(digest, "big") % _WORD_IDS
    with _lock:
        _seen.setdefault(ident, token)
    return ident


def prompt_tokens(text: str) -> list[str]:
    """The tokens of a plain prompt (/v1/completions, /tokenize with `prompt`)."""
    return text.split()


def chat_tokens(
    messages: Sequence[Any], add_generation_prompt: bool, continue_final_message: bool
) -> list[str]:
    """The tokens of Qwen3's chat template: 4 per message plus its words, 3 for the generation
    prompt (generation.chat_prompt_tokens counts the same)."""
    tokens: list[str] = []
    for message in messages:
        role = str(message.get("role", "")) if isinstance(message, dict) else ""
        tokens += ["<|im_start|>", role, "\n", *message_text(message).split(), "<|im_end|>"]
    if continue_final_message and tokens:
        tokens.pop()  # the last message stays open for the model to continue
    elif add_generation_prompt:
        tokens += ["<|im_start|>", "assistant", "\n"]
    return tokens


def decode(ids: Sequence[int]) -> str:
    """Text for token ids: words joined by spaces, special tokens and newlines without."""
    with _lock:
        tokens = [_seen.get(i, "") for i in ids]
    out = ""
    for i, token in enumerate(tokens):
        glued = i == 0 or token in SPECIAL_TOKENS or tokens[i - 1] in SPECIAL_TOKENS
        out += token if glued or not token else " " + token
    return out

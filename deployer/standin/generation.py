"""What the model 'says': deterministic tokens (whitespace-separated words) for a prompt."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

CHAT_TEMPLATE_TOKENS_PER_MESSAGE = 4  # <|im_start|> role \n ... <|im_end|> \n


CHAT_TEMPLATE_TOKENS_GENERATION_PROMPT = 3  # <|im_start|> assistant \n


def count_tokens(text: str) -> int:
    """Stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def message_text(message: Any) -> str:
    """The text of an OpenAI chat message (string content or a list of text parts)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def chat_prompt_tokens(messages: Sequence[Any]) -> int:
    """Prompt tokens of a chat request: words of all messages plus the template overhead."""
    words = sum(count_tokens(message_text(m)) for m in messages)
    return (
        words
        + CHAT_TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
        + CHAT_TEMPLATE_TOKENS_GENERATION_PROMPT
    )


def chat_prompt_text(messages: Sequence[Any], enable_thinking: bool) -> str:
    """The prompt Qwen3's chat template renders (what `return_prompt_text` returns)."""
    turns = "".join(
        f"<|im_start|>{m.get('role')}\n{message_text(m)}<|im_end|>\n"
        for m in messages
        if isinstance(m, dict)
    )
    generation_prompt = "<|im_start|>assistant\n"
    if not enable_thinking:  # the template closes an empty thinking block itself
        generation_prompt += "<think>\n\n</think>\n\n"
    return turns + generation_prompt


@dataclass(frozen=True)
class Piece:
    """One generated token: the text it adds to a channel ("reasoning" or "content").

    thought: a thinking token between <think> and </think> (not the tags themselves), what a
    reasoning parser counts as `usage.completion_tokens_details.reasoning_tokens`.
    """

    channel: str
    text: str
    thought: bool = False


@dataclass(frozen=True)
class Generation:
    """The tokens a request produces, and why it stopped."""

    pieces: tuple[Piece, ...]
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    def reasoning_tokens(self, first: int | None = None) -> int:
        """Thinking tokens among the first `first` tokens (all of them by default)."""
        return sum(p.thought for p in self.pieces[:first])

    def text(self, channel: str) -> str | None:
        joined = "".join(p.text for p in self.pieces if p.channel == channel)
        return joined or None


def answer_words(prompt_text: str, answer_tokens: int | None = None) -> list[str]:
    """The deterministic answer for a prompt: it quotes the prompt's first words."""
    words = ["Stand-in", "reply", "to:", *prompt_text.split()[:32]]
    if answer_tokens is not None:
        words = list(itertools.islice(itertools.cycle(words), max(0, answer_tokens)))
    return words


def thinking_words(prompt_text: str) -> Iterator[str]:
    """Endless deterministic 'thoughts' about the prompt."""
    seed = ["Okay,", "the", "user", "wrote:", *prompt_text.split()[:8]]
    return itertools.cycle([*seed, "Let", "me", "think", "this", "through."])


def generate_chat(
    prompt_text: str,
    *,
    max_tokens: int,
    thinking: bool,
    reasoning_parser: bool,
    thinking_tokens: int,
    answer_tokens: int | None = None,
) -> Generation:
    """What a Qwen3 model 'says' (only the first max_tokens tokens are built).

    Thinking: `<think>`, thinking_tokens words, `</think>`, then the answer. With the qwen3
    reasoning parser the thinking goes to the reasoning channel (tags dropped); without it, it
    stays inline in the content. Thinking counts against max_tokens, so a small max_tokens ends
    inside the thinking with no content and finish_reason "length".
    """

    def tokens() -> Iterator[Piece]:
        if thinking:
            channel = "reasoning" if reasoning_parser else "content"
            yield Piece(channel, "" if reasoning_parser else "<think>")
            for i, word in enumerate(
                itertools.islice(thinking_words(prompt_text), thinking_tokens)
            ):
                yield Piece(channel, ("\n" if i == 0 else " ") + word, thought=True)
            yield Piece(channel, "" if reasoning_parser else "\n</think>")
        for i, word in enumerate(answer_words(prompt_text, answer_tokens)):
            prefix = ("\n\n" if thinking else "") if i == 0 else " "
            yield Piece("content", prefix + word)

    pieces = tuple(itertools.islice(tokens(), max(0, max_tokens) + 1))
    if len(pieces) > max_tokens:
        return Generation(pieces[:max_tokens], "length")
    return Generation(pieces, "stop")


def generate_completion(
    prompt_text: str, *, max_tokens: int, answer_tokens: int | None
) -> Generation:
    """/v1/completions: the answer words continue the prompt (no chat template, no thinking)."""
    words = answer_words(prompt_text, answer_tokens)
    pieces = tuple(Piece("content", " " + w) for w in words[:max_tokens])
    return Generation(pieces, "length" if len(words) > max_tokens else "stop")

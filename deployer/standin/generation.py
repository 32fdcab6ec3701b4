"""What the model 'says': deterministic tokens (whitespace-separated words) for a prompt."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
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
    """The tokens a request produces, and why it stopped (stop_reason: the stop string hit)."""

    pieces: tuple[Piece, ...]
    finish_reason: str
    stop_reason: str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    def reasoning_tokens(self, first: int | None = None) -> int:
        """Thinking tokens among the first `first` tokens (all of them by default)."""
        return sum(p.thought for p in self.pieces[:first])

    def text(self, channel: str) -> str | None:
        joined = "".join(p.text for p in self.pieces if p.channel == channel)
        return joined or None


@dataclass(frozen=True)
class StopConditions:
    """When generation ends, as SamplingParams says it (vllm/v1/core/sched/utils.py::check_stop
    and the detokenizer's stop strings)."""

    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False


def find_stop(
    text: str, new_chars: int, stop: Sequence[str], include: bool
) -> tuple[str, int] | None:
    """vllm/v1/engine/detokenizer.py::check_stop_strings: (stop string, cut at) or None.

    Only the new characters (and a stop string's length before them) are searched; the cut is
    where the text ends (-1: no cut)."""
    if not new_chars or not stop:
        return None
    for stop_str in stop:
        index = text.find(stop_str, max(0, len(text) + 1 - new_chars - len(stop_str)))
        if index == -1:
            continue
        if include:
            index += len(stop_str)
            if index >= len(text):
                return stop_str, -1
        return stop_str, index
    return None


def _cut(pieces: list[Piece], at: int) -> tuple[Piece, ...]:
    """The same tokens with their text ending at character `at` of the joined text."""
    out, seen = [], 0
    for piece in pieces:
        keep = max(0, min(len(piece.text), at - seen))
        seen += len(piece.text)
        out.append(Piece(piece.channel, piece.text[:keep], piece.thought))
    return tuple(out)


def decode(natural: Iterator[Piece], more: Iterator[Piece], cond: StopConditions) -> Generation:
    """Run the model's tokens through vLLM's stop checks.

    natural: what the model says before it would sample EOS; more: what it says when EOS is
    masked (ignore_eos, or fewer than min_tokens so far). max_tokens ends first; stop strings
    count only after min_tokens.
    """
    pieces: list[Piece] = []
    text = ""
    source, eos = natural, False
    while True:
        # check_stop looks at the length before EOS (a natural end exactly at max_tokens
        # stays "stop", as the stand-in has always answered)
        if eos and len(pieces) >= cond.max_tokens:
            return Generation(tuple(pieces), "length")
        piece = None if eos else next(source, None)
        if piece is None:  # the model samples EOS here, and again after each masked one
            eos = True
            if not cond.ignore_eos and len(pieces) >= cond.min_tokens:
                return Generation(tuple(pieces), "stop")
            source = more
            piece = next(source)
        if len(pieces) >= cond.max_tokens:
            return Generation(tuple(pieces), "length")
        pieces.append(piece)
        text += piece.text
        if cond.stop and len(pieces) > cond.min_tokens:
            hit = find_stop(text, len(piece.text), cond.stop, cond.include_stop_str_in_output)
            if hit is not None:
                stop_str, at = hit
                return Generation(_cut(pieces, at) if at != -1 else tuple(pieces), "stop", stop_str)


def answer_words(prompt_text: str, answer_tokens: int | None = None) -> list[str]:
    """The deterministic answer for a prompt: it quotes the prompt's first words."""
    words = ["Stand-in", "reply", "to:", *prompt_text.split()[:32]]
    if answer_tokens is not None:
        words = list(itertools.islice(itertools.cycle(words), max(0, answer_tokens)))
    return words


def continuation(prompt_text: str) -> Iterator[Piece]:
    """What the model keeps saying past its answer when EOS is masked."""
    words = ["Stand-in", "reply", "to:", *prompt_text.split()[:32]]
    return (Piece("content", " " + w) for w in itertools.cycle(words))


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
    stop: StopConditions | None = None,
) -> Generation:
    """What a Qwen3 model 'says' (only the tokens up to the stop are built).

    Thinking: `<think>`, thinking_tokens words, `</think>`, then the answer. With the qwen3
    reasoning parser the thinking goes to the reasoning channel (tags dropped); without it, it
    stays inline in the content. Thinking counts against max_tokens, so a small max_tokens ends
    inside the thinking with no content and finish_reason "length". `stop` (its max_tokens is
    replaced by the argument) adds min_tokens, ignore_eos and stop strings.
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

    cond = replace(stop or StopConditions(max_tokens), max_tokens=max(0, max_tokens))
    return decode(tokens(), continuation(prompt_text), cond)


def generate_completion(
    prompt_text: str,
    *,
    max_tokens: int,
    answer_tokens: int | None,
    stop: StopConditions | None = None,
) -> Generation:
    """/v1/completions: the answer words continue the prompt (no chat template, no thinking)."""
    words = answer_words(prompt_text, answer_tokens)
    natural = (Piece("content", " " + w) for w in words)
    cond = replace(stop or StopConditions(max_tokens), max_tokens=max(0, max_tokens))
    return decode(natural, continuation(prompt_text), cond)

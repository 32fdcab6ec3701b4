"""The stand-in's stop conditions (max_tokens, min_tokens, ignore_eos, stop strings) as vLLM's
check_stop and detokenizer apply them, their request validation, and its tokenizer."""

from __future__ import annotations

from typing import Any

import pytest

from deployer.standin import generation, protocol, tokenizer
from deployer.standin.generation import StopConditions, generate_chat, generate_completion

PROMPT = "alpha beta gamma"  # the answer is "Stand-in reply to: alpha beta gamma" (6 tokens)


def completion(**cond: Any) -> generation.Generation:
    max_tokens = cond.pop("max_tokens", 100)
    return generate_completion(
        PROMPT,
        max_tokens=max_tokens,
        answer_tokens=None,
        stop=StopConditions(max_tokens, **cond),
    )


def text(gen: generation.Generation) -> str:
    return gen.text("content") or ""


def test_the_answer_ends_with_eos_by_default() -> None:
    gen = completion()
    assert (gen.completion_tokens, gen.finish_reason, gen.stop_reason) == (6, "stop", None)
    assert text(gen) == " Stand-in reply to: alpha beta gamma"


def test_ignore_eos_generates_exactly_max_tokens() -> None:
    for max_tokens in (1, 6, 7, 64, 500):
        gen = completion(max_tokens=max_tokens, ignore_eos=True)
        assert (gen.completion_tokens, gen.finish_reason) == (max_tokens, "length")
    # past the answer the model keeps talking about the prompt
    assert text(completion(max_tokens=9, ignore_eos=True)).split()[6:] == [
        "Stand-in",
        "reply",
        "to:",
    ]


def test_min_tokens_masks_eos_until_reached() -> None:
    gen = completion(min_tokens=10)
    assert (gen.completion_tokens, gen.finish_reason) == (10, "stop")
    assert completion(min_tokens=3).completion_tokens == 6  # already past it: no effect
    gen = completion(max_tokens=8, min_tokens=8)
    assert (gen.completion_tokens, gen.finish_reason) == (8, "length")


def test_stop_strings_cut_the_text_and_name_the_stop() -> None:
    gen = completion(stop=("beta",))
    assert (gen.finish_reason, gen.stop_reason) == ("stop", "beta")
    assert text(gen) == " Stand-in reply to: alpha "
    assert gen.completion_tokens == 5  # the token that completed the stop string counts
    gen = completion(stop=("beta",), include_stop_str_in_output=True)
    assert text(gen) == " Stand-in reply to: alpha beta"
    # a stop string across two tokens cuts the earlier one too
    gen = completion(stop=("reply to",))
    assert (text(gen), gen.completion_tokens, gen.stop_reason) == (" Stand-in ", 3, "reply to")
    # the earliest token decides; within one token, the first stop string listed wins
    assert completion(stop=("zzz", "to:", "reply")).stop_reason == "reply"
    assert completion(stop=("zzz", "gamma", "gam")).stop_reason == "gamma"
    assert completion(stop=("zzz",)).finish_reason == "stop"
    assert completion(stop=("zzz",)).stop_reason is None


def test_stop_strings_wait_for_min_tokens_and_yield_to_max_tokens() -> None:
    # "reply" is token 2: with min_tokens 3 it is not checked until token 4 has arrived
    gen = completion(stop=("reply",), min_tokens=3)
    assert gen.stop_reason is None and gen.completion_tokens == 6
    gen = completion(stop=("gamma",), max_tokens=4)
    assert (gen.finish_reason, gen.stop_reason, gen.completion_tokens) == ("length", None, 4)


def test_chat_thinking_counts_toward_min_tokens_and_ignore_eos() -> None:
    def chat(**cond: Any) -> generation.Generation:
        return generate_chat(
            PROMPT,
            max_tokens=40,
            thinking=True,
            reasoning_parser=True,
            thinking_tokens=4,
            stop=StopConditions(40, **cond),
        )

    natural = chat()
    assert natural.completion_tokens == 12 and natural.finish_reason == "stop"
    assert chat(ignore_eos=True).completion_tokens == 40
    assert chat(ignore_eos=True).reasoning_tokens() == 4
    assert chat(min_tokens=20).completion_tokens == 20


def test_find_stop_searches_only_new_text() -> None:
    assert generation.find_stop("abc stop", 5, ["stop"], False) == ("stop", 4)
    assert generation.find_stop("abc stop", 5, ["stop"], True) == ("stop", -1)
    # "stop" lies wholly in old text: vLLM already checked it and does not look again
    assert generation.find_stop("stop and more", 5, ["stop"], False) is None
    assert generation.find_stop("abc", 0, ["abc"], False) is None


# -- request fields --------------------------------------------------------------------------


def test_stop_conditions_from_a_request() -> None:
    cond = protocol.stop_conditions(
        {"ignore_eos": True, "min_tokens": 3, "stop": "x", "include_stop_str_in_output": "yes"},
        10,
    )
    assert cond == StopConditions(10, 3, True, ("x",), True)
    assert protocol.stop_conditions({}, 7) == StopConditions(7)
    assert protocol.stop_conditions({"stop": ["a", "b"]}, 7).stop == ("a", "b")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"min_tokens": -1}, 400, "min_tokens must be greater than or equal to 0, got -1."),
        (
            {"min_tokens": 11},
            400,
            "min_tokens must be less than or equal to max_tokens=10, got 11.",
        ),
        ({"ignore_eos": "maybe"}, 400, "Input should be a valid boolean"),
        ({"ignore_eos": [True]}, 400, "Input should be a valid boolean"),
        ({"stop": 5}, 400, "Input should be a valid string"),
        ({"stop": ["a", 1]}, 400, "Input should be a valid list"),
        ({"stop": ["a", ""]}, 400, "stop cannot contain an empty string."),
    ],
)
def test_bad_stop_fields_are_400s(body: dict[str, Any], status: int, message: str) -> None:
    with pytest.raises(protocol.RequestError) as caught:
        protocol.stop_conditions(body, 10)
    assert caught.value.status == status
    assert message in caught.value.body["error"]["message"]


# -- tokenizer -------------------------------------------------------------------------------


def test_token_ids_are_stable_and_decode_back() -> None:
    ids = [tokenizer.token_id(t) for t in tokenizer.prompt_tokens("Hello there, world")]
    assert len(ids) == 3 and all(1000 <= i < 151643 for i in ids)
    assert ids == [tokenizer.token_id(t) for t in ("Hello", "there,", "world")]
    assert tokenizer.decode(ids) == "Hello there, world"


def test_chat_tokens_match_the_prompt_token_count() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
    ]
    tokens = tokenizer.chat_tokens(messages, True, False)
    assert len(tokens) == generation.chat_prompt_tokens(messages) == 4 * 2 + 4 + 3
    assert tokens[:5] == ["<|im_start|>", "system", "\n", "Be", "brief."]
    ids = [tokenizer.token_id(t) for t in tokens]
    assert ids[0] == 151644 and ids[5] == 151645
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert len(tokenizer.chat_tokens(messages, False, False)) == len(tokens) - 3
    assert tokenizer.chat_tokens(messages, False, True)[-1] == "there"

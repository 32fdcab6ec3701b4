"""The reasoning and tool-call parsers vLLM 0.33.0 registers: what `--reasoning-parser` and
`--tool-call-parser` accept. Constants only, so that qwen-deploy's profile checks read them
without loading the rest of the stand-in."""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# ReasoningParserManager.list_registered() / ToolParserManager.list_registered() in 0.33.0
REASONING_PARSERS = _words(
    """
    deepseek_r1 deepseek_v3 deepseek_v4 deepseek_v41 poolside_v1 cohere_command3 cohere_command4
    ernie45 gemma4 glm45 glm47 holo2 hunyuan_a13b hy_v3 hy_v4 granite granite_thinking_parser hf
    inkling k2_horizon kimi_k2 kimi_k3 ling3 mimo minicpmv minimax_m2 minimax_m2_append_think
    minimax_m3 mistral muse muse_glimmer musespark1x nemotron_v3 olmo3 openai_gptoss plamo3
    qwen3 seed_oss step3 step3p5 step5 beam
    """
)


TOOL_CALL_PARSERS = _words(
    """
    apertus beam cohere_command3 cohere_command4 deepseek_v3 deepseek_v31 deepseek_v32
    deepseek_v4 deepseek_v41 dots ernie45 functiongemma gemma4 gigachat3 glm45 glm47 granite
    granite-20b-fc granite4 hermes hf hunyuan_a13b hy_v3 hy_v4 inkling internlm jamba k2_horizon
    kimi_k2 kimi_k3 lfm2 ling3 llama3_json llama4_json llama4_pythonic longcat mimo minicpm5
    minimax_m2 minimax_m3 mistral muse muse_glimmer musespark1x olmo3 openai phi4_mini_json
    plamo3 poolside_v1 pythonic qwen3_coder qwen3_json qwen3_xml seed_oss step3 step3p5 step5
    xlam
    """
)

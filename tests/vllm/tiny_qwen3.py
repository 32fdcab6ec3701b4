"""A Qwen3-shaped checkpoint made on the spot, so real vLLM can load configs and serve without
a hub: a tiny byte-level BPE tokenizer with Qwen3's special tokens and a ChatML template that
handles `<think>` like Qwen3's own, a config.json of any shape, and (optionally) random weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deployer.catalog import Checkpoint

# Qwen3's ids are impossible in a tiny vocabulary; vLLM looks the tokens up by text. As in
# Qwen3, the ChatML markers are special (dropped when decoding) and the think/tool markers are
# not, so they reach the reasoning parser.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
PLAIN_ADDED_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>")

# Qwen3's chat template without the tool-calling branches: ChatML turns, reasoning kept only
# after the last user turn, and `enable_thinking=False` pre-filling an empty think block.
CHAT_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
{%- set index = (messages|length - 1) - loop.index0 %}
{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}
{%- set ns.last_query_index = index %}
{%- endif %}
{%- endfor %}
{%- for message in messages %}
{%- set content = message.content if message.content is string else '' %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{%- set reasoning_content = '' %}
{%- if message.reasoning_content is string %}
{%- set reasoning_content = message.reasoning_content %}
{%- elif '</think>' in content %}
{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
{%- else %}
{{- '<|im_start|>assistant\\n' + content }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\\n\\n</think>\\n\\n' }}
{%- endif %}
{%- endif %}
"""

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Qwen3 answers questions about GPUs, "
    "memory, tokens and context windows. Hello, how are you? I am fine, thank you. "
    "def main(): return 0\n1234567890 {}[]()<>:;,.!?'\"-_=+*/\\|@#$%^&~`\n"
)


def build_tokenizer(directory: Path, vocab_size: int = 512) -> int:
    """Write tokenizer files into `directory`; return the vocabulary size (specials included)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(directory))
    return int(tokenizer.get_vocab_size())


def qwen3_config(**overrides: Any) -> dict[str, Any]:
    """A Qwen3ForCausalLM config.json; defaults are Qwen3-8B's shape."""
    config: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "attention_bias": False,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }
    config.update(overrides)
    return config


# quantization_config as the published checkpoints carry it (what vLLM matches --quantization
# against): Qwen's AWQ and block-wise FP8 repos, and RedHatAI's compressed-tensors NVFP4.
QUANTIZATION_CONFIGS: dict[str, dict[str, Any] | None] = {
    "bf16": None,
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
            "version": "gemm", "modules_to_not_convert": None},
    "fp8": {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
            "weight_block_size": [128, 128]},
    "nvfp4": {
        "quant_method": "compressed-tensors",
        "format": "nvfp4-pack-quantized",
        "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "format": "nvfp4-pack-quantized",
                "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                            "group_size": 16, "symmetric": True, "dynamic": False},
                "input_activations": {"num_bits": 4, "type": "float",
                                      "strategy": "tensor_group", "group_size": 16,
                                      "symmetric": True, "dynamic": "local"},
            }
        },
    },
}  # fmt: skip

# Qwen3 MoE config.json fields the catalog does not carry.
MOE_INTERMEDIATE = {"Qwen3-30B-A3B": 768, "Qwen3-235B-A22B": 1536}


def checkpoint_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """The config.json of a catalog checkpoint, rebuilt from the catalog's shape numbers."""
    family = checkpoint.family
    fields: dict[str, Any] = {
        "hidden_size": family.hidden_size,
        "intermediate_size": family.intermediate_size,
        "num_hidden_layers": family.layers,
        "num_attention_heads": family.attention_heads,
        "num_key_value_heads": family.kv_heads,
        "head_dim": family.head_dim,
        "vocab_size": family.vocab_size,
        "max_position_embeddings": family.max_position_embeddings,
        "tie_word_embeddings": family.params_b < 5,  # 0.6B, 1.7B and 4B tie them
    }
    if family.active_params_b is not None:
        fields.update(
            architectures=["Qwen3MoeForCausalLM"],
            model_type="qwen3_moe",
            moe_intermediate_size=MOE_INTERMEDIATE.get(family.name, 768),
            num_experts=128,
            num_experts_per_tok=8,
            decoder_sparse_step=1,
            norm_topk_prob=True,
            mlp_only_layers=[],
        )
    quantization = QUANTIZATION_CONFIGS[checkpoint.quantization]
    if quantization is not None:
        fields["quantization_config"] = quantization
    return qwen3_config(**fields)


def write_config_only(directory: Path, config: dict[str, Any]) -> Path:
    """A checkpoint directory with config.json and a tokenizer but no weights: enough for
    EngineArgs.create_engine_config, which never touches weights."""
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(directory)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


def write_random_model(directory: Path) -> Path:
    """A loadable tiny Qwen3 (2 layers, hidden 64, about 0.1M parameters) with random weights."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(directory)
    tok = AutoTokenizer.from_pretrained(str(directory))
    config = Qwen3Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # the smallest head size the CPU attention kernels take
        vocab_size=vocab,
        max_position_embeddings=40960,  # as Qwen3, so rendered context lengths fit
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(str(directory))
    return directory

"""What the stand-in knows about a checkpoint: Qwen3 shapes, sizes and quantization.

Enough of config.json and ModelConfig._verify_quantization for the memory arithmetic and the
start-up checks; derived from the model's name (no download).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from .cli_args import StartupError


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# vllm/model_executor/layers/quantization/__init__.py (QuantizationMethods)
QUANTIZATION_METHODS = _words(
    """
    awq auto_awq fp8 fbgemm_fp8 fp_quant modelopt modelopt_fp4 modelopt_mxfp8 modelopt_mixed
    auto_gptq gptq gptq_marlin awq_marlin humming compressed-tensors experts_int8 quark
    moe_wna16 torchao inc mxfp4 gpt_oss_mxfp4 deepseek_v4_fp8 online fp8_per_tensor
    fp8_per_block fp8_per_channel int8_per_channel_weight_only nvfp4_per_token mxfp8
    """
)


DEPRECATED_QUANTIZATION_METHODS = ("fbgemm_fp8", "fp_quant")


# Methods that read a quantization config from the checkpoint (no online fallback).
CHECKPOINT_ONLY_QUANTIZATION = _words(
    """
    awq auto_awq awq_marlin gptq auto_gptq gptq_marlin compressed-tensors modelopt modelopt_fp4
    modelopt_mxfp8 modelopt_mixed quark mxfp4 gpt_oss_mxfp4 moe_wna16 deepseek_v4_fp8 fbgemm_fp8
    fp_quant
    """
)


# vllm/config/cache.py (CacheDType)
KV_CACHE_DTYPES = _words(
    """
    auto float16 bfloat16 fp8 fp8_e4m3 fp8_e5m2 fp8_inc fp8_ds_mla nvfp4_ds_mla turboquant_k8v4
    turboquant_4bit_nc turboquant_k3v4_nc turboquant_3bit_nc octave_k3v4 octave_k3v3
    octave_k3v3_compact ultraquant_4bit int4_per_token_head int8_per_token_head
    fp8_per_token_head nvfp4 nvfp4_4over6
    """
)


_GiB = 1 << 30
VOCAB_SIZE = 151936  # every Qwen3 config.json

# size -> (layers, q heads, kv heads, params 1e9, GB of weights: bf16, fp8, awq 4-bit, nvfp4)
_QWEN3 = {
    "0.6b": (28, 16, 8, 0.60, (1.2, 0.8, 0.5, 0.6)),
    "1.7b": (28, 16, 8, 1.72, (3.4, 2.0, 1.4, 1.4)),
    "4b": (36, 32, 8, 4.02, (8.0, 4.4, 2.7, 2.8)),
    "8b": (36, 32, 8, 8.19, (16.4, 9.4, 6.1, 6.4)),
    "14b": (40, 40, 8, 14.77, (29.5, 16.3, 10.0, 10.5)),
    "32b": (64, 64, 8, 32.76, (65.5, 34.3, 19.3, 20.7)),
    "30b-a3b": (48, 32, 4, 30.53, (61.1, 31.2, 16.8, 18.1)),
    "235b-a22b": (94, 64, 4, 235.09, (470.2, 236.4, 124.1, 134.1)),
}
# size -> config.json's hidden_size, intermediate_size, moe_intermediate_size,
# num_experts_per_tok (0: dense)
_QWEN3_MLP = {
    "0.6b": (1024, 3072, 0, 0),
    "1.7b": (2048, 6144, 0, 0),
    "4b": (2560, 9728, 0, 0),
    "8b": (4096, 12288, 0, 0),
    "14b": (5120, 17408, 0, 0),
    "32b": (5120, 25600, 0, 0),
    "30b-a3b": (2048, 6144, 768, 8),
    "235b-a22b": (4096, 12288, 1536, 8),
}


@dataclass(frozen=True)
class ModelInfo:
    """What the stand-in pretends to know from a checkpoint's config.json."""

    architecture: str
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    max_position_embeddings: int
    checkpoint_quant: str | None  # quant_method in config.json (None: not quantized)
    weights_gb: tuple[float, float, float, float]  # bf16, fp8, 4-bit awq, nvfp4
    generation_config: dict[str, Any]
    hidden_size: int = 1024
    intermediate_size: int = 3072
    moe_intermediate_size: int = 0
    experts_per_token: int = 0  # 0: a dense model
    vocab_size: int = VOCAB_SIZE


def model_info(model: str, env: dict[str, str] | None = None) -> ModelInfo:
    """Derive a model's shape from its name (Qwen3 family; anything else is a small model)."""
    env = dict(os.environ) if env is None else env
    name = model.rstrip("/").lower()
    base = name.rsplit("/", 1)[-1]
    match = re.search(r"qwen3-(?:coder-)?(\d+(?:\.\d+)?b(?:-a\d+b)?)", base)
    size = match.group(1) if match else ""
    shape = _QWEN3.get(size) or (28, 16, 8, 0.6, (1.0, 0.6, 0.4, 0.45))
    hidden, intermediate, moe_intermediate, experts = _QWEN3_MLP.get(size, _QWEN3_MLP["0.6b"])
    layers, q_heads, kv_heads, _params, sizes = shape
    long_context = "2507" in base or "coder" in base
    if "fp4" in base:
        quant: str | None = "modelopt_fp4" if name.startswith("nvidia/") else "compressed-tensors"
    elif "awq" in base:
        quant = "awq"
    elif "gptq" in base:
        quant = "gptq"
    elif "fp8" in base:
        quant = "modelopt" if name.startswith("nvidia/") else "fp8"
    else:
        quant = None
    override = env.get("STANDIN_CHECKPOINT_QUANT")
    if override is not None:
        quant = None if override.lower() in ("", "none") else override
    if "instruct-2507" in base or "coder" in base:
        gen = {"temperature": 0.7, "top_k": 20, "top_p": 0.8}
    else:
        gen = {"temperature": 0.6, "top_k": 20, "top_p": 0.95}
    moe = bool(match and "-a" in match.group(1))
    return ModelInfo(
        architecture="Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM",
        layers=layers,
        q_heads=q_heads,
        kv_heads=kv_heads,
        head_dim=128,
        max_position_embeddings=262144 if long_context else 40960,
        checkpoint_quant=quant,
        weights_gb=sizes,
        generation_config=gen,
        hidden_size=hidden,
        intermediate_size=intermediate,
        moe_intermediate_size=moe_intermediate,
        experts_per_token=experts,
    )


def resolve_quantization(info: ModelInfo, user: str | None) -> str | None:
    """ModelConfig._verify_quantization for vLLM 0.33.0 on CUDA; raises StartupError."""
    user = user.lower() if user else None
    ckpt = info.checkpoint_quant
    if ckpt is not None:
        # Overrides (auto_awq.py, auto_gptq.py, modelopt.py) replace the method, the user's too.
        method = ckpt
        if ckpt == "awq" and user in (None, "awq", "awq_marlin", "auto_awq", "marlin"):
            method = user = "auto_awq"
        elif ckpt == "gptq" and user in (None, "gptq", "gptq_marlin", "auto_gptq", "marlin"):
            method = user = "auto_gptq"
        elif ckpt in ("modelopt", "modelopt_fp4"):
            user = method
        if user is None:
            user = method
        elif user != method:
            raise StartupError(
                "ValueError: Quantization method specified in the model config "
                f"({method}) does not match the quantization method specified in the "
                f"`quantization` argument ({user})."
            )
    if user is not None:
        if user not in QUANTIZATION_METHODS:
            raise StartupError(
                f"ValueError: Unknown quantization method: {user}. Must be one of "
                f"{list(QUANTIZATION_METHODS)}."
            )
        if user in DEPRECATED_QUANTIZATION_METHODS:
            raise StartupError(
                f"ValueError: ('The quantization method %s is deprecated and will be removed "
                f"in future versions of vLLM. To bypass, set `--allow-deprecated-"
                f"quantization`.', '{user}')"
            )
    return user


def weights_bytes(info: ModelInfo, quantization: str | None, env: dict[str, str]) -> int:
    """Bytes of weights the whole model occupies (split over tensor-parallel ranks)."""
    if env.get("STANDIN_WEIGHTS_GIB"):
        return int(float(env["STANDIN_WEIGHTS_GIB"]) * _GiB)
    bf16, fp8, awq, nvfp4 = info.weights_gb
    q = quantization or ""
    if "awq" in q or "gptq" in q or q == "moe_wna16":
        gb = awq
    elif "fp4" in q or q == "compressed-tensors":
        gb = nvfp4
    elif "fp8" in q or q in ("modelopt", "mxfp8"):
        gb = fp8
    else:
        gb = bf16
    return int(gb * 1e9)


def kv_bytes_per_token(info: ModelInfo, tp: int, kv_cache_dtype: str) -> int:
    """KV bytes per token on one GPU: 2 (K,V) x layers x kv heads per rank x head_dim x dtype."""
    dtype_bytes = 1 if kv_cache_dtype.startswith(("fp8", "int8")) else 2
    if kv_cache_dtype.startswith(("nvfp4", "int4", "ultraquant", "turboquant", "octave")):
        dtype_bytes = 1  # 4-bit-ish formats: count them as one byte (close enough here)
    return 2 * info.layers * max(1, info.kv_heads // tp) * info.head_dim * dtype_bytes

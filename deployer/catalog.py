"""The model catalog: Qwen3 architectures and their published checkpoints, loaded from YAML."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.errors import ProfileError
from deployer.vllm_pin import QUANTIZATIONS

BUILTIN_CATALOG = Path(__file__).parent / "data" / "models.yaml"

# Qwen3 defaults (config.json): max_position_embeddings 40960 = 32768 in + 8192 out headroom;
# the cards' native context is 32768 and 131072 with YaRN factor 4.
QWEN3_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "native_context": 32768,
    "yarn_context": 131072,
}


@dataclass(frozen=True)
class ModelFamily:
    """The architecture facts of a Qwen3 model that the memory model reads."""

    name: str
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    params_b: float
    vocab_size: int
    max_position_embeddings: int
    native_context: int
    yarn_context: int
    active_params_b: float | None = None
    # Mixture of experts (config.json: moe_intermediate_size, num_experts, num_experts_per_tok).
    moe_intermediate_size: int | None = None
    experts: int | None = None
    experts_per_token: int | None = None

    @property
    def is_moe(self) -> bool:
        return self.moe_intermediate_size is not None

    def kv_bytes_per_token(self, tensor_parallel_size: int, dtype_bytes: int) -> int:
        """Per GPU: 2 (K,V) x layers x KV heads on this GPU x head_dim x dtype bytes."""
        heads_per_gpu = max(1, self.kv_heads // tensor_parallel_size)
        return 2 * self.layers * heads_per_gpu * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class Checkpoint:
    """One servable checkpoint: its repo id, family, quantization and weight size."""

    id: str  # Hugging Face repo id, also the served model name by default
    family: ModelFamily
    quantization: str
    weights_gb: float

    @property
    def weight_bytes(self) -> int:
        return int(self.weights_gb * 1e9)


@dataclass(frozen=True)
class Catalog:
    """The known checkpoints by repo id (the shipped catalog and any --models file)."""

    checkpoints: dict[str, Checkpoint]

    def get(self, model_id: str, where: str = "model") -> Checkpoint:
        try:
            return self.checkpoints[model_id]
        except KeyError:
            same_case = [c for c in self.checkpoints if c.lower() == str(model_id).lower()]
            close = same_case[0] if same_case else _closest(model_id, self.checkpoints)
            hint = f"did you mean {close}?" if close else "see `qwen-deploy models`"
            raise ProfileError(
                f"{where}: unknown model {model_id!r} (not in the catalog)", hint=hint
            ) from None

    def alternatives(self, checkpoint: Checkpoint) -> list[Checkpoint]:
        """Other checkpoints of the same family, smallest weights first."""
        return sorted(
            (
                c
                for c in self.checkpoints.values()
                if c.family.name == checkpoint.family.name and c.id != checkpoint.id
            ),
            key=lambda c: c.weights_gb,
        )


_FAMILY_KEYS = {
    "layers",
    "attention_heads",
    "kv_heads",
    "head_dim",
    "hidden_size",
    "intermediate_size",
    "params_b",
    "active_params_b",
    "vocab_size",
    "max_position_embeddings",
    "native_context",
    "yarn_context",
    "moe_intermediate_size",
    "experts",
    "experts_per_token",
    "checkpoints",
}
_CHECKPOINT_KEYS = {"id", "quantization", "weights_gb"}


def _closest(word: str, choices: Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _check_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            close = _closest(str(key), allowed)
            hint = f"did you mean {close!r}?" if close else f"expected one of {sorted(allowed)}"
            raise ProfileError(f"{where}: unknown key {key!r}", hint=hint)


def parse_catalog(data: Any, source: str) -> dict[str, Checkpoint]:
    """Turn one catalog document into checkpoints; errors name the file and the key."""
    if not isinstance(data, dict) or not isinstance(data.get("families"), dict):
        raise ProfileError(f"{source}: expected a mapping with a 'families' key")
    checkpoints: dict[str, Checkpoint] = {}
    for name, raw in data["families"].items():
        where = f"{source}: families.{name}"
        if not isinstance(raw, dict):
            raise ProfileError(f"{where}: expected a mapping")
        _check_keys(raw, _FAMILY_KEYS, where)
        fields = {**QWEN3_DEFAULTS, **{k: v for k, v in raw.items() if k != "checkpoints"}}
        try:
            family = ModelFamily(name=str(name), **fields)
        except TypeError as exc:
            raise ProfileError(f"{where}: {exc}") from None
        _check_family_numbers(family, where)  # D18: every size a positive, bounded number
        moe = ("moe_intermediate_size", "experts", "experts_per_token")
        given = [f for f in moe if getattr(family, f) is not None]
        if given and len(given) != len(moe):
            raise ProfileError(
                f"{where}: a mixture-of-experts family needs all of {', '.join(moe)}",
                hint=f"missing {', '.join(f for f in moe if f not in given)}",
            )
        for field_name in given:
            value = getattr(family, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ProfileError(f"{where}.{field_name}: expected a positive integer")
        for position, ckpt in enumerate(raw.get("checkpoints") or []):
            cwhere = f"{where}.checkpoints[{position}]"
            if not isinstance(ckpt, dict):
                raise ProfileError(f"{cwhere}: expected a mapping")
            _check_keys(ckpt, _CHECKPOINT_KEYS, cwhere)
            missing = _CHECKPOINT_KEYS - ckpt.keys()
            if missing:
                raise ProfileError(f"{cwhere}: missing {', '.join(sorted(missing))}")
            quant = str(ckpt["quantization"]).lower()
            if quant not in QUANTIZATIONS:
                raise ProfileError(
                    f"{cwhere}.quantization: {quant!r} is not one of {sorted(QUANTIZATIONS)}"
                )
            weights_gb = ckpt["weights_gb"]
            if isinstance(weights_gb, bool) or not isinstance(weights_gb, (int, float)):
                raise ProfileError(f"{cwhere}.weights_gb: expected a number")
            if not 0 < weights_gb <= 100000:  # also NaN and infinity
                raise ProfileError(f"{cwhere}.weights_gb: must be positive (GB), got {weights_gb}")
            if not isinstance(ckpt["id"], str) or not ckpt["id"].strip():
                raise ProfileError(f"{cwhere}.id: expected a Hugging Face repo id")
            checkpoints[str(ckpt["id"])] = Checkpoint(
                id=str(ckpt["id"]), family=family, quantization=quant, weights_gb=weights_gb
            )
    return checkpoints


_FAMILY_INTS = (
    "layers", "attention_heads", "kv_heads", "head_dim", "hidden_size", "intermediate_size",
    "vocab_size", "max_position_embeddings", "native_context", "yarn_context",
)  # fmt: skip


def _check_family_numbers(family: ModelFamily, where: str) -> None:
    import math

    for name in _FAMILY_INTS:
        value = getattr(family, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1 << 24:
            raise ProfileError(
                f"{where}.{name}: expected a positive integer (up to {1 << 24}), got {value!r:.40}"
            )
    for name in ("params_b", "active_params_b"):
        value = getattr(family, name)
        if value is None and name == "active_params_b":
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not 0 < value <= 100000:
            raise ProfileError(f"{where}.{name}: expected a count in billions, not {value!r:.30}")
    if family.native_context > family.yarn_context:
        raise ProfileError(
            f"{where}: native_context {family.native_context} is above yarn_context "
            f"{family.yarn_context}"
        )
    if family.attention_heads % family.kv_heads:
        raise ProfileError(
            f"{where}: attention_heads {family.attention_heads} is not a multiple of kv_heads "
            f"{family.kv_heads}"
        )


def load_catalog(extra_files: Iterable[str | Path] = ()) -> Catalog:
    """The built-in catalog plus user files (later files win on the same checkpoint id)."""
    checkpoints: dict[str, Checkpoint] = {}
    for path in (BUILTIN_CATALOG, *map(Path, extra_files)):
        from deployer.safeload import load_yaml_file  # bounded, UTF-8, no duplicate keys

        data = load_yaml_file(path, "models file", ProfileError)
        checkpoints.update(parse_catalog(data, str(path)))
    return Catalog(checkpoints)

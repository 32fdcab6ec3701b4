#!/usr/bin/env python3
"""Stand-in for `vllm serve` (vLLM 0.33.0): same CLI, HTTP API, logs and failures, no GPU.

Standard library only: it runs on a bare Debian python3. See README.md beside this file for the
flags, the environment knobs and the fault modes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn

VLLM_VERSION = "0.33.0"


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


DEFAULT_MODEL = "Qwen/Qwen3-0.6B"  # `vllm serve` without a model (EngineArgs.model default)
MiB = 1 << 20
GiB = 1 << 30
BLOCK_SIZE = 16
DEFAULT_GPU_TOTAL_MIB = 24564  # a GPU id missing from STANDIN_GPU_TOTAL_MIB
NO_GPU_TOTAL_MIB = 81559  # the arithmetic without visible GPUs (an H100 80GB)
DEFAULT_LEDGER_DIR = "/var/lib/standin-ledger"
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")  # serve/middleware/authenticate.py

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
# Sampling keys vLLM takes from generation_config.json (config/model.py), in its order.
GENERATION_CONFIG_KEYS = _words(
    """
    repetition_penalty presence_penalty frequency_penalty temperature top_k top_p min_p
    max_new_tokens skip_special_tokens
    """
)

# Every `vllm serve` option of vLLM 0.33.0, extracted from make_arg_parser() (every option
# string argparse registers, hidden aliases included), lives in data/vllm_serve_options.txt
# beside this file (deployer code reads the same file to check profiles' extra_args).
# Format, one option per line:
#   KIND[NARGS] FLAG[,ALIAS...] [!NEGATIVE-FLAG,...] [{CHOICE,...}] [=DEFAULT-AS-JSON]
# KIND: str int float json/loads (JSON; two error wordings) hri (1k/1K) hria (hri, -1, auto)
# uds (JSON or str) dc (JSON for a config dataclass) rp (reasoning parser) lower (lower-cased)
# devids (device ids) bool (--x / --no-x style pair) true (store_true) append; an "o" prefix
# means the value may also be "" or "None". NARGS is "+" or "?". No default means None (or a
# config object the stand-in does not model). Lines starting with a space continue the line
# above; blank lines are ignored. Fields are separated by single spaces.
# Read relative to this file, not via importlib.resources: the image copies the stand-in's
# files to /opt/standin and runs them as a script.
OPTIONS_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "data", "vllm_serve_options.txt"
)


def read_option_table(path: str = OPTIONS_FILE) -> str:
    """The option table's text (see the format above)."""
    with open(path, encoding="utf-8") as f:
        return f.read()


VLLM_SERVE_OPTIONS = read_option_table()


# --------------------------------------------------------------------------------------------
# Logging, in vLLM's format: "(APIServer pid=1) INFO 11-25 03:49:00 [file.py:123] message"
# --------------------------------------------------------------------------------------------

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_UVICORN_LEVELS = {"trace": 5, "debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
ENGINE = "EngineCore_DP0"
_log_lock = threading.Lock()
_uvicorn_level = 20


def _vllm_level() -> int:
    return _LEVELS.get(os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper(), 20)


def log(level: str, where: str, message: str, process: str = "APIServer") -> None:
    """Print one vLLM-style log line (each line of a multi-line message gets the prefix)."""
    if _LEVELS[level] < _vllm_level():
        return
    stamp = time.strftime("%m-%d %H:%M:%S")
    prefix = f"({process} pid={os.getpid()}) {level} {stamp} [{where}]"
    with _log_lock:
        for line in message.split("\n"):
            sys.stdout.write(f"{prefix} {line}\n")
        sys.stdout.flush()


def log_raw(text: str) -> None:
    """Print text as-is (uncaught tracebacks, uvicorn lines)."""
    with _log_lock:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def log_uvicorn(level: str, message: str) -> None:
    if _UVICORN_LEVELS[level.lower()] < _uvicorn_level:
        return
    log_raw(f"(APIServer pid={os.getpid()}) {(level.upper() + ':'):<9} {message}")


# --------------------------------------------------------------------------------------------
# Command line: the vLLM 0.33.0 `vllm serve` parser, rebuilt from the table above
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionSpec:
    """One `vllm serve` option from VLLM_SERVE_OPTIONS."""

    kind: str
    nargs: str | None
    flags: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    default: Any = None

    @property
    def dest(self) -> str:
        long = next(f for f in self.flags if f.startswith("--"))
        return long[2:].replace("-", "_")


def load_option_specs(table: str = VLLM_SERVE_OPTIONS) -> list[OptionSpec]:
    """Parse the option table into specs."""
    lines: list[str] = []
    for raw in table.splitlines():
        if not raw.strip():
            continue
        if raw.startswith(" "):
            lines[-1] += raw.strip()
        else:
            lines.append(raw.strip())
    specs = []
    for line in lines:
        parts = line.split(" ")
        kind, flags = parts[0], tuple(parts[1].split(","))
        nargs = None
        if kind[-1] in "+?":
            kind, nargs = kind[:-1], kind[-1]
        negatives: tuple[str, ...] = ()
        choices = None
        default = None
        for extra in parts[2:]:
            if extra.startswith("!"):
                negatives = tuple(extra[1:].split(","))
            elif extra.startswith("{"):
                choices = tuple(extra.strip("{}").split(","))
            elif extra.startswith("="):
                default = json.loads(extra[1:])
                if default == argparse.SUPPRESS:
                    default = argparse.SUPPRESS  # argparse compares by identity
        specs.append(OptionSpec(kind, nargs, flags, negatives, choices, default))
    return specs


def human_readable_int(value: str) -> int:
    """vLLM's parser for '1k' (10**3), '1K' (2**10), '25.6k' and plain integers."""
    value = value.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if match:
        number, suffix = match.groups()
        decimal = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
        binary = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        if suffix in decimal:
            return int(float(number) * decimal[suffix])
        try:
            return int(number) * binary[suffix]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"Decimals are not allowed with binary suffixes like {suffix}. "
                f"Did you mean to use {number}{suffix.lower()} instead?"
            ) from exc
    return int(value)


def human_readable_int_or_auto(value: str) -> int:
    """As human_readable_int, plus -1 / 'auto' (fit the memory) as -1."""
    if value.strip() == "-1" or value.strip().lower() == "auto":
        return -1
    return human_readable_int(value)


def _type_repr(fn: Callable[[str], Any]) -> str:
    return repr(fn)


def _parse_type(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def _parse(value: str) -> Any:
        try:
            return fn(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"Value {value} cannot be converted to {_type_repr(fn)}."
            ) from exc

    return _parse


def _optional_type(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    parse = _parse_type(fn)

    def _optional(value: str) -> Any:
        return None if value in ("", "None") else parse(value)

    return _optional


def loads(value: str) -> Any:
    return json.loads(value)


def union_dict_and_str(value: str) -> Any:
    if not re.match(r"(?s)^\s*{.*}\s*$", value):
        return value
    return _optional_type(loads)(value)


def parse_dataclass(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"1 validation error: Invalid JSON: {exc.msg} [type=json_invalid, input_value="
            f"{value!r}, input_type=str]"
        ) from exc


def parse_reasoning_parser(value: str) -> str:
    return "" if value.lower() == "none" else value


def _lower(value: str) -> str:
    return value.lower().replace("-", "_")


def _device_ids(value: str) -> list[int | str]:
    return [int(d) if d.isdigit() else d for d in value.split(",") if d]


_KIND_TYPES: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "hri": human_readable_int,
    "hria": human_readable_int_or_auto,
    "json": _parse_type(loads),
    "loads": loads,
    "uds": union_dict_and_str,
    "dc": parse_dataclass,
    "rp": parse_reasoning_parser,
    "lower": _lower,
    "devids": _device_ids,
    "append": str,
}


class _EnableDisable(argparse.Action):
    """`--enable-x` / `--disable-x` / `--no-enable-x` (vLLM's EnableDisableAction)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        self.negatives: frozenset[str] = kwargs.pop("negatives")
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, option_string not in self.negatives)


class StandinParser(argparse.ArgumentParser):
    """argparse with vLLM's extra hint for `--task` (FlexibleArgumentParser.error)."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:") and re.search(
            r"(^|\s)--task(=|\s|$)", message
        ):
            message += (
                "\n\nHint: --task is not a vllm serve option. For embedding, reranking, or "
                "reward models, use --runner pooling. To adapt a generative model for pooling, "
                "also use --convert embed, --convert classify, or --convert reward."
            )
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The `vllm` parser with its `serve` subcommand (errors read exactly like vLLM's)."""
    top = StandinParser(
        prog="vllm",
        usage="vllm [-h] [-v] {chat,complete,serve,launch,bench,collect-env,download-kernels,"
        "preload,run-batch,snapshot} ...",
        description="vLLM CLI",
    )
    top.add_argument("-v", "--version", action="version", version=VLLM_VERSION)
    subparsers = top.add_subparsers(required=False, dest="subparser")
    serve = subparsers.add_parser(
        "serve",
        prog="vllm serve",
        usage="vllm serve [model_tag] [options]",
        help="Launch a local OpenAI-compatible API server to serve LLM completions via HTTP.",
    )
    serve.add_argument("model_tag", type=str, nargs="?", help="The model tag to serve")
    for spec in load_option_specs():
        if spec.kind == "bool":
            serve.add_argument(
                *spec.flags,
                *spec.negatives,
                dest=spec.dest,
                action=_EnableDisable,
                negatives=frozenset(spec.negatives),
                default=spec.default,
            )
            continue
        if spec.kind == "true":
            serve.add_argument(*spec.flags, dest=spec.dest, action="store_true", default=False)
            continue
        optional = spec.kind.startswith("o") and spec.kind[1:] in _KIND_TYPES
        base = spec.kind[1:] if optional else spec.kind
        fn = _KIND_TYPES[base]
        kwargs: dict[str, Any] = {
            "dest": spec.dest,
            "type": _optional_type(fn) if optional else fn,
            "default": spec.default,
        }
        if spec.kind == "append":
            kwargs["action"] = "append"
        if spec.nargs:
            kwargs["nargs"] = spec.nargs
            if spec.nargs == "?":
                kwargs["const"] = True
        if spec.choices is not None:
            kwargs["choices"] = [*spec.choices, None] if optional else list(spec.choices)
        serve.add_argument(*spec.flags, **kwargs)
    return top


def serve_option_strings() -> list[str]:
    """Every option string the `serve` parser registers (aliases and -h/--help included)."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices["serve"]._option_string_actions)
    return []


class StartupError(Exception):
    """A failure vLLM reports with a traceback and exit status 1."""

    def __init__(self, exc_line: str, process: str = "APIServer", where: str = "") -> None:
        super().__init__(exc_line)
        self.exc_line = exc_line
        self.process = process
        self.where = where


def preprocess_serve_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """vLLM's FlexibleArgumentParser.parse_args rewriting of ["serve", ...]; returns (args,
    warnings)."""
    args = list(argv)
    warnings: list[str] = []
    model_idx = next(
        (i for i, a in enumerate(args) if re.match(r"^--model(=.+|$)", a) and i > 0), None
    )
    if model_idx is not None:
        warnings.append(
            "With `vllm serve`, you should provide the model as a positional argument or in a "
            "config file instead of via the `--model` option. The `--model` option will be "
            "removed in a future version."
        )
        if args[model_idx] == "--model":
            if model_idx + 1 >= len(args):
                raise StartupError("IndexError: list index out of range")
            tag, rest = args[model_idx + 1], model_idx + 2
        else:
            tag, rest = args[model_idx].removeprefix("--model="), model_idx + 1
        args = ["serve", tag, *args[1:model_idx], *args[rest:]]
    if (
        len(args) > 1
        and args[1].startswith("-")
        and not any(re.match(r"^--config(=.+|$)", a) for a in args)
        and any(re.match(r"^--served[-_]model[-_]name(=.+|$)", a) for a in args)
    ):
        raise StartupError(
            "ValueError: `model` should be provided as the first positional argument when "
            "using `vllm serve`. i.e. `vllm serve <model> --<arg> <value>`."
        )
    if "--config" in args:
        raise StartupError(
            "NotImplementedError: the vLLM stand-in does not read --config files; pass the "
            "options on the command line"
        )
    processed: list[str] = []
    name_part = re.compile(r"(?<=--)[^\.]*")
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            if "=" in arg:
                opt, val = arg.split("=", 1)
                processed.append(name_part.sub(lambda m: m.group(0).replace("_", "-"), opt, 1))
                processed[-1] += f"={val}"
            else:
                processed.append(name_part.sub(lambda m: m.group(0).replace("_", "-"), arg, 1))
        elif arg.startswith("-O") and arg != "-O":
            processed += ["--optimization-level", arg[3:] if arg[2:3] == "=" else arg[2:]]
        elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
            processed.append("--optimization-level")
        else:
            processed.append(arg)
    # Dotted JSON arguments: --hf-overrides.a.b 1  ->  --hf-overrides '{"a": {"b": 1}}'
    merged: dict[str, dict[str, Any]] = {}
    keep: list[str] = []
    skip = False
    for i, arg in enumerate(processed):
        if skip:
            skip = False
            continue
        if arg.startswith("-") and "." in arg.split("=", 1)[0]:
            if "=" in arg:
                key, value_str = arg.split("=", 1)
            elif i + 1 < len(processed):
                key, value_str, skip = arg, processed[i + 1], True
            else:
                keep.append(arg)
                continue
            if key.endswith("+"):
                key, value_str = key[:-1], json.dumps(value_str.split(","))
            root, *path = key.split(".")
            try:
                value: Any = json.loads(value_str)
            except ValueError:
                try:
                    value = human_readable_int(value_str)
                except (ValueError, argparse.ArgumentTypeError):
                    value = value_str
            node = merged.setdefault(root, {})
            for part in path[:-1]:
                node = node.setdefault(part, {})
            existing = node.get(path[-1])
            node[path[-1]] = existing + value if isinstance(existing, list) else value
            continue
        keep.append(arg)
    for root, tree in merged.items():
        keep += [root, json.dumps(tree)]
    return keep, warnings


def parse_serve_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse `serve [MODEL] [options]` like vLLM 0.33.0 (argparse errors exit with status 2)."""
    args, warnings = preprocess_serve_argv(["serve", *argv])
    ns = build_parser().parse_args(args)
    if ns.model_tag is not None:
        ns.model = ns.model_tag
    elif ns.model is None:
        ns.model = DEFAULT_MODEL
    return ns, warnings


# --------------------------------------------------------------------------------------------
# Model knowledge: Qwen3 shapes and checkpoint sizes (enough for memory arithmetic)
# --------------------------------------------------------------------------------------------

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


def model_info(model: str, env: dict[str, str] | None = None) -> ModelInfo:
    """Derive a model's shape from its name (Qwen3 family; anything else is a small model)."""
    env = dict(os.environ) if env is None else env
    name = model.rstrip("/").lower()
    base = name.rsplit("/", 1)[-1]
    match = re.search(r"qwen3-(?:coder-)?(\d+(?:\.\d+)?b(?:-a\d+b)?)", base)
    shape = _QWEN3.get(match.group(1)) if match else None
    if shape is None:
        shape = (28, 16, 8, 0.6, (1.0, 0.6, 0.4, 0.45))
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
        return int(float(env["STANDIN_WEIGHTS_GIB"]) * GiB)
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


@dataclass(frozen=True)
class KvCachePlan:
    """Profiling's outcome: KV bytes and tokens, the (auto-fitted) max_model_len, or an error."""

    available: int
    tokens: int
    max_model_len: int
    error: str | None


NO_CACHE_MEMORY = (
    "ValueError: No available memory for the cache blocks. Try increasing "
    "`gpu_memory_utilization` when initializing the engine (this flag also controls CPU "
    "memory reservation on the CPU backend, despite its name). See https://docs.vllm.ai/en/"
    "latest/configuration/conserving_memory/ for more details."
)


def plan_kv_cache(
    available: int,
    per_token: int,
    max_model_len: int,
    *,
    auto_len: bool = False,
    kv_cache_memory_bytes: int | None = None,
) -> KvCachePlan:
    """vllm/v1/core/kv_cache_planning.py::_check_enough_kv_cache_memory, in whole blocks."""
    if kv_cache_memory_bytes:
        available = int(kv_cache_memory_bytes)
    if available <= 0:
        return KvCachePlan(available, 0, max_model_len, NO_CACHE_MEMORY)
    tokens = available // per_token // BLOCK_SIZE * BLOCK_SIZE
    if auto_len:
        max_model_len = max(BLOCK_SIZE, min(max_model_len, tokens))
    needed = math.ceil(max_model_len / BLOCK_SIZE) * BLOCK_SIZE * per_token
    if needed <= available:
        return KvCachePlan(available, tokens, max_model_len, None)
    hint = (
        f"Based on the available memory, the estimated maximum model length is {tokens}. "
        if tokens > 0
        else ""
    )
    return KvCachePlan(
        available,
        tokens,
        max_model_len,
        f"ValueError: To serve at least one request with the model's max seq len "
        f"({max_model_len}), ({format_gib(needed)} GiB KV cache is needed, which is larger than "
        f"the available KV cache memory ({format_gib(available)} GiB). {hint}Try increasing "
        "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or "
        "decreasing `max_model_len` when initializing the engine. See https://docs.vllm.ai/en/"
        "latest/configuration/conserving_memory/ for more details.",
    )


# --------------------------------------------------------------------------------------------
# GPU memory ledger shared by all stand-ins on a host (one file per instance per GPU)
# --------------------------------------------------------------------------------------------


def format_gib(num_bytes: int | float) -> str:
    """vllm/utils/mem_utils.py::format_gib: str(round(b / GiB, 2))."""
    return f"{round(num_bytes / GiB, 2)}"


def parse_gpu_map(text: str | None) -> dict[str, int]:
    """'0:24564,1:24564' -> {'0': 24564, '1': 24564} (MiB per GPU id)."""
    result: dict[str, int] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.rpartition(":")
        if not sep or not key:
            raise ValueError(f"bad GPU memory entry {item!r}; expected ID:MIB")
        result[key.strip()] = int(value)
    return result


def visible_gpus(env: dict[str, str], totals: dict[str, int]) -> list[str]:
    """GPU ids from NVIDIA_VISIBLE_DEVICES (what Docker's --gpus sets); [] without GPUs."""
    raw = env.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if raw in ("", "void", "none"):
        return []
    if raw == "all":
        return sorted(totals, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    return [g.strip() for g in raw.split(",") if g.strip()]


def requested_bytes(total_bytes: int, utilization: float) -> int:
    """vllm/v1/worker/utils.py::request_memory: ceil(total x gpu_memory_utilization)."""
    return math.ceil(total_bytes * utilization)


def free_memory_error(local_index: int, total: int, free: int, utilization: float) -> str | None:
    """The startup check: the ValueError text when free < requested, else None."""
    requested = requested_bytes(total, utilization)
    if free >= requested:
        return None
    return (
        f"ValueError: Free memory on device cuda:{local_index} ({format_gib(free)}/"
        f"{format_gib(total)} GiB) on startup is less than desired GPU memory utilization "
        f"({utilization}, {format_gib(requested)} GiB). Decrease GPU memory utilization or "
        "reduce GPU memory used by other processes."
    )


@dataclass(frozen=True)
class LedgerEntry:
    """A live instance's claim on one GPU."""

    name: str
    gpu: str
    requested: int  # bytes
    state: str  # "loading" | "ready"
    model: str


_ENTRY_SIZE = 512  # fixed-size records: updates are one pwrite, never a truncate


class Ledger:
    """Per-GPU claims in LEDGER_DIR/gpu-<id>/<instance>.json, each held under an exclusive
    flock for the owner's lifetime; an entry whose lock can be taken belongs to a dead
    instance and is removed."""

    def __init__(self, root: str, instance: str) -> None:
        self.root = root
        self.instance = instance
        self._fds: dict[str, int] = {}
        self._claims: dict[str, tuple[int, str]] = {}

    def _dir(self, gpu: str) -> str:
        return os.path.join(self.root, "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", gpu))

    def entries(self, gpu: str) -> list[LedgerEntry]:
        """Live entries of other instances on this GPU (stale ones are deleted)."""
        directory = self._dir(gpu)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        live = []
        for fname in names:
            if not fname.endswith(".json") or fname == self.instance + ".json":
                continue
            path = os.path.join(directory, fname)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    entry = self._read(fd, fname[:-5], gpu)
                    if entry is not None:
                        live.append(entry)
                    continue
                # We got the lock: its owner is gone. Remove it while we still hold it.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            finally:
                os.close(fd)
        return live

    @staticmethod
    def _read(fd: int, name: str, gpu: str) -> LedgerEntry | None:
        for _ in range(5):
            raw = os.pread(fd, _ENTRY_SIZE, 0).decode("utf-8", "replace").strip("\0 \n")
            if not raw:  # created but not written yet: a starting instance
                return LedgerEntry(name, gpu, 0, "loading", "")
            try:
                data = json.loads(raw)
            except ValueError:
                time.sleep(0.01)
                continue
            return LedgerEntry(
                name, gpu, int(data["requested"]), str(data["state"]), str(data["model"])
            )
        return None

    def register(self, gpu: str, requested: int, model: str) -> None:
        """Claim `requested` bytes on `gpu` in state loading (held until release())."""
        directory = self._dir(gpu)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, self.instance + ".json"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fds[gpu] = fd
        self._claims[gpu] = (requested, model)
        self._write(gpu, "loading")

    def _write(self, gpu: str, state: str) -> None:
        requested, model = self._claims[gpu]
        record = json.dumps({"requested": requested, "state": state, "model": model})
        os.pwrite(self._fds[gpu], record.encode()[: _ENTRY_SIZE - 1].ljust(_ENTRY_SIZE, b" "), 0)

    def set_state(self, state: str) -> None:
        """Mark all of this instance's entries (loading -> ready)."""
        for gpu in self._fds:
            self._write(gpu, state)

    def release(self) -> None:
        """Remove this instance's entries (a crash leaves them behind, unlocked: stale)."""
        for gpu, fd in list(self._fds.items()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._dir(gpu), self.instance + ".json"))
            os.close(fd)
        self._fds.clear()


# --------------------------------------------------------------------------------------------
# Generation: tokens are whitespace-separated words
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Faults and settings from the environment
# --------------------------------------------------------------------------------------------


def parse_faults(text: str | None) -> dict[str, str]:
    """STANDIN_FAULT='slow:2,no_auth' -> {'slow': '2', 'no_auth': ''}."""
    known = {
        "crash_on_start",
        "never_healthy",
        "die_after",
        "slow",
        "no_auth",
        "wrong_model",
        "broken_stream",
        "empty_content",
        "oom_on_start",
    }
    faults: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, arg = item.partition(":")
        if name not in known:
            raise ValueError(f"unknown STANDIN_FAULT {name!r}; known: {', '.join(sorted(known))}")
        faults[name] = arg
    return faults


@dataclass
class Settings:
    """Everything the server needs after start-up."""

    args: argparse.Namespace
    info: ModelInfo
    served_names: list[str]
    max_model_len: int
    max_num_seqs: int
    api_keys: list[str]
    faults: dict[str, str]
    thinking_tokens: int
    answer_tokens: int | None
    tokens_per_second: float
    ttft_seconds: float
    kv_tokens: int
    default_sampling: dict[str, Any]
    fingerprint: str
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------------------------


class Engine:
    """Scheduling (max_num_seqs running, the rest waiting) and metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cv = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.running_tokens = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0, "error": 0}
        self.chat_served = 0
        self.healthy = "never_healthy" not in settings.faults
        self._interval_prompt = 0
        self._interval_generation = 0

    def acquire(self, tokens: int) -> None:
        with self.cv:
            self.waiting += 1
            while self.running >= self.settings.max_num_seqs:
                self.cv.wait()
            self.waiting -= 1
            self.running += 1
            self.running_tokens += tokens
            self.prompt_tokens_total += tokens
            self._interval_prompt += tokens

    def release(self, tokens: int, generated: int, reason: str) -> None:
        with self.cv:
            self.running -= 1
            self.running_tokens -= tokens
            self.generation_tokens_total += generated
            self._interval_generation += generated
            self.success[reason] = self.success.get(reason, 0) + 1
            self.cv.notify()

    def stats_line(self, interval: float) -> str | None:
        with self.cv:
            prompt, generation = self._interval_prompt, self._interval_generation
            self._interval_prompt = self._interval_generation = 0
            if not prompt and not generation and not self.running and not self.waiting:
                return None
            return (
                f"Engine 000: Avg prompt throughput: {prompt / interval:.1f} tokens/s, "
                f"Avg generation throughput: {generation / interval:.1f} tokens/s, "
                f"Running: {self.running} reqs, Waiting: {self.waiting} reqs, "
                f"GPU KV cache usage: {100 * self.kv_usage():.1f}%, "
                "Prefix cache hit rate: 0.0%"
            )

    def kv_usage(self) -> float:
        return (
            min(1.0, self.running_tokens / self.settings.kv_tokens)
            if self.settings.kv_tokens
            else 0.0
        )

    def metrics(self) -> str:
        name = self.settings.served_names[0].replace("\\", "\\\\").replace('"', '\\"')
        labels = f'model_name="{name}",engine="0"'
        with self.cv:
            gauges = [
                (
                    "vllm:num_requests_running",
                    "Number of requests in model execution batches.",
                    self.running,
                ),
                (
                    "vllm:num_requests_waiting",
                    "Number of requests waiting to be processed.",
                    self.waiting,
                ),
                (
                    "vllm:kv_cache_usage_perc",
                    "KV-cache usage. 1 means 100 percent usage.",
                    self.kv_usage(),
                ),
            ]
            counters = [
                (
                    "vllm:prompt_tokens_total",
                    "Number of prefill tokens processed.",
                    self.prompt_tokens_total,
                ),
                (
                    "vllm:generation_tokens_total",
                    "Number of generation tokens processed.",
                    self.generation_tokens_total,
                ),
            ]
            success = dict(self.success)
        out: list[str] = []
        for metric, help_text, value in gauges:
            out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
            out.append(f"{metric}{{{labels}}} {float(value)}")
        for metric, help_text, value in counters:
            out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
            out.append(f"{metric}{{{labels}}} {float(value)}")
        metric = "vllm:request_success_total"
        out += [
            f"# HELP {metric} Count of successfully processed requests.",
            f"# TYPE {metric} counter",
        ]
        for reason, count in success.items():
            out.append(f'{metric}{{{labels},finished_reason="{reason}"}} {float(count)}')
        return "\n".join(out) + "\n"


class RequestError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, err_type: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = {
            "error": {"message": message, "type": err_type, "param": param, "code": status}
        }


MAX_ERROR_INPUT_CHARS = 200  # serve/exception_handling/handlers/validation.py
MAX_ERROR_CHARS = 1000


def summarize_error_input(value: Any) -> str:
    """A validation error's `input` as vLLM echoes it: containers by size, the rest as text."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{type(value).__name__} of {len(value)} bytes>"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_ERROR_INPUT_CHARS:
        return text[:MAX_ERROR_INPUT_CHARS] + "...[truncated]"
    return text


def sanitize_message(message: str) -> str:
    """vLLM's scrub of error messages: no memory addresses, tracebacks or file paths."""
    message = re.sub(r" at 0x[0-9a-fA-F]+>", ">", message)
    message = re.sub(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?', "", message)
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message)
    return message.strip()


def _format_error(error: Any) -> str:
    if isinstance(error, dict) and "input" in error:
        error = {**error, "input": summarize_error_input(error["input"])}
    text = str(error)
    return text[:MAX_ERROR_CHARS] + "...[truncated]" if len(text) > MAX_ERROR_CHARS else text


def validation_error(errors: list[Any], param: str | None) -> RequestError:
    """FastAPI RequestValidationError as vLLM renders it (400, type "Bad Request")."""
    label = "error" if len(errors) == 1 else "errors"
    message = f"{len(errors)} validation {label}:\n"
    message += "".join(f"  {_format_error(e)}\n" for e in errors)
    return RequestError(400, sanitize_message(message), "Bad Request", param)


def field_error(key: str, kind: str, msg: str, value: Any) -> RequestError:
    """One pydantic error on body field `key`."""
    error = {"type": kind, "loc": f"body.{key}", "msg": msg, "input": value}
    return validation_error([error], f"body.{key}")


_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")
_FLOAT_TEXT = re.compile(
    r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.I
)


def _int_field(body: dict[str, Any], key: str) -> int | None:
    """An optional int field with pydantic's lax coercion (true, 5.0 and "5" are accepted)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, int):  # bool included: pydantic takes true as 1
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        msg = "Input should be a valid integer, got a number with a fractional part"
        raise field_error(key, "int_from_float", msg, value)
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            return int(text.split(".", 1)[0])
        msg = "Input should be a valid integer, unable to parse string as an integer"
        raise field_error(key, "int_parsing", msg, value)
    raise field_error(key, "int_type", "Input should be a valid integer", value)


def _float_field(body: dict[str, Any], key: str) -> float | None:
    """An optional float field with pydantic's lax coercion (true and "0.5" are accepted)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value.strip())
    if isinstance(value, str):
        msg = "Input should be a valid number, unable to parse string as a number"
        raise field_error(key, "float_parsing", msg, value)
    raise field_error(key, "float_type", "Input should be a valid number", value)


def include_usage(options: Any, force: bool) -> tuple[bool, bool]:
    """(usage chunk at the end, usage on every chunk): serve/utils/api_utils.py."""
    if force:
        return True, True
    if not isinstance(options, dict):
        return False, False
    usage = bool(options.get("include_usage"))
    return usage, usage and bool(options.get("continuous_usage_stats"))


def usage_info(prompt: int, completion: int, details: dict[str, int] | None) -> dict[str, Any]:
    """UsageInfo with every field, as a non-streamed response carries it."""
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
        "completion_tokens_details": details,
    }


def without_none(payload: dict[str, Any]) -> dict[str, Any]:
    """pydantic's exclude_none on one object (vLLM's final usage chunk)."""
    return {k: v for k, v in payload.items() if v is not None}


class Handler(BaseHTTPRequestHandler):
    """The OpenAI-compatible API of `vllm serve`."""

    protocol_version = "HTTP/1.1"
    # Small writes (SSE chunks, short JSON) must not wait for delayed ACKs (Nagle): vLLM's
    # uvicorn sets TCP_NODELAY too.
    disable_nagle_algorithm = True
    server_version = "uvicorn"
    sys_version = ""
    engine: Engine  # set on the subclass made by main()
    _raw: bytes = b""
    _streaming = False

    # -- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def version_string(self) -> str:
        return "uvicorn"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        args = self.engine.settings.args
        if args.disable_uvicorn_access_log:
            return
        try:
            phrase = " " + self.responses[int(code)][0]
        except (KeyError, ValueError):
            phrase = ""
        client = f"{self.client_address[0]}:{self.client_address[1]}"
        log_uvicorn("info", f'{client} - "{self.requestline}" {code}{phrase}')

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _start_stream(self) -> None:
        self._streaming = True
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(f"data: {text}\n\n".encode())

    def _usage_chunk(
        self,
        request_id: str,
        kind: str,
        created: int,
        model: str,
        usage: dict[str, Any],
        fingerprint: str,
    ) -> None:
        """The last chunk before [DONE] when stream_options.include_usage asks for it."""
        self._event(
            {
                "id": request_id,
                "object": kind,
                "created": created,
                "model": model,
                "choices": [],
                "usage": without_none(usage),
                "system_fingerprint": fingerprint,
            }
        )

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _body(self) -> dict[str, Any]:
        raw = self._raw
        media = (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise validation_error(
                ["Unsupported Media Type: Only 'application/json' is allowed"], None
            )
        try:
            body = json.loads(raw.decode("utf-8") if raw else "")
        except (ValueError, UnicodeDecodeError) as exc:
            msg = getattr(exc, "msg", "Invalid UTF-8")
            pos = getattr(exc, "pos", 0)
            raise validation_error(
                [
                    {
                        "type": "json_invalid",
                        "loc": f"body.{pos}",
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": msg},
                    }
                ],
                f"body.{pos}",
            ) from None
        if not isinstance(body, dict):
            raise validation_error(
                [
                    {
                        "type": "model_attributes_type",
                        "loc": "body",
                        "msg": "Input should be a valid dictionary or object to extract "
                        "fields from",
                        "input": body,
                    }
                ],
                "body",
            )
        return body

    def _authorized(self) -> bool:
        settings = self.engine.settings
        if not settings.api_keys or "no_auth" in settings.faults:
            return True
        path = self.path.split("?", 1)[0]
        if not path.startswith(GUARDED_PREFIXES):
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        return any(hashlib.sha256(k.encode()).digest() == digest for k in settings.api_keys)

    # -- routing ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_OPTIONS(self) -> None:
        self._send(200, b"", "text/plain")

    def _route(self, method: str) -> None:
        # Read the whole body first, whatever the answer: on a kept-alive connection unread
        # bytes would be taken for the next request.
        length = int(self.headers.get("content-length") or 0)
        self._raw = self.rfile.read(length) if length > 0 else b""
        self._streaming = False
        path = self.path.split("?", 1)[0]
        routes: dict[str, dict[str, Callable[[], None]]] = {
            "/health": {"GET": self._health},
            "/ping": {"GET": self._health, "POST": self._health},
            "/version": {"GET": lambda: self._json(200, {"version": VLLM_VERSION})},
            "/metrics": {"GET": self._metrics},
            "/load": {"GET": lambda: self._json(200, {"server_load": self.engine.running})},
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completions},
        }
        try:
            if not self._authorized():
                self._json(401, {"error": "Unauthorized"})
                return
            if path.startswith("/v1") and not self.engine.healthy:
                raise RequestError(503, "The engine is not ready.", "ServiceUnavailableError")
            handlers = routes.get(path)
            if handlers is None:
                self._json(404, {"detail": "Not Found"})
            elif method not in handlers:
                self._json(405, {"detail": "Method Not Allowed"})
            else:
                handlers[method]()
        except RequestError as exc:
            self._json(exc.status, exc.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a stand-in bug: answer like vLLM's fallback handler
            log("ERROR", "exception.py:40", f"Error in {method} {path}: {exc!r}")
            self.close_connection = True
            if not self._streaming:
                error = RequestError(500, str(exc), "InternalServerError")
                self._json(500, error.body)

    def _health(self) -> None:
        self._send(200 if self.engine.healthy else 503, b"", "application/json")

    def _metrics(self) -> None:
        self._send(200, self.engine.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _models(self) -> None:
        settings = self.engine.settings
        names = settings.served_names
        if "wrong_model" in settings.faults:
            names = [settings.faults["wrong_model"] or "wrong-model"]
        now = int(time.time())
        cards = [
            {
                "id": name,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": settings.args.model,
                "parent": None,
                "max_model_len": settings.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{uuid.uuid4().hex}",
                        "object": "model_permission",
                        "created": now,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in names
        ]
        self._json(200, {"object": "list", "data": cards})

    # -- completions --------------------------------------------------------------------------

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        names = self.engine.settings.served_names
        if model and model not in names:
            raise RequestError(
                404,
                f"The model `{model}` does not exist. Valid aliases: {', '.join(names)}.",
                "NotFoundError",
                "model",
            )

    def _max_tokens(self, body: dict[str, Any], prompt_tokens: int, chat: bool) -> int:
        """vLLM 0.33.0's checks (renderers/params.py, v1/engine/input_processor.py) and
        clamp (serve/utils/api_utils.py::get_max_tokens)."""
        max_model_len = self.engine.settings.max_model_len
        param = "max_tokens"
        requested = _int_field(body, "max_tokens")
        if chat and body.get("max_completion_tokens") is not None:
            param, requested = "max_completion_tokens", _int_field(body, "max_completion_tokens")
        if requested is not None and requested > max_model_len:
            raise RequestError(
                400,
                f"{param}={requested} cannot be greater than max_model_len={max_model_len}. "
                f"Please request fewer output tokens. (parameter={param}, value={requested})",
                "BadRequestError",
                param,
            )
        if requested is not None and requested < 1:  # SamplingParams._verify_args
            raise RequestError(
                400,
                f"max_tokens must be at least 1, got {requested}. "
                f"(parameter=max_tokens, value={requested})",
                "BadRequestError",
                "max_tokens",
            )
        if prompt_tokens > max_model_len:
            raise RequestError(
                400,
                f"This model's maximum context length is {max_model_len} tokens. However, your "
                f"prompt contains {prompt_tokens} input tokens, which exceeds this limit even "
                "without any output tokens. Please reduce the length of the input prompt. "
                f"(parameter=input_tokens, value={prompt_tokens})",
                "BadRequestError",
                "input_tokens",
            )
        if prompt_tokens == max_model_len:
            raise RequestError(
                400,
                f"The decoder prompt (length {prompt_tokens}) plus the number of requested "
                f"output tokens (at least 1) is longer than the maximum model length of "
                f"{max_model_len}. Make sure that `max_model_len` is no smaller than the number "
                "of text tokens (prompt + requested output tokens).",
                "BadRequestError",
            )
        default = self.engine.settings.default_sampling.get("max_tokens")
        limits = [max_model_len - prompt_tokens, requested, default]
        return min(v for v in limits if v is not None)

    def _run(self, prompt_tokens: int, generation: Generation, emit: Callable[[int], None]) -> str:
        """Hold a running slot and pace the tokens; emit(i) is called as token i is produced."""
        settings = self.engine.settings
        engine = self.engine
        engine.acquire(prompt_tokens)
        reason = "abort"
        try:
            if "slow" in settings.faults:
                time.sleep(float(settings.faults["slow"] or 1))
            time.sleep(settings.ttft_seconds)
            per_token = 1.0 / settings.tokens_per_second if settings.tokens_per_second > 0 else 0
            start = time.monotonic()
            for i in range(generation.completion_tokens):
                delay = start + i * per_token - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                emit(i)
            reason = generation.finish_reason
            return reason
        finally:
            engine.release(prompt_tokens, generation.completion_tokens, reason)

    def _after_chat(self) -> None:
        settings = self.engine.settings
        if "die_after" not in settings.faults:
            return
        with self.engine.cv:
            self.engine.chat_served += 1
            served = self.engine.chat_served
        if served >= int(settings.faults["die_after"] or 1):
            die_after_requests(served)

    def _sampling(self, body: dict[str, Any]) -> None:
        """Accept the usual sampling parameters (their effect is not simulated)."""
        for key in (
            "temperature",
            "top_p",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ):
            _float_field(body, key)
        _int_field(body, "top_k")
        _int_field(body, "n")
        _int_field(body, "seed")

    def _reasoning_details(self, reasoning_tokens: int) -> dict[str, int] | None:
        """usage.completion_tokens_details: only a server with a reasoning parser counts."""
        if not self.engine.settings.args.reasoning_parser:
            return None
        return {"reasoning_tokens": reasoning_tokens}

    def _chat(self) -> None:
        settings = self.engine.settings
        body = self._body()
        messages = body.get("messages")
        if not isinstance(messages, list):
            missing = messages is None
            raise validation_error(
                [
                    {
                        "type": "missing" if missing else "list_type",
                        "loc": "body.messages",
                        "msg": "Field required" if missing else "Input should be a valid list",
                        "input": body if missing else messages,
                    }
                ],
                "body.messages",
            )
        self._sampling(body)
        self._check_model(body)
        prompt_tokens = chat_prompt_tokens(messages)
        max_tokens = self._max_tokens(body, prompt_tokens, chat=True)
        kwargs = dict(settings.default_chat_template_kwargs)
        if isinstance(body.get("chat_template_kwargs"), dict):
            kwargs.update(body["chat_template_kwargs"])
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last_user = message_text(users[-1]) if users else ""
        enable_thinking = bool(kwargs.get("enable_thinking", True))
        generation = generate_chat(
            last_user,
            max_tokens=max_tokens,
            thinking=enable_thinking and "/no_think" not in last_user,
            reasoning_parser=settings.args.reasoning_parser in ("qwen3", "deepseek_r1"),
            thinking_tokens=settings.thinking_tokens,
            answer_tokens=settings.answer_tokens,
        )
        prompt_text = (
            chat_prompt_text(messages, enable_thinking)
            if body.get("return_prompt_text") is True
            else None
        )
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = settings.served_names[0]
        if body.get("stream"):
            self._chat_stream(
                body, request_id, created, model, prompt_tokens, prompt_text, generation
            )
        else:
            n = max(1, _int_field(body, "n") or 1)
            self._run(prompt_tokens, generation, lambda i: None)
            content = generation.text("content")
            if "empty_content" in settings.faults:
                content = ""
            choice = {
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": generation.text("reasoning"),
                },
                "logprobs": None,
                "finish_reason": generation.finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "routed_experts": None,
                "weight_versions": None,
            }
            usage = usage_info(
                prompt_tokens,
                generation.completion_tokens * n,
                self._reasoning_details(generation.reasoning_tokens() * n),
            )
            self._json(
                200,
                {
                    "id": request_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": i, **choice} for i in range(n)],
                    "service_tier": None,
                    "system_fingerprint": settings.fingerprint,
                    "usage": usage,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "prompt_text": prompt_text,
                    "kv_transfer_params": None,
                    "ec_transfer_params": None,
                    "metrics": None,
                },
            )
        self._after_chat()

    def _chat_stream(
        self,
        body: dict[str, Any],
        request_id: str,
        created: int,
        model: str,
        prompt_tokens: int,
        prompt_text: str | None,
        generation: Generation,
    ) -> None:
        """SSE chunks as vLLM 0.33.0 serializes them (exclude_unset: a field is there only
        where serving.py sets it, null or not)."""
        settings = self.engine.settings
        final_usage, continuous_usage = include_usage(
            body.get("stream_options"), bool(settings.args.enable_force_include_usage)
        )
        broken = "broken_stream" in settings.faults
        cut = generation.completion_tokens // 2 if broken else -1

        def running_usage(tokens: int) -> dict[str, Any]:
            usage = usage_info(
                prompt_tokens, tokens, self._reasoning_details(generation.reasoning_tokens(tokens))
            )
            del usage["prompt_tokens_details"]  # not set, so left out
            return usage

        def chunk(choice: dict[str, Any]) -> dict[str, Any]:
            return {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }

        first = chunk(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        )
        if continuous_usage:
            first["usage"] = running_usage(0)
        first.update(prompt_token_ids=None, prompt_text=prompt_text)

        def token_chunk(delta: dict[str, Any], tokens: int, finish: str | None) -> None:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
            if finish:
                choice["stop_reason"] = None
            choice["token_ids"] = None
            if finish:
                choice["weight_versions"] = None
            payload = chunk(choice)
            if continuous_usage:
                payload["usage"] = running_usage(tokens)
            if finish and not final_usage:  # else the usage chunk is the last message
                payload["system_fingerprint"] = settings.fingerprint
            payload["kv_transfer_params"] = None
            self._event(payload)

        self._start_stream()
        self._event(first)
        last = generation.completion_tokens - 1

        def emit(i: int) -> None:
            if i == cut:
                raise _StreamCut
            piece = generation.pieces[i]
            finish = generation.finish_reason if i == last else None
            if piece.text or finish:
                token_chunk({piece.channel: piece.text} if piece.text else {}, i + 1, finish)

        try:
            self._run(prompt_tokens, generation, emit)
        except _StreamCut:
            self._end_stream()
            self.close_connection = True
            return
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if generation.completion_tokens == 0:
            token_chunk({}, 0, generation.finish_reason)
        if final_usage:
            usage = usage_info(
                prompt_tokens,
                generation.completion_tokens,
                self._reasoning_details(generation.reasoning_tokens()),
            )
            self._usage_chunk(
                request_id, "chat.completion.chunk", created, model, usage, settings.fingerprint
            )
        self._event("[DONE]")
        self._end_stream()

    def _prompt(self, body: dict[str, Any]) -> str:
        """The text of /v1/completions' `prompt` (a string or a list of strings)."""
        prompt = body.get("prompt")
        if prompt is None or prompt == "":  # CompletionRequest.validate_prompt_and_prompt_embeds
            raise RequestError(
                400,
                "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
                "BadRequestError",
                "prompt",
            )
        if prompt == []:
            raise RequestError(
                400,
                "You must pass at least one prompt (parameter=prompt)",
                "BadRequestError",
                "prompt",
            )
        if isinstance(prompt, list):
            return " ".join(str(p) for p in prompt if isinstance(p, str))
        if not isinstance(prompt, str):
            # One error per branch of list[int] | list[list[int]] | str | list[str].
            list_type = {
                "type": "list_type",
                "loc": "body.prompt",
                "msg": "Input should be a valid list",
                "input": prompt,
            }
            string_type = {
                **list_type,
                "type": "string_type",
                "msg": "Input should be a valid string",
            }
            raise validation_error([list_type, list_type, string_type, list_type], "body.prompt")
        return prompt

    def _completions(self) -> None:
        settings = self.engine.settings
        body = self._body()
        prompt = self._prompt(body)
        self._sampling(body)
        self._check_model(body)
        prompt_tokens = count_tokens(prompt)
        max_tokens = self._max_tokens(body, prompt_tokens, chat=False)
        if body.get("max_tokens") is None:
            max_tokens = min(max_tokens, 16)  # CompletionRequest.max_tokens defaults to 16
        generation = generate_completion(
            prompt, max_tokens=max_tokens, answer_tokens=settings.answer_tokens
        )
        request_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = settings.served_names[0]
        if not body.get("stream"):
            self._run(prompt_tokens, generation, lambda i: None)
            self._json(
                200,
                {
                    "id": request_id,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "text": generation.text("content") or "",
                            "logprobs": None,
                            "finish_reason": generation.finish_reason,
                            "stop_reason": None,
                            "token_ids": None,
                            "prompt_logprobs": None,
                            "prompt_token_ids": None,
                            "routed_experts": None,
                            "weight_versions": None,
                        }
                    ],
                    "service_tier": None,
                    "system_fingerprint": settings.fingerprint,
                    "usage": usage_info(prompt_tokens, generation.completion_tokens, None),
                    "kv_transfer_params": None,
                    "ec_transfer_params": None,
                    "metrics": None,
                },
            )
            return
        final_usage, continuous_usage = include_usage(
            body.get("stream_options"), bool(settings.args.enable_force_include_usage)
        )
        last = generation.completion_tokens - 1
        self._start_stream()

        def emit(i: int) -> None:
            finish = generation.finish_reason if i == last else None
            payload: dict[str, Any] = {
                "id": request_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "text": generation.pieces[i].text,
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                        "prompt_token_ids": None,
                        "token_ids": None,
                        "weight_versions": None,
                    }
                ],
            }
            if continuous_usage:
                payload["usage"] = {
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": prompt_tokens + i + 1,
                    "completion_tokens": i + 1,
                }
            if finish and not final_usage:
                payload["system_fingerprint"] = settings.fingerprint
            payload["kv_transfer_params"] = None
            self._event(payload)

        try:
            self._run(prompt_tokens, generation, emit)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if final_usage:
            usage = usage_info(prompt_tokens, generation.completion_tokens, None)
            self._usage_chunk(
                request_id, "text_completion", created, model, usage, settings.fingerprint
            )
        self._event("[DONE]")
        self._end_stream()


class _StreamCut(Exception):
    """broken_stream: stop sending in the middle of a stream."""


# --------------------------------------------------------------------------------------------
# Start-up
# --------------------------------------------------------------------------------------------

_ledger: Ledger | None = None


def die_after_requests(served: int) -> NoReturn:
    log(
        "ERROR",
        "core.py:1321",
        f"EngineCore encountered a fatal error (after {served} "
        "chat requests: STANDIN_FAULT die_after).",
        ENGINE,
    )
    log(
        "ERROR",
        "async_llm.py:612",
        "AsyncLLM output_handler failed.\nvllm.v1.engine."
        "exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) "
        "for the root cause.",
    )
    log_uvicorn("info", "Shutting down")
    os._exit(1)  # like a crash: ledger entries stay behind, unlocked (stale)


def fail_engine(exc_line: str, where: str) -> NoReturn:
    """Print what vLLM prints when the engine core dies during start-up, then exit 1."""
    pid = os.getpid()
    lines = [
        "EngineCore failed to start.",
        "Traceback (most recent call last):",
        '  File "vllm/v1/engine/core.py", line 1479, in run_engine_core',
        "    engine_core = EngineCoreProc(*args, engine_index=dp_rank, **kwargs)",
        f'  File "vllm/{where.split(":")[0]}", line {where.split(":")[-1]}, in <module>',
        exc_line,
    ]
    log("ERROR", "core.py:1488", "\n".join(lines), ENGINE)
    log_raw(f"Process EngineCore_DP0:\nTraceback (most recent call last):\n{exc_line}")
    log_raw(
        "Traceback (most recent call last):\n"
        '  File "vllm/entrypoints/cli/main.py", line 79, in main\n'
        "    args.dispatch_function(args)\n"
        "RuntimeError: Engine core initialization failed. See root cause above. "
        f"Failed core proc(s): {{'EngineCore_DP0': {pid + 1}}}"
    )
    release_and_exit(1)


def fail_api_server(exc_line: str) -> NoReturn:
    """An uncaught exception in the API server process (before the engine starts)."""
    log_raw(
        "Traceback (most recent call last):\n"
        '  File "vllm/entrypoints/cli/main.py", line 79, in main\n'
        "    args.dispatch_function(args)\n"
        f"{exc_line}"
    )
    release_and_exit(1)


def release_and_exit(code: int) -> NoReturn:
    if _ledger is not None:
        _ledger.release()
    sys.stdout.flush()
    os._exit(code)


def _env_float(env: dict[str, str], key: str, default: float) -> float:
    value = env.get(key)
    return default if value in (None, "") else float(value)


def _sleep_with_race_check(seconds: float, ledger: Ledger | None, gpus: Sequence[str]) -> bool:
    """Wait out the load window; True if another instance was loading on one of our GPUs."""
    deadline = time.monotonic() + seconds
    raced = False
    while True:
        if ledger is not None and not raced:
            raced = any(e.state == "loading" for g in gpus for e in ledger.entries(g))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return raced
        time.sleep(min(0.1, remaining))


def startup(argv: Sequence[str], env: dict[str, str]) -> tuple[Settings, str, int]:
    """Everything `vllm serve` does before it listens; returns (settings, host, port)."""
    global _ledger
    try:
        args, warnings = parse_serve_args(argv)
    except StartupError as exc:
        fail_api_server(exc.exc_line)
    global _uvicorn_level
    _uvicorn_level = _UVICORN_LEVELS[args.uvicorn_log_level]
    try:
        faults = parse_faults(env.get("STANDIN_FAULT"))
        totals = parse_gpu_map(env.get("STANDIN_GPU_TOTAL_MIB"))
        foreign = parse_gpu_map(env.get("STANDIN_GPU_FOREIGN_MIB"))
    except ValueError as exc:
        fail_api_server(f"ValueError: {exc}")
    for warning in warnings:
        log("WARNING", "argparse_utils.py:311", warning)
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        fail_api_server("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser")
    log("INFO", "utils.py:299", f"vLLM server version {VLLM_VERSION}, serving model {args.model}")
    defaults = vars(build_parser().parse_args(["serve"]))
    non_default = {
        k: v
        for k, v in vars(args).items()
        if k not in ("subparser", "model") and defaults.get(k) != v
    }
    for secret in ("api_key",):
        if secret in non_default:
            non_default[secret] = "[REDACTED]"
    log("INFO", "utils.py:233", f"non-default args: {non_default}")
    if args.enable_auto_tool_choice and args.tool_call_parser not in TOOL_CALL_PARSERS:
        fail_api_server(
            f"KeyError: 'invalid tool call parser: {args.tool_call_parser} (chose from "
            f"{{ {','.join(TOOL_CALL_PARSERS)} }})'"
        )
    if args.reasoning_parser and args.reasoning_parser not in REASONING_PARSERS:
        fail_api_server(
            f"KeyError: 'invalid reasoning parser: {args.reasoning_parser} (chose from "
            f"{{ {','.join(REASONING_PARSERS)} }})'"
        )

    # EngineArgs.create_engine_config: pydantic-validated configs
    util = args.gpu_memory_utilization if args.gpu_memory_utilization is not None else 0.92
    pyd = "pydantic_core._pydantic_core.ValidationError: 1 validation error for"
    if util > 1:
        fail_api_server(
            f"{pyd} CacheConfig\ngpu_memory_utilization\n  Input should be less than or equal "
            f"to 1 [type=less_than_equal, input_value={util}, input_type=float]"
        )
    if util <= 0:
        fail_api_server(
            f"{pyd} CacheConfig\ngpu_memory_utilization\n  Input should be greater than 0 "
            f"[type=greater_than, input_value={util}, input_type=float]"
        )
    kv_dtype = args.kv_cache_dtype or "auto"
    if kv_dtype not in KV_CACHE_DTYPES:
        fail_api_server(
            f"{pyd} CacheConfig\ncache_dtype\n  Value error, Invalid kv_cache_dtype: "
            f"'{kv_dtype}'. Valid values are: {list(KV_CACHE_DTYPES)} [type=value_error, "
            f"input_value='{kv_dtype}', input_type=str]"
        )
    info = model_info(args.model, env)
    try:
        quantization = resolve_quantization(info, args.quantization)
    except StartupError as exc:
        fail_api_server(exc.exc_line)
    tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
    if tp < 1 or pp < 1:
        fail_api_server(
            f"ValueError: tensor_parallel_size ({tp}) and pipeline_parallel_size ({pp}) must be "
            "positive integers"
        )
    if info.q_heads % tp:
        fail_api_server(
            f"ValueError: Total number of attention heads ({info.q_heads}) must be divisible "
            f"by tensor parallel size ({tp})."
        )
    hf_overrides = args.hf_overrides if isinstance(args.hf_overrides, dict) else {}
    derived = int(hf_overrides.get("max_position_embeddings", info.max_position_embeddings))
    rope = hf_overrides.get("rope_parameters") or hf_overrides.get("rope_scaling") or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) not in (
        None,
        "default",
        "su",
        "longrope",
        "llama3",
        "yarn",
        "deepseek_yarn",
        "deepseek_llama_scaling",
    ):
        derived = int(derived * float(rope.get("factor") or 1.0))
    max_model_len = args.max_model_len if args.max_model_len is not None else derived
    if max_model_len not in (-1,) and max_model_len > derived:
        allow = env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "").lower() in ("1", "true")
        msg = (
            f"User-specified max_model_len ({max_model_len}) is greater than the derived "
            f"max_model_len (max_position_embeddings={derived} or model_max_length=None in "
            "model's config.json)."
        )
        if not allow:
            fail_api_server(
                f"{pyd} ModelConfig\n  Value error, {msg} To allow overriding this maximum, "
                "set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN "
                "must be used with extreme caution. [type=value_error]"
            )
        log("WARNING", "model.py:2676", msg)
    auto_len = max_model_len == -1
    if auto_len:
        max_model_len = derived
    elif max_model_len < 1:
        fail_api_server(
            f"{pyd} ModelConfig\n  Value error, max_model_len must be a positive integer, got "
            f"int: {max_model_len}. Example: max_model_len=2048 [type=value_error]"
        )
    log("INFO", "model.py:578", f"Resolved architecture: {info.architecture}")
    log("INFO", "model.py:1802", f"Using max model len {max_model_len}")

    gpus_all = visible_gpus(env, totals)
    world = tp * pp
    if gpus_all and len(gpus_all) < world:
        fail_api_server(
            f"ValueError: World size ({world}) is larger than the number of available GPUs "
            f"({len(gpus_all)}) in this node. If this is intentional and you are using:\n"
            "- ray, set '--distributed-executor-backend ray'.\n"
            "- multiprocessing, set '--nnodes' appropriately."
        )
    gpus = gpus_all[:world]
    first_total = totals.get(gpus[0], DEFAULT_GPU_TOTAL_MIB) * MiB if gpus else 0
    max_num_seqs = args.max_num_seqs or (1024 if first_total >= 70 * GiB else 256)
    batched = args.max_num_batched_tokens or (8192 if first_total >= 70 * GiB else 2048)
    log(
        "INFO",
        "scheduler.py:245",
        f"Chunked prefill is enabled with max_num_batched_tokens={batched}.",
    )

    served = args.served_model_name or [args.model]
    fingerprint_src = json.dumps(sorted((k, str(v)) for k, v in non_default.items()))
    fingerprint = f"vllm-{VLLM_VERSION}" + (f"-tp{tp}" if tp > 1 else "")
    fingerprint += "-" + hashlib.sha256(fingerprint_src.encode()).hexdigest()[:8]
    log(
        "INFO",
        "core.py:139",
        f"Initializing a V1 LLM engine (v{VLLM_VERSION}) with config: model='{args.model}', "
        f"tokenizer='{args.tokenizer or args.model}', trust_remote_code="
        f"{bool(args.trust_remote_code)}, dtype=torch.bfloat16, max_seq_len={max_model_len}, "
        f"download_dir={args.download_dir!r}, tensor_parallel_size={tp}, pipeline_parallel_size="
        f"{pp}, quantization={quantization}, enforce_eager={bool(args.enforce_eager)}, "
        f"kv_cache_dtype={kv_dtype}, device_config=cuda, seed={args.seed}, served_model_name="
        f"{served[0]}, enable_prefix_caching={args.enable_prefix_caching is not False}",
        ENGINE,
    )

    # Worker start: the free-memory check on every GPU this instance uses.
    instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ledger_dir = env.get("STANDIN_LEDGER_DIR") or DEFAULT_LEDGER_DIR
    ledger = Ledger(ledger_dir, instance) if gpus else None
    requested: dict[str, int] = {}
    if ledger is not None:
        _ledger = ledger
        for local, gpu in enumerate(gpus):
            total = totals.get(gpu, DEFAULT_GPU_TOTAL_MIB) * MiB
            used = foreign.get(gpu, 0) * MiB + sum(e.requested for e in ledger.entries(gpu))
            error = free_memory_error(local, total, max(0, total - used), util)
            if error:
                fail_engine(error, "v1/worker/utils.py:762")
            requested[gpu] = requested_bytes(total, util)
        for gpu in gpus:
            ledger.register(gpu, requested[gpu], args.model)

    if "oom_on_start" in faults:
        total = first_total or DEFAULT_GPU_TOTAL_MIB * MiB
        fail_engine(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.16 GiB. GPU 0 has a "
            f"total capacity of {total / GiB:.2f} GiB of which 412.56 MiB is free. Including "
            f"non-PyTorch memory, this process has {(total / GiB) - 0.4:.2f} GiB memory in use. "
            "Of the allocated memory 20.14 GiB is allocated by PyTorch, and 1.02 GiB is reserved "
            "by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See "
            "documentation for Memory Management  (https://pytorch.org/docs/stable/notes/"
            "cuda.html#environment-variables)",
            "v1/worker/gpu_model_runner.py:4981",
        )
    log("INFO", "gpu_model_runner.py:4979", f"Starting to load model {args.model}...", ENGINE)
    load_seconds = _env_float(env, "STANDIN_LOAD_SECONDS", 2.0)
    if "crash_on_start" in faults:
        _sleep_with_race_check(load_seconds / 2, None, gpus)
        fail_engine(
            "RuntimeError: CUDA error: an illegal memory access was encountered\nCUDA kernel "
            "errors might be asynchronously reported at some other API call, so the stacktrace "
            "below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1",
            "v1/worker/gpu_model_runner.py:4990",
        )
    raced = _sleep_with_race_check(load_seconds, ledger, gpus)
    weights = weights_bytes(info, quantization, env) // max(1, tp)
    if (
        quantization
        and quantization in CHECKPOINT_ONLY_QUANTIZATION
        and info.checkpoint_quant is None
    ):
        fail_engine(
            f"ValueError: Cannot find the config file for {quantization}",
            "model_executor/model_loader/weight_utils.py:380",
        )
    if quantization == "fp8" and info.checkpoint_quant is None:
        log(
            "WARNING",
            "weight_utils.py:357",
            "--quantization fp8 is deprecated for online "
            "quantization; use --quantization fp8_per_tensor instead.",
            ENGINE,
        )
    log(
        "INFO",
        "default_loader.py:507",
        f"Loading weights took {load_seconds * 0.6:.2f} seconds",
        ENGINE,
    )
    log(
        "INFO",
        "gpu_model_runner.py:5089",
        f"Model loading took {format_gib(weights)} GiB memory and {load_seconds * 0.7:.6f} seconds",
        ENGINE,
    )

    # Profiling: KV cache = requested - weights - activations/non-torch - CUDA graphs.
    if raced:
        # vllm#55827: the other instance's allocations land inside this one's profiling window
        # and are counted as this instance's non-KV memory.
        fail_engine(NO_CACHE_MEMORY, "v1/core/kv_cache_planning.py:57")
    per_token = kv_bytes_per_token(info, tp, kv_dtype)
    budget = min(requested.values()) if requested else requested_bytes(NO_GPU_TOTAL_MIB * MiB, util)
    overhead = int(
        _env_float(env, "STANDIN_OVERHEAD_GIB", 0.5 if args.enforce_eager else 0.75) * GiB
    )
    kv = plan_kv_cache(
        budget - weights - overhead,
        per_token,
        max_model_len,
        auto_len=auto_len,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
    )
    if args.kv_cache_memory_bytes:
        log(
            "INFO",
            "gpu_worker.py:712",
            f"Reserved {format_gib(kv.available)} GiB memory for KV "
            "Cache as specified by kv_cache_memory_bytes config and skipped memory profiling. "
            "This does not respect the gpu_memory_utilization config. Only use "
            "kv_cache_memory_bytes config when you want manual control of KV cache memory "
            "size.",
            ENGINE,
        )
    else:
        log(
            "INFO",
            "gpu_worker.py:773",
            f"Available KV cache memory: {format_gib(kv.available)} GiB",
            ENGINE,
        )
    if kv.error and gpus:  # without GPUs there is nothing to run out of
        fail_engine(kv.error, "v1/core/kv_cache_planning.py:57")
    kv_tokens = max(kv.tokens, BLOCK_SIZE)
    max_model_len = kv.max_model_len
    concurrency = kv_tokens / (math.ceil(max_model_len / BLOCK_SIZE) * BLOCK_SIZE)
    log(
        "INFO",
        "kv_cache_utils.py:1147",
        f"GPU KV cache size: {kv_tokens:,} tokens, Maximum "
        f"concurrency for {max_model_len:,} tokens per request: {concurrency:.2f}x",
        ENGINE,
    )
    log(
        "INFO",
        "core.py:413",
        f"init engine (profile, create kv cache, warmup model) took {load_seconds * 0.3:.2f} s",
        ENGINE,
    )

    # Sampling defaults from generation_config.json (+ --override-generation-config).
    override = (
        args.override_generation_config if isinstance(args.override_generation_config, dict) else {}
    )
    source = args.generation_config or "auto"
    config = {} if source == "vllm" else dict(info.generation_config)
    config.update(override)
    diff = {k: config[k] for k in GENERATION_CONFIG_KEYS if config.get(k) is not None}
    if "max_new_tokens" in diff:
        diff["max_tokens"] = diff.pop("max_new_tokens")
    if diff and source != "vllm":
        origin = "the model's `generation_config.json`" if source == "auto" else source
        log(
            "WARNING",
            "model.py:1907",
            f"Default vLLM sampling parameters have been overridden by "
            f"{origin}: `{diff}`. If this is not intended, please relaunch vLLM instance with "
            "`--generation-config vllm`.",
        )
    if diff:
        log("INFO", "serving.py:191", f"Using default chat sampling params from model: {diff}")

    api_keys = list(args.api_key or [])
    if not api_keys and env.get("VLLM_API_KEY"):
        api_keys = [env["VLLM_API_KEY"]]
    answer = env.get("STANDIN_ANSWER_TOKENS")
    settings = Settings(
        args=args,
        info=info,
        served_names=list(served),
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        api_keys=api_keys,
        faults=faults,
        thinking_tokens=int(_env_float(env, "STANDIN_THINKING_TOKENS", 16)),
        answer_tokens=int(answer) if answer else None,
        tokens_per_second=_env_float(env, "STANDIN_TOKENS_PER_SECOND", 200),
        ttft_seconds=_env_float(env, "STANDIN_TTFT_MS", 20) / 1000,
        kv_tokens=kv_tokens,
        default_sampling=diff,
        fingerprint=fingerprint,
        default_chat_template_kwargs=(
            dict(args.default_chat_template_kwargs)
            if isinstance(args.default_chat_template_kwargs, dict)
            else {}
        ),
    )
    host = args.host if args.host else "0.0.0.0"
    return settings, host, args.port


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: `server.py serve [MODEL] [options]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "serve":
        # Only the serve subcommand exists here; let argparse explain.
        build_parser().parse_args(argv or ["--help"])
        sys.exit(2)

    def on_signal(signum: int, _frame: Any) -> None:
        log_uvicorn("info", "Shutting down")
        log("INFO", "launcher.py:112", "Shutting down FastAPI HTTP server.")
        log_uvicorn("info", "Waiting for application shutdown.")
        log_uvicorn("info", "Application shutdown complete.")
        release_and_exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = dict(os.environ)
    settings, host, port = startup(argv[1:], env)

    engine = Engine(settings)
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server_class = type(
        "StandinHTTPServer",
        (ThreadingHTTPServer,),
        {
            "allow_reuse_address": True,
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
        },
    )
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        fail_api_server(
            f"OSError: [Errno {exc.errno}] error while attempting to bind on address "
            f"('{host}', {port}): {exc.strerror}"
        )
    server.daemon_threads = True
    if _ledger is not None:
        _ledger.set_state("ready")
    log("INFO", "api_server.py:139", f"Starting vLLM server on http://{host}:{port}")
    log("INFO", "launcher.py:188", "Available routes are:")
    for route, methods in (
        ("/health", "GET"),
        ("/metrics", "GET"),
        ("/ping", "GET, POST"),
        ("/version", "GET"),
        ("/v1/models", "GET"),
        ("/v1/chat/completions", "POST"),
        ("/v1/completions", "POST"),
    ):
        log("INFO", "launcher.py:197", f"Route: {route}, Methods: {methods}")
    log_uvicorn("info", f"Started server process [{os.getpid()}]")
    log_uvicorn("info", "Waiting for application startup.")
    log_uvicorn("info", "Application startup complete.")
    if not settings.args.disable_log_stats:
        interval = _env_float(env, "VLLM_LOG_STATS_INTERVAL", 10.0)

        def stats() -> None:
            while True:
                time.sleep(interval)
                line = engine.stats_line(interval)
                if line:
                    log("INFO", "loggers.py:278", line)

        threading.Thread(target=stats, daemon=True).start()
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()

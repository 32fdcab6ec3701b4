"""`extra_args` against vLLM 0.33's own `vllm serve` option table (the file the stand-in
parses): unknown options, options that carry secrets, and options the planner already sets
are refused when the profile is read, not when the container exits at start-up."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from deployer.resources import standin_dir

# The stand-in ships the table as package data; read as a file (importlib.resources costs
# `plan` some 10 ms of imports: tempfile, shutil, zipfile).
OPTIONS_FILE = standin_dir() / "data" / "vllm_serve_options.txt"

# Flags that carry secrets: they would land in compose.yaml, plan.json and `docker inspect`.
SECRET_FLAGS = {
    "--api-key": "set api_key or api_key_env on the service (the key then lives only in .env)",
    "--hf-token": "pass --hf-token-file or set HF_TOKEN in your environment",
}
# Flags the planner sets from the profile (spec.vllm_args): the profile key that decides them.
PLANNED_FLAGS = {
    "--model": "model",
    "--served-model-name": "served_model_name",
    "--host": "bind",
    "--port": "port",
    "--tensor-parallel-size": "gpus / gpu_count",
    "--pipeline-parallel-size": "gpus / gpu_count (one instance spans all its GPUs)",
    "--data-parallel-size": "a second service (one instance per service)",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--max-model-len": "context",
    "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--kv-cache-dtype": "kv_cache_dtype",
    "--quantization": "model (choose the checkpoint of that quantization)",
    "--reasoning-parser": "reasoning_parser",
    "--generation-config": "generation",
    "--override-generation-config": "generation",
    "--hf-overrides": "context (the planner writes the YaRN overrides)",
    "--enforce-eager": "enforce_eager",
    "--config": "extra_args, one option at a time (a config file is not read)",
}
MAX_EXTRA_ARGS = 64
MAX_ARG_CHARS = 4096


@dataclass(frozen=True)
class ServeOption:
    """One `vllm serve` option: its canonical flag and how many values it takes."""

    canonical: str  # the first long flag of its line
    takes_value: bool
    many: bool  # nargs "+": every following word until the next option
    optional: bool = False  # nargs "?": the value may be left out


@functools.cache
def serve_options() -> dict[str, ServeOption]:
    """Every option string of `vllm serve` 0.33 (aliases and negative forms too)."""
    text = OPTIONS_FILE.read_text(encoding="utf-8")
    lines: list[str] = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if raw.startswith(" ") and lines:
            lines[-1] += raw.strip()
        else:
            lines.append(raw.strip())
    options: dict[str, ServeOption] = {}
    for line in lines:
        parts = line.split(" ")
        kind, flags = parts[0], parts[1].split(",")
        nargs = kind[-1] if kind[-1] in "+?" else ""
        kind = kind.rstrip("+?")
        canonical = next(f for f in flags if f.startswith("--"))
        flag_only = kind in ("bool", "true")
        option = ServeOption(canonical, not flag_only, nargs == "+", nargs == "?")
        for flag in flags:
            options[flag] = option
        for extra in parts[2:]:
            if extra.startswith("!"):
                for negative in extra[1:].split(","):
                    options[negative] = ServeOption(canonical, False, False)
    return options


def _normalise(flag: str) -> str:
    """vLLM reads `--max_model_len` as `--max-model-len` and `--hf-overrides.a.b` as a part of
    `--hf-overrides`; `-O3` is `--optimization-level 3`."""
    if flag.startswith("--"):
        root = flag.split(".", 1)[0].rstrip("+")
        return "--" + root[2:].replace("_", "-")
    if re.match(r"^-O\d?$", flag) or flag.startswith("-O="):
        return "--optimization-level"
    return flag


def check_extra_args(args: list[str], where: str) -> str | None:
    """The first problem with these `vllm serve` arguments, or None."""
    if len(args) > MAX_EXTRA_ARGS:
        return f"{where}: {len(args)} arguments, at most {MAX_EXTRA_ARGS}"
    if not args:
        return None
    options = serve_options()
    expecting: ServeOption | None = None
    for position, arg in enumerate(args):
        item = f"{where}[{position}]"
        if len(arg) > MAX_ARG_CHARS:
            return f"{item}: {len(arg)} characters, at most {MAX_ARG_CHARS}"
        if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in arg):
            return f"{item}: {arg!r:.60} has control characters"
        is_option = arg.startswith("-") and not re.match(r"^-\d", arg)
        if not is_option:
            if expecting is not None:
                expecting = expecting if expecting.many else None
                continue
            if (
                position > 0
                and args[position - 1].startswith("-")
                and "=" not in args[position - 1]
                and _normalise(args[position - 1].split("=", 1)[0]) in options
            ):
                return f"{item}: {args[position - 1]} takes no value, got {arg!r:.60}"
            return (
                f"{item}: {arg!r:.60} is not an option: `vllm serve` takes the model from the "
                "service's `model`"
            )
        if expecting is not None and not (expecting.many or expecting.optional):
            return f"{where}[{position - 1}]: {args[position - 1]} needs a value"
        flag, has_value = arg.split("=", 1)[0], "=" in arg
        name = _normalise(flag)
        option = options.get(name)
        if option is None:
            import difflib  # only for a misspelt option

            close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"{item}: {flag} is not an option of `vllm serve` 0.33{hint}"
        canonical = option.canonical
        if canonical in SECRET_FLAGS:
            return (
                f"{item}: {flag} would write a secret into compose.yaml and plan.json: "
                + (SECRET_FLAGS[canonical])
            )
        if canonical in PLANNED_FLAGS:
            return (
                f"{item}: {flag} is set by the plan; use the profile's "
                f"{PLANNED_FLAGS[canonical]} instead"
            )
        expecting = option if option.takes_value and not has_value else None
    if expecting is not None and not (expecting.many or expecting.optional):
        return f"{where}[{len(args) - 1}]: {args[-1]} needs a value"
    return None

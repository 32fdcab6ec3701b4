"""The `vllm serve` command line, rebuilt from the pinned release's option table.

Like vllm/entrypoints/openai/cli_args.py with FlexibleArgumentParser: the same options, types,
choices, defaults and argparse error messages (status 2), and the same argv rewriting.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .serve_options import load_option_specs
from .version import VLLM_VERSION

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"  # `vllm serve` without a model (EngineArgs.model default)


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

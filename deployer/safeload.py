"""Reading the documents users hand over (profiles, models files, GPU files, plan.json): bounded
in size, UTF-8 only, and YAML without duplicate keys, alias bombs or unbounded nesting. Every
problem becomes the caller's own error class, naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from deployer.errors import DeployError

MIB = 1 << 20
MAX_DOCUMENT_BYTES = 4 * MIB  # the largest shipped profile is 3 KB; a plan.json some 20 KB
MAX_DEPTH = 64


def read_text(
    path: str | Path, what: str, error: type[DeployError], limit: int = MAX_DOCUMENT_BYTES
) -> str:
    """The file's text: at most `limit` bytes of UTF-8 (a leading BOM is dropped)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(
            f"{path}: the {what} is larger than {limit // MIB} MiB",
            hint="is this the right file?",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
            hint="save the file as UTF-8",
        ) from None


def load_yaml(text: str, source: str, error: type[DeployError]) -> Any:
    """One YAML document, strictly: syntax, duplicate keys, alias expansion and depth (PyYAML,
    imported here only: deployer.strict_yaml)."""
    from deployer.strict_yaml import load_yaml as load_strictly

    return load_strictly(text, source, error)


def load_yaml_file(path: str | Path, what: str, error: type[DeployError]) -> Any:
    """A YAML file; one whose text is a shipped file's exactly (a profile, the catalog) is read
    from that file's parsed copy instead (deployer.shipped_yaml), without PyYAML."""
    text = read_text(path, what, error)
    from deployer.shipped_yaml import shipped_document

    document = shipped_document(text)
    return document if document is not None else load_yaml(text, str(path), error)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def load_json(text: str, source: str, error: type[DeployError], hint: str | None = None) -> Any:
    """A JSON document without NaN/Infinity, huge integers or unbounded nesting."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON (line {exc.lineno}: {exc.msg})", hint=hint) from None
    except (ValueError, RecursionError) as exc:  # NaN, 5000-digit integers, [[[[…]]]]
        problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise error(f"{source}: not valid JSON ({problem})", hint=hint) from None
    if _too_deep(data):
        raise error(f"{source}: nested more than {MAX_DEPTH} levels deep", hint=hint)
    return data


def _too_deep(data: Any) -> bool:
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

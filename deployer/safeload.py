"""Reading the documents users hand over (profiles, models files, GPU files, plan.json): bounded
in size, UTF-8 only, and YAML without duplicate keys, alias bombs or unbounded nesting. Every
problem becomes the caller's own error class, naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from deployer.errors import DeployError

MIB = 1 << 20
MAX_DOCUMENT_BYTES = 4 * MIB  # the largest shipped profile is 3 KB; a plan.json some 20 KB
# Nodes after expanding every alias: a billion-laughs document of 1 KB expands to 10**9.
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


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


def yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character, at a byte offset
        code = exc.character if isinstance(exc.character, int) else ord(exc.character or "?")
        return f"control character U+{code:04X} at position {exc.position}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    return f"line {mark.line + 1}: {problem}" if mark else str(problem)


# libyaml's parser when PyYAML was built with it (its wheels are): five times faster than the
# pure-Python one, which `plan` would otherwise spend a tenth of its time in.
if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StrictLoader(_SafeLoader):
    """PyYAML's safe loader, refusing a key that a mapping repeats (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base` merges, then keys override it
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class says so
                    continue
                if first is None:
                    seen[key] = key_node.start_mark.line
                else:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first on line {first + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)  # type: ignore[arg-type]


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """Nodes and depth of the document with every alias expanded, without expanding it."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if done:
            active.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), MAX_EXPANDED_NODES + 1)
            depths[key] = 1 + max((depths[id(c)] for c in children), default=0)
            continue
        if key in sizes:
            continue
        if key in active:
            raise ValueError("an alias refers to the node that contains it")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
        if len(active) > MAX_DEPTH:
            return 0, len(active)
    return sizes[id(root)], depths[id(root)]


def load_yaml(text: str, source: str, error: type[DeployError]) -> Any:
    """One YAML document, strictly: syntax, duplicate keys, alias expansion and depth."""
    try:
        loader = StrictLoader(text)  # the reader refuses control characters at once
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML ({yaml_problem(exc)})") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size, depth = _expanded_size(node)
        except ValueError as exc:
            raise error(f"{source}: {exc}") from None
        if depth > MAX_DEPTH:
            raise error(f"{source}: nested more than {MAX_DEPTH} levels deep")
        if size > MAX_EXPANDED_NODES:
            raise error(
                f"{source}: expands to more than {MAX_EXPANDED_NODES:,} values through its "
                "aliases (&anchor / *alias)",
                hint="write the values out, or use fewer aliases",
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(getattr(exc, "problem", "")):  # libyaml's own limit
            raise error(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
        raise error(f"{source}: not valid YAML ({yaml_problem(exc)})") from None
    except RecursionError:
        raise error(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, what: str, error: type[DeployError]) -> Any:
    return load_yaml(read_text(path, what, error), str(path), error)


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

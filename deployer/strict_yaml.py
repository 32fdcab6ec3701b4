"""PyYAML behind safeload.load_yaml: its safe loader (libyaml's when PyYAML has it), refusing
duplicate keys, alias bombs and unbounded nesting. Imported only when a YAML document is really
parsed: PyYAML's import alone is a tenth of `plan`'s start-up, and the shipped profiles and
catalog are read from their parsed copy (deployer.shipped_yaml)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from deployer.errors import DeployError
from deployer.safeload import MAX_DEPTH

# Nodes after expanding every alias: a billion-laughs document of 1 KB expands to 10**9.
MAX_EXPANDED_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


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

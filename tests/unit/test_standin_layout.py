"""The stand-in stays an independent, standard-library-only oracle: it imports nothing from the
rest of deployer nor from outside the standard library, its modules stay small, and its README
lists every one of them."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

STANDIN = Path(__file__).resolve().parents[2] / "deployer" / "standin"
MODULES = sorted(STANDIN.glob("*.py"))


def _imports(path: Path) -> list[str]:
    """Top-level names of the absolute imports in a module (relative ones are the package)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return names


def test_the_standin_imports_only_the_standard_library() -> None:
    assert len(MODULES) > 10
    foreign = {
        f"{path.name}: {name}"
        for path in MODULES
        for name in _imports(path)
        if name != "__future__" and name not in sys.stdlib_module_names
    }
    assert foreign == set()


def test_no_module_of_the_standin_shadows_the_standard_library() -> None:
    # The image runs server.py as a script; a module named like a stdlib one would be risky.
    assert {p.stem for p in MODULES} & set(sys.stdlib_module_names) == set()


def test_standin_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in MODULES}
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def test_the_readme_lists_every_module() -> None:
    readme = (STANDIN / "README.md").read_text()
    missing = [p.name for p in MODULES if p.name != "__init__.py" and f"`{p.name}`" not in readme]
    assert missing == []

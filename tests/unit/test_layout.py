"""The README's layout is the tree: every module of `deployer` appears in it, everything it names
exists, and no module grows past the size where it holds more than one idea."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT

DEPLOYER = ROOT / "deployer"
MAX_LINES = 600


def layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Contributing\n", 1)[1]
    match = re.search(r"Layout\b.*?\n```\n(.*?)\n```", section, re.S)
    assert match, "README: the Contributing section has no Layout: block"
    return match.group(1)


def documented_paths(block: str) -> set[str]:
    """Each line is `NAMES  description`: names (separated by single spaces, ending in .py or
    /) sit under the nearest less-indented directory; two or more spaces start the text."""
    stack: list[tuple[int, str]] = []  # (indent, directory path)
    paths: set[str] = set()
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0].split(" ")
        if not all(n.endswith((".py", "/")) for n in names):
            continue  # a description carried over to the next line
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        for name in names:
            path = parent + name
            paths.add(path.rstrip("/"))
            if name.endswith("/") and len(names) == 1:
                stack.append((indent, path))
    return paths


def modules() -> list[Path]:
    return sorted(
        p
        for p in DEPLOYER.rglob("*.py")
        if "__pycache__" not in p.parts and not (p.name.startswith("__") and p.stem != "__main__")
    )


def test_the_parser_reads_nested_directories() -> None:
    block = "a/  x\n  b.py c.py  y\n  d/  z\n    e.py  w\n  f.py\ng/  v"
    assert documented_paths(block) == {"a", "a/b.py", "a/c.py", "a/d", "a/d/e.py", "a/f.py", "g"}


def test_every_module_of_deployer_is_in_the_readme_layout() -> None:
    documented = documented_paths(layout_block())
    missing = [
        str(p.relative_to(ROOT)) for p in modules() if str(p.relative_to(ROOT)) not in documented
    ]
    packages = {str(p.parent.relative_to(ROOT)) for p in modules()}
    missing += sorted(f"{d}/" for d in packages if d not in documented)
    assert not missing, f"add to the README's layout (Contributing): {missing}"


def test_everything_the_readme_layout_names_exists() -> None:
    gone = sorted(p for p in documented_paths(layout_block()) if not (ROOT / p).exists())
    assert not gone, f"the README's layout names paths that do not exist: {gone}"


def test_no_module_of_deployer_is_over_600_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules()}
    too_long = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"split these modules (more than {MAX_LINES} lines): {too_long}"


def test_resources_come_from_the_checkout_when_running_from_source() -> None:
    from deployer.resources import profiles_dir, standin_dir, templates_dir

    assert profiles_dir() == ROOT / "profiles"
    assert templates_dir() == ROOT / "compose_templates"
    assert (standin_dir() / "Dockerfile").is_file()


def test_no_test_module_imports_from_a_conftest_file() -> None:
    """Plain helpers live in tests/helpers; conftest files only provide pytest fixtures."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "tests").rglob("*.py"))
        if re.search(r"^from tests(\.\w+)*\.conftest import", p.read_text(), re.M)
    ]
    assert not offenders, f"import from tests.helpers instead: {offenders}"


def test_test_modules_have_unique_names() -> None:
    """pytest imports test files by their base name (no __init__.py in the test folders): two
    files with one name stop the whole run at collection."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
        seen[path.name] = path
    assert clashes == []

"""The pinned vLLM version has one source, deployer/vllm_pin.py: the stand-in, its image tag,
the build script and the tests all take it from there (and write it nowhere else)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from deployer import vllm_pin
from deployer.standin import version

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "deployer" / "standin"


def test_standin_reports_the_pinned_version() -> None:
    assert version.VLLM_VERSION == vllm_pin.VLLM_VERSION
    assert version.pinned_version() == vllm_pin.VLLM_VERSION


def test_image_build_bakes_the_version_and_the_pin_is_the_fallback(tmp_path: Path) -> None:
    baked, pin = tmp_path / "vllm_version", tmp_path / "vllm_pin.py"
    pin.write_text('"""doc"""\nOTHER = "1.0"\nVLLM_VERSION = "9.8.7"\n')
    assert version.pinned_version(str(baked), str(pin)) == "9.8.7"
    baked.write_text("9.9.9\n")
    assert version.pinned_version(str(baked), str(pin)) == "9.9.9"
    with pytest.raises(RuntimeError, match="neither"):
        version.pinned_version(str(tmp_path / "no"), str(tmp_path / "none.py"))
    pin.write_text("VLLM_VERSION = make_version()\n")
    with pytest.raises(RuntimeError, match="no VLLM_VERSION"):
        version.pinned_version(str(tmp_path / "no"), str(pin))


def test_no_baked_version_file_in_the_checkout() -> None:
    # Only the image build writes it; one in the tree would shadow the pin.
    assert not Path(version.BAKED_VERSION_FILE).exists()


def test_build_script_tags_the_image_from_the_pin() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images.sh"), "--print-config"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    config = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert config["VLLM_VERSION"] == vllm_pin.VLLM_VERSION
    assert config["STANDIN_IMAGE"] == vllm_pin.STANDIN_IMAGE
    assert f"qwen-deploy/vllm-standin:{vllm_pin.VLLM_VERSION}" == vllm_pin.STANDIN_IMAGE


def _code_strings(path: Path) -> list[str]:
    """String constants of a Python file, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def _code_lines(path: Path) -> list[str]:
    """Lines of a shell script or Dockerfile that are not comments."""
    return [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]


def test_the_version_is_written_only_in_the_pin() -> None:
    pinned = vllm_pin.VLLM_VERSION
    python_files = [
        *sorted(STANDIN.glob("*.py")),
        ROOT / "tests" / "integration" / "conftest.py",
        ROOT / "tests" / "integration" / "test_standin.py",
        ROOT / "tests" / "integration" / "test_verify.py",
    ]
    offenders = [
        f"{path.relative_to(ROOT)}: {text!r}"
        for path in python_files
        for text in _code_strings(path)
        if pinned in text
    ]
    offenders += [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in (ROOT / "scripts" / "build-images.sh", STANDIN / "Dockerfile")
        for line in _code_lines(path)
        if pinned in line
    ]
    assert offenders == []

"""Every loader against mutated documents: the GPU inventory, a profile, a models file, .env and
plan.json, each through the command that reads it. Whatever the mutation (a wrong type, a
duplicate key, a huge or non-finite number, control characters, bytes that are not UTF-8, deep
nesting, an alias bomb, a cut-off file), the command either works or fails with one `error:`
line and the exit code of a concern: never exit 1, the "unexpected" (bug) class.

Seeded, so every run tries the same documents; a failure names the seed and the mutation."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from deployer.catalog import BUILTIN_CATALOG
from deployer.cli.main import cli
from deployer.errors import ExitCode
from tests.bad_input_cases import BILLION_LAUGHS
from tests.helpers.deployments import tri_tier_profile, write_inventory

PORTS = {"medium": 15202, "mini": 15201, "micro": 15200}
ROUNDS = 30  # per loader and seed: 300 documents in all

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 10**30, 1e308, -1e308, float("inf"), float("nan"), "",
    "x", "8.9.1", "-1.0", "true", "\x1b[31mred\n", "a" * 70000, [], {}, [[[[[]]]]], {"k": "v"},
    [0, 0], "None", "0x10", "١٢٣",
]  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _set(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy: Any = dict(node) if isinstance(node, dict) else list(node)
    copy[head] = _set(copy[head], rest, value)
    return copy


def _drop(node: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        copy: Any = dict(node) if isinstance(node, dict) else list(node)
        del copy[path[0]]
        return copy
    head = path[0]
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[head] = _drop(copy[head], path[1:])
    return copy


def _dump(data: Any, as_yaml: bool) -> str:
    if as_yaml:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return json.dumps(data, indent=1)


def mutate(rng: random.Random, data: Any, as_yaml: bool) -> tuple[str, bytes]:
    """One mutation of a document: (what was done, the file's bytes)."""
    paths = _paths(data)[1:]
    kind = rng.choice(
        ["value", "value", "value", "drop", "dup-line", "bytes", "control", "cut", "deep", "wrap"]
        + (["bomb", "alias"] if as_yaml else ["nan"])
    )
    if kind == "value" and paths:
        path, value = rng.choice(paths), rng.choice(ODD_VALUES)
        if not as_yaml and isinstance(value, float) and value != value:
            value = 0.5  # JSON has no NaN literal in this branch: "nan" adds it
        return f"{path} = {value!r:.40}", _dump(_set(data, path, value), as_yaml).encode()
    if kind == "drop" and paths:
        path = rng.choice(paths)
        return f"drop {path}", _dump(_drop(data, path), as_yaml).encode()
    text = _dump(data, as_yaml)
    lines = text.splitlines(keepends=True)
    at = rng.randrange(len(lines))
    if kind == "dup-line":
        return f"line {at} twice", "".join(lines[: at + 1] + lines[at:]).encode()
    if kind == "bytes":
        raw = bytearray(text.encode())
        raw.insert(rng.randrange(len(raw)), rng.choice([0xFF, 0xE9, 0x80, 0x00]))
        return "a byte that is not UTF-8", bytes(raw)
    if kind == "control":
        pos = rng.randrange(len(text))
        return "a control character", (
            text[:pos] + rng.choice("\x00\x07\x1b\x7f") + text[pos:]
        ).encode()
    if kind == "cut":
        return "cut off", text[: rng.randrange(len(text))].encode()
    if kind == "deep":
        depth = rng.choice([70, 400, 5000])
        nested = "[" * depth + "]" * depth
        return f"nested {depth} deep", (f"[{nested}]" if not as_yaml else f"x: {nested}\n").encode()
    if kind == "wrap":
        return "the document in a list", _dump([data], as_yaml).encode()
    if kind == "bomb":
        return "an alias bomb", BILLION_LAUGHS.encode()
    if kind == "alias":
        return "an anchor and a merge key", (
            "base: &b {port: 5001}\n" + text.replace("port:", "<<: *b\n    port:", 1)
        ).encode()
    # "nan": JSON's non-standard literals where a number was
    return "NaN and Infinity", text.replace("0", "NaN", 1).replace("1", "Infinity", 1).encode()


def _invoke(tmp: Path, *args: str) -> Any:
    env = {"NO_COLOR": "1", "DOCKER_HOST": f"unix://{tmp}/no-engine.sock", "HF_TOKEN": None}
    return CliRunner().invoke(cli, ["--home", str(tmp / "home"), *args], env=env)


def _assert_clean(result: Any, what: str) -> None:
    shown = f"{what}\nexit {result.exit_code}\n{result.output[-2000:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), shown
    assert result.exit_code != ExitCode.ERROR, shown
    assert "unexpected" not in result.stderr and "Traceback" not in result.output, shown
    if result.exit_code != 0:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), shown


Loader = Callable[[Path, bytes], list[Any]]


def _inventory(tmp: Path, data: bytes) -> list[Any]:
    path = tmp / "gpus.json"
    path.write_bytes(data)
    profile = tmp / "good.yaml"
    return [
        _invoke(tmp, "gpus", "--gpus-file", str(path)),
        _invoke(tmp, "plan", "-p", str(profile), "--gpus-file", str(path)),
    ]


def _profile(tmp: Path, data: bytes) -> list[Any]:
    path = tmp / "profile.yaml"
    path.write_bytes(data)
    return [_invoke(tmp, "plan", "-p", str(path), "--gpus-file", str(tmp / "good.json"))]


def _models(tmp: Path, data: bytes) -> list[Any]:
    path = tmp / "models.yaml"
    path.write_bytes(data)
    return [_invoke(tmp, "models", "--models-file", str(path))]


def _state_file(name: str) -> Loader:
    def load(tmp: Path, data: bytes) -> list[Any]:
        (tmp / "home" / "qwen3" / name).write_bytes(data)
        return [_invoke(tmp, "endpoints"), _invoke(tmp, "status"), _invoke(tmp, "restart")]

    return load


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """A good profile, inventory and rendered deployment, to mutate one file at a time."""
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(tri_tier_profile(PORTS)))
    write_inventory(tmp_path / "good.json", 0)
    result = _invoke(
        tmp_path, "render", "-p", str(tmp_path / "good.yaml"), "--gpus-file",
        str(tmp_path / "good.json"), "--engine", "stand-in",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return tmp_path


def _documents(tmp: Path) -> dict[str, tuple[Any, bool, Loader]]:
    home = tmp / "home" / "qwen3"
    env_lines = (home / ".env").read_text().splitlines()
    return {
        "inventory": (json.loads((tmp / "good.json").read_text()), False, _inventory),
        "profile": (yaml.safe_load((tmp / "good.yaml").read_text()), True, _profile),
        "models": (yaml.safe_load(BUILTIN_CATALOG.read_text()), True, _models),
        "plan.json": (
            json.loads((home / "plan.json").read_text()),
            False,
            _state_file("plan.json"),
        ),
        ".env": ({"lines": env_lines}, False, _state_file(".env")),
    }


@pytest.mark.parametrize("loader", ["inventory", "profile", "models", "plan.json", ".env"])
@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_documents_get_a_clean_error_or_work(
    rendered: Path, loader: str, seed: int
) -> None:
    original, as_yaml, load = _documents(rendered)[loader]
    home = rendered / "home" / "qwen3"
    saved = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
    rng = random.Random(f"{loader}-{seed}")
    for round_ in range(ROUNDS):
        if loader == ".env":
            what, data = _mutate_env(rng, original["lines"])
        else:
            what, data = mutate(rng, original, as_yaml)
        for result in load(rendered, data):
            _assert_clean(result, f"{loader} seed {seed} round {round_}: {what}")
        for name, content in saved.items():  # the next round starts from the good files
            (home / name).write_bytes(content)


def _mutate_env(rng: random.Random, lines: list[str]) -> tuple[str, bytes]:
    kind = rng.choice(["dup", "junk", "bytes", "long", "empty-key", "control", "drop", "project"])
    lines = list(lines)
    at = rng.randrange(1, len(lines))
    if kind == "dup":
        lines.insert(at, lines[at])
    elif kind == "junk":
        lines.insert(at, rng.choice(["not an assignment", "=value", "1X=2", "A B=c"]))
    elif kind == "long":
        lines[at] = lines[at] + "x" * rng.choice([300, 100000])
    elif kind == "empty-key":
        lines[at] = lines[at].split("=")[0] + "="
    elif kind == "control":
        lines[at] = lines[at] + rng.choice(["\x00", "\x1b[2J", "\r", "\x7f"])
    elif kind == "drop":
        del lines[at]
    elif kind == "project":
        lines.append("COMPOSE_PROJECT_NAME=" + rng.choice(["", "other", "../x", "a" * 500]))
    data = ("\n".join(lines) + "\n").encode()
    if kind == "bytes":
        data = data.replace(b"=", b"=\xff", 1)
    return kind, data

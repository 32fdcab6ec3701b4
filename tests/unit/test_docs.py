"""Every command has help with an example and appears in the README (sqlite-utils' test_docs)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deployer.cli.main import cli, load_all_commands

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{path} ")
    return found


COMMANDS = _commands(load_all_commands())


def test_the_documented_commands_exist() -> None:
    names = {path for path, _ in COMMANDS}
    assert {"gpus", "plan", "up", "status", "logs", "verify", "down", "render"} <= names


@pytest.mark.parametrize("path, command", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_has_help_with_an_example(path: str, command: click.Command) -> None:
    result = CliRunner().invoke(cli, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert command.help and command.help.strip(), path
    assert "Example: qwen-deploy" in result.output, f"`{path} --help` shows no example"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS])
def test_command_appears_in_the_readme(path: str) -> None:
    top = path.split()[0]
    assert f"qwen-deploy {path}" in README or f"qwen-deploy {top}" in README, path


def test_readme_starts_with_the_two_setup_commands() -> None:
    head = README[:1200]
    assert "make demo" in head and "make test" in head

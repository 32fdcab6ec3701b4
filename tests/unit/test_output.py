"""What every command's output shares: the --json envelope and the one terminal/colour rule."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from deployer.cli.common import JSON_SCHEMA_VERSION, is_terminal, json_document, use_color

DEPLOYER = Path(__file__).resolve().parents[2] / "deployer"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_envelope_keeps_its_kind_and_version_beside_the_payloads() -> None:
    document = json_document("plan", {"schema_version": 7, "kind": "x", "services": []})
    assert document["kind"] == "plan"
    assert document["schema_version"] == JSON_SCHEMA_VERSION
    assert document["payload_schema_version"] == 7 and document["payload_kind"] == "x"
    assert document["services"] == []
    assert list(document)[:2] == ["kind", "schema_version"]


def test_a_payload_without_its_own_version_is_left_as_it_is() -> None:
    assert json_document("models", {"models": [1]}) == {
        "kind": "models",
        "schema_version": JSON_SCHEMA_VERSION,
        "models": [1],
    }


@pytest.mark.parametrize(
    "tty, no_color, expected",
    [(True, None, True), (True, "1", False), (True, "", True), (False, None, False)],
)
def test_colour_only_on_a_terminal_without_no_color(
    monkeypatch: pytest.MonkeyPatch, tty: bool, no_color: str | None, expected: bool
) -> None:
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    stream = Tty() if tty else io.StringIO()
    assert is_terminal(stream) is tty
    assert use_color(stream) is expected


def test_only_cli_common_asks_whether_output_is_a_terminal() -> None:
    """One place decides (the stand-in, an independent stdlib server, is not the CLI)."""
    offenders = []
    for path in sorted(DEPLOYER.rglob("*.py")):
        if "standin" in path.parts or path == DEPLOYER / "cli" / "common.py":
            continue
        text = path.read_text()
        if re.search(r"\.isatty\(|[\"']NO_COLOR[\"']", text):
            offenders.append(str(path.relative_to(DEPLOYER)))
    assert not offenders, f"use deployer.cli.common.is_terminal/use_color in {offenders}"

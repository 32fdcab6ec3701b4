"""The one strict loader for what users hand over: YAML without duplicate keys, alias bombs or
unbounded nesting; JSON without NaN or huge integers; bounded UTF-8 files."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from deployer.errors import InventoryError, ProfileError
from deployer.safeload import MAX_DOCUMENT_BYTES, load_json, load_yaml, read_text
from tests.bad_input_cases import BILLION_LAUGHS


def _error(text: str) -> str:
    with pytest.raises(ProfileError) as caught:
        load_yaml(text, "p.yaml", ProfileError)
    return str(caught.value)


def test_duplicate_keys_are_refused_in_block_and_flow_style() -> None:
    assert "duplicate key 'a' (first on line 1)" in _error("a: 1\nb: 2\na: 3\n")
    assert "duplicate key 'port'" in _error("s: {port: 1, port: 2}\n")
    assert "duplicate key 'x'" in _error("- {x: 1}\n- y: 1\n  x: 2\n  x: 3\n")


def test_merge_keys_may_be_overridden() -> None:
    data = load_yaml("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n", "p", ProfileError)
    assert data["c"] == {"x": 3, "y": 2}


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    started = time.monotonic()
    assert "expands to more than 100,000 values" in _error(BILLION_LAUGHS)
    assert time.monotonic() - started < 2
    assert "refers to the node that contains it" in _error("a: &a [1, *a]\n")
    # a few hundred aliases of a small anchor are fine
    assert (
        len(
            load_yaml("a: &a [1, 2]\nb: [" + ", ".join(["*a"] * 300) + "]\n", "p", ProfileError)[
                "b"
            ]
        )
        == 300
    )


def test_deep_nesting_is_refused_at_any_depth() -> None:
    for depth in (65, 400, 20000):
        assert "nested more than 64 levels deep" in _error("[" * depth + "]" * depth)
    assert load_yaml("[" * 60 + "]" * 60, "p", ProfileError) is not None


def test_files_are_bounded_and_utf8(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")  # a BOM is dropped
    assert read_text(path, "profile", ProfileError) == "a: 1\n"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(ProfileError, match=r"not UTF-8 text \(byte 0xe9 on line 2\)"):
        read_text(path, "profile", ProfileError)
    path.write_bytes(b"#" * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(ProfileError, match="larger than 4 MiB"):
        read_text(path, "profile", ProfileError)
    with pytest.raises(ProfileError, match=r"cannot read profile .*: Is a directory"):
        read_text(tmp_path, "profile", ProfileError)


def test_json_refuses_nan_huge_integers_and_depth() -> None:
    for text, problem in (
        ('{"a": NaN}', "NaN is not a number JSON allows"),
        ('{"a": -Infinity}', "-Infinity is not a number JSON allows"),
        ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),
        ("[" * 100 + "]" * 100, "nested more than 64 levels deep"),
        ("[" * 100000 + "]" * 100000, "not valid JSON (nested too deeply)"),
        ('{"a": 1', "not valid JSON (line 1"),
    ):
        with pytest.raises(InventoryError, match=re.escape(problem)):
            load_json(text, "g.json", InventoryError)
    assert load_json('{"a": [1.5, 1e308]}', "g.json", InventoryError) == {"a": [1.5, 1e308]}

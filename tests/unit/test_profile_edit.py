"""profile_edit: one service's keys change, comments and layout stay, a .bak is kept, and a
profile that would not load is never written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployer.errors import ProfileError
from deployer.profile_edit import edit_text, write_service_settings
from deployer.profiles import load_profile_file

PROFILE = """\
# tri-tier, hand-tuned
name: tri-tier
defaults:
  bind: 127.0.0.1
services:
  mini:
    model: Qwen/Qwen3-8B-AWQ   # the 8B tier
    gpus: [2]
    port: 5001
    context: 32768  # long documents

  micro:
    model: Qwen/Qwen3-1.7B-FP8
    gpus: [2]
    port: 5000
"""


def test_keys_are_replaced_in_place_and_added_after_the_last_one(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE)
    backup = write_service_settings(
        path, "mini", {"context": 32256, "max_num_seqs": 8, "gpu_memory_utilization": 0.55}
    )
    text = path.read_text()
    assert "    context: 32256  # long documents\n" in text
    assert "    port: 5001\n    context: 32256  # long documents\n    max_num_seqs: 8\n" in text
    assert "    gpu_memory_utilization: 0.55\n\n  micro:" in text
    assert text.startswith("# tri-tier, hand-tuned\n") and "# the 8B tier" in text
    assert backup == tmp_path / "p.yaml.bak" and backup.read_text() == PROFILE
    profile = load_profile_file(path)
    assert profile.service("mini").max_num_seqs == 8
    assert profile.service("micro").max_num_seqs is None


def test_an_inline_service_is_rewritten_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("services:\n  mini: {model: Qwen/Qwen3-8B-AWQ, port: 5001}\n")
    assert edit_text(path.read_text(), "mini", {"max_num_seqs": 4}) is None
    write_service_settings(path, "mini", {"max_num_seqs": 4})
    assert yaml.safe_load(path.read_text())["services"]["mini"] == {
        "model": "Qwen/Qwen3-8B-AWQ",
        "port": 5001,
        "max_num_seqs": 4,
    }


def test_a_missing_service_or_a_bad_value_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE)
    with pytest.raises(
        ProfileError, match=r"no service 'medium' to write to \(services: mini, micro\)"
    ):
        write_service_settings(path, "medium", {"max_num_seqs": 8})
    with pytest.raises(ProfileError, match="max_num_seqs"):
        write_service_settings(path, "mini", {"max_num_seqs": 0})
    assert path.read_text() == PROFILE and not (tmp_path / "p.yaml.bak").exists()

"""The parsed copy of the shipped YAML (deployer/data/shipped_yaml.json): up to date, read only for
a file's exact text, and giving the very profiles and catalog that the strict loader gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deployer import shipped_yaml
from deployer.catalog import BUILTIN_CATALOG, Catalog, load_catalog, parse_catalog
from deployer.errors import ProfileError
from deployer.profiles import load_profile, load_profile_file, parse_profile, profile_paths
from deployer.resources import profiles_dir
from deployer.safeload import load_yaml, read_text
from tests.helpers import ROOT


def strictly(path: Path) -> object:
    """The document as the strict YAML loader reads it (what the cache stands for)."""
    return load_yaml(read_text(path, "test file", ProfileError), str(path), ProfileError)


def test_the_stored_parse_is_what_the_shipped_files_give_now() -> None:
    stored = shipped_yaml.CACHE_FILE.read_text(encoding="utf-8")
    regenerate = f"regenerate it: {shipped_yaml.REGENERATE}"
    assert stored == shipped_yaml.render(), regenerate
    names = [entry["source"] for entry in json.loads(stored)["files"]]
    assert names[0] == "models.yaml" and "profiles/tri-tier.yaml" in names
    assert len(names) == 1 + len(profile_paths(profiles_dir())) >= 6, regenerate


def test_every_shipped_profile_from_the_cache_equals_the_strict_loaders() -> None:
    paths = profile_paths(profiles_dir())
    assert "tri-tier" in paths
    for name, path in paths.items():
        text = read_text(path, "profile", ProfileError)
        assert shipped_yaml.shipped_document(text) == strictly(path), name
        from_cache = load_profile(name)
        assert from_cache == parse_profile(strictly(path), str(path), default_name=name), name
        assert from_cache == load_profile_file(path) and from_cache.services, name


def test_the_catalog_from_the_cache_equals_the_strict_loaders() -> None:
    text = read_text(BUILTIN_CATALOG, "models file", ProfileError)
    assert shipped_yaml.shipped_document(text) == strictly(BUILTIN_CATALOG)
    strict = Catalog(parse_catalog(strictly(BUILTIN_CATALOG), str(BUILTIN_CATALOG)))
    assert load_catalog() == strict and "Qwen/Qwen3-8B-AWQ" in strict.checkpoints


def test_an_edited_copy_of_a_shipped_profile_goes_through_the_strict_loader(
    tmp_path: Path,
) -> None:
    shipped = (profiles_dir() / "tri-tier.yaml").read_text(encoding="utf-8")
    commented = tmp_path / "tri-tier.yaml"
    commented.write_text(shipped + "# one more line\n", encoding="utf-8")
    assert shipped_yaml.shipped_document(commented.read_text(encoding="utf-8")) is None
    assert load_profile_file(commented).services == load_profile("tri-tier").services
    # The strict loader's own checks apply: a repeated key, a value the profile checks refuse.
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text(shipped.replace("name: tri-tier\n", "name: tri-tier\nname: again\n"))
    with pytest.raises(ProfileError, match="duplicate key 'name'"):
        load_profile_file(repeated)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(shipped.replace("port: 5002", "port: 99999"), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"services\.medium\.port: expected an integer"):
        load_profile_file(wrong)


def test_reading_a_shipped_profile_imports_no_yaml_and_an_edited_one_does(tmp_path: Path) -> None:
    edited = tmp_path / "edited.yaml"
    edited.write_text((profiles_dir() / "tri-tier.yaml").read_text() + "\n", encoding="utf-8")
    script = (
        "import sys\nfrom deployer.profiles import load_profile\nfrom deployer.catalog import "
        "load_catalog\nload_catalog()\nload_profile('tri-tier')\nprint('yaml' in sys.modules)\n"
        f"load_profile({str(edited)!r})\nprint('yaml' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "True"]


def test_without_its_cache_a_shipped_profile_is_parsed_from_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shipped_yaml, "CACHE_FILE", tmp_path / "missing.json")
    text = read_text(profiles_dir() / "tri-tier.yaml", "profile", ProfileError)
    assert shipped_yaml.shipped_document(text) is None
    (tmp_path / "other.json").write_text('{"format": 0, "files": []}')
    monkeypatch.setattr(shipped_yaml, "CACHE_FILE", tmp_path / "other.json")
    assert shipped_yaml.shipped_document(text) is None
    assert load_profile("tri-tier").name == "tri-tier"


@pytest.mark.parametrize(
    "body",
    ["when: 2024-05-01\n", "1: one\n", "ratio: .nan\n", "- a list\n", "tags: !!set {a, b}\n"],
)
def test_the_generator_refuses_a_document_json_would_change(tmp_path: Path, body: str) -> None:
    source = tmp_path / "odd.yaml"
    source.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match="JSON cannot hold its document unchanged"):
        shipped_yaml.render({"odd.yaml": source})

"""The shipped YAML files (the model catalog and the profiles) as the documents the strict loader
reads from them, kept as JSON in data/shipped_yaml.json: reading them (`plan -p tri-tier`,
`profiles`, `models`) then imports no YAML parser, which was a sixth of `plan`'s start-up. An
entry keeps the text it was parsed from and serves that exact text only: an edited file, or any
other, goes through the strict loader and its checks. The profile and catalog checks run on the
document either way.

The file is generated; a unit test fails when it is out of date. Regenerate it:
    python -m deployer.shipped_yaml
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.resources import PACKAGE

CACHE_FILE = PACKAGE / "data" / "shipped_yaml.json"
REGENERATE = "python -m deployer.shipped_yaml"
FORMAT = 1  # a cache of another format is ignored (the files are parsed instead)


def shipped_sources() -> dict[str, Path]:
    """Every shipped YAML file, by its name in the cache: the catalog, then the profiles."""
    from deployer.catalog import BUILTIN_CATALOG
    from deployer.profiles import profile_paths
    from deployer.resources import profiles_dir

    profiles = profile_paths(profiles_dir())
    return {"models.yaml": BUILTIN_CATALOG, **{f"profiles/{p.name}": p for p in profiles.values()}}


def build(sources: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """The cache: each file's text and the document the strict loader reads from it. Refuses a
    document that JSON would not give back as it is (dates, non-string keys, NaN)."""
    from deployer.errors import ProfileError
    from deployer.safeload import load_yaml, read_text

    files = []
    for name, path in (shipped_sources() if sources is None else sources).items():
        text = read_text(path, "shipped file", ProfileError)
        document = load_yaml(text, str(path), ProfileError)
        try:
            same = json.loads(json.dumps(document, allow_nan=False)) == document
        except (TypeError, ValueError):
            same = False
        if not isinstance(document, dict) or not same:
            raise ValueError(
                f"{path}: JSON cannot hold its document unchanged: keep to mappings with string "
                "keys, lists, strings, finite numbers, booleans and null"
            )
        files.append({"source": name, "text": text, "document": document})
    return {"format": FORMAT, "regenerate": REGENERATE, "files": files}


def render(sources: Mapping[str, Path] | None = None) -> str:
    """The cache file's text (the documents keep their key order: services start in it)."""
    return json.dumps(build(sources), indent=1, ensure_ascii=False) + "\n"


def shipped_document(text: str) -> Any | None:
    """The document of the shipped file whose text this is exactly; None for any other text, or
    when the cache is missing or unreadable (the caller parses the text itself then). Read
    afresh each time: a caller may change what it gets."""
    try:
        with open(CACHE_FILE, encoding="utf-8") as handle:
            cache = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(cache, dict) or cache.get("format") != FORMAT:
        return None
    for entry in cache.get("files", ()):
        if isinstance(entry, dict) and entry.get("text") == text:
            return entry.get("document")
    return None


def main() -> None:
    CACHE_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {CACHE_FILE.name} ({len(shipped_sources())} files)")


if __name__ == "__main__":
    main()

"""Write settings back into one service of a profile YAML: only that service's keys change, the
original is kept as FILE.bak, the new file is written atomically and must still be a valid
profile. Comments and layout survive when the service is an ordinary block mapping (the edit is
made on the text and checked against a YAML round trip); otherwise the file is re-dumped."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from deployer.deployment import write_atomic
from deployer.errors import ProfileError
from deployer.profiles import parse_profile

Value = int | float | str


def _scalar(value: Value) -> str:
    return str(value) if isinstance(value, (int, float)) else yaml.safe_dump(value).strip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def edit_text(text: str, service: str, settings: Mapping[str, Value]) -> str | None:
    """The text with the service's keys set in place, or None when the layout is not a plain
    block mapping under a top-level `services:`."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    top = next(
        (i for i, line in enumerate(lines) if re.match(r"^services\s*:\s*(#.*)?$", line)), None
    )
    if top is None:
        return None
    head = None
    for i in range(top + 1, len(lines)):
        line = lines[i]
        if not _content(line):
            continue
        if _indent(line) == 0:
            break
        if re.match(rf"^\s+{re.escape(service)}\s*:\s*(#.*)?$", line):
            head = i
            break
    if head is None:
        return None
    own = _indent(lines[head])
    body_end = head + 1
    key_indent: int | None = None
    last_content = head
    while body_end < len(lines):
        line = lines[body_end]
        if _content(line):
            if _indent(line) <= own:
                break
            if key_indent is None:
                key_indent = _indent(line)
            last_content = body_end
        body_end += 1
    if key_indent is None:
        return None
    insert_at = last_content + 1
    for key, value in settings.items():
        pattern = re.compile(rf"^( {{{key_indent}}}{re.escape(key)}\s*:\s*)([^#\n]*?)(\s*#.*)?\n$")
        for i in range(head + 1, insert_at):
            found = pattern.match(lines[i])
            if found:
                lines[i] = f"{found.group(1)}{_scalar(value)}{found.group(3) or ''}\n"
                break
        else:
            lines.insert(insert_at, f"{' ' * key_indent}{key}: {_scalar(value)}\n")
            insert_at += 1
    return "".join(lines)


def write_service_settings(path: Path, service: str, settings: Mapping[str, Value]) -> Path:
    """Set the service's keys in the profile at path; the backup's path."""
    from deployer.safeload import load_yaml, read_text  # the profile loader's own rules

    original = read_text(path, "profile", ProfileError)
    data = load_yaml(original, str(path), ProfileError)
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict) or not isinstance(services.get(service), dict):
        names = ", ".join(map(str, services)) if isinstance(services, dict) else "none"
        raise ProfileError(
            f"{path}: no service {service!r} to write to (services: {names})",
            hint="pass the profile this deployment was rendered from",
        )
    expected: dict[str, Any] = {**data, "services": {**services}}
    expected["services"][service] = {**services[service], **settings}
    parse_profile(expected, str(path))  # refuse to write a profile that would not load
    text = edit_text(original, service, settings)
    if text is None or yaml.safe_load(text) != expected:
        text = yaml.safe_dump(expected, sort_keys=False, allow_unicode=True)
    mode = path.stat().st_mode & 0o777
    backup = path.with_name(path.name + ".bak")
    write_atomic(backup, original, mode)
    write_atomic(path, text, mode)
    return backup

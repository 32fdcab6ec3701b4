"""The field checks of a profile: each takes a YAML value and the place it came from, and
returns the typed value or raises a ProfileError that names the file, the key and what was
expected. Booleans are only YAML's own true/false, numbers are finite and bounded, strings are
strings (never str() of whatever YAML produced), and sizes are bounded."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from deployer.errors import ProfileError

SERVICE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
# Aliases are typed after commands (`logs MEDIUM`): no spaces, and never read as an option.
ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Names a client sends as `model` and the guide prints: printable, one line, bounded.
SERVED_NAME_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
# Environment variables that carry secrets: they would land in compose.yaml and plan.json.
SECRET_ENV = frozenset({"VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_TOKEN"})
# One value must stay well under Linux's 128 KiB per argument or variable (MAX_ARG_STRLEN),
# and all of them under the 2 MiB the kernel takes for a whole command line and environment.
MAX_ENV_VALUE = 16384
MAX_ENV_VARS = 128
MAX_TEXT = 4096  # name, description


def integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProfileError(f"{where}: expected an integer from {low} to {high}, got {value!r}")
    return value


def number_above(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ProfileError(
            f"{where}: expected a number above {low} and at most {high}, got {value!r:.40}"
        )
    return float(value)


def number(value: Any, where: str, low: float, high: float) -> float:
    """A number from low to high, both included."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ProfileError(
            f"{where}: expected a number from {low:g} to {high:g}, got {value!r:.40}"
        )
    return float(value)


def boolean(value: Any, where: str) -> bool:
    """Only YAML's own true/false: a quoted "false" is a string, and strings are truthy."""
    if not isinstance(value, bool):
        raise ProfileError(f"{where}: expected true or false, got {value!r:.40}")
    return value


def text(value: Any, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ProfileError(f"{where}: expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ProfileError(f"{where}: {len(value)} characters, at most {limit}")
    return value


def reasoning_parser(value: Any, where: str) -> str | None:
    if value is None or value == "none":
        return None
    # vLLM's list, as the stand-in keeps it (a module of constants only)
    from deployer.standin.parsers import REASONING_PARSERS

    if not isinstance(value, str) or value not in REASONING_PARSERS:
        raise ProfileError(
            f"{where}: {value!r:.60} is not a reasoning parser of vLLM 0.33",
            hint="Qwen3 uses qwen3; `none` (or null) turns the parser off",
        )
    return value


def bind_address(value: Any, where: str) -> str:
    """An IPv4 address a host can listen on (this host's own check comes with render/up)."""
    problem = f"{where}: expected an IPv4 address such as 127.0.0.1 or 0.0.0.0, got {value!r:.40}"
    if not isinstance(value, str):
        raise ProfileError(problem)
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise ProfileError(problem) from None
    if address.is_multicast or address.is_reserved or str(address) != value:
        raise ProfileError(problem)
    return value


def environment(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping of variable names to values")
    if len(raw) > MAX_ENV_VARS:
        raise ProfileError(f"{where}: {len(raw)} variables, at most {MAX_ENV_VARS}")
    pairs = []
    for name, value in raw.items():
        if not isinstance(name, str) or not ENV_NAME_PATTERN.match(name):
            raise ProfileError(f"{where}: {name!r:.40} is not a variable name")
        if name in SECRET_ENV:
            raise ProfileError(
                f"{where}.{name}: keys and tokens do not belong in a profile",
                hint="use api_key_env, and HF_TOKEN from your environment or --hf-token-file",
            )
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ProfileError(
                f"{where}.{name}: expected a string, got {value!r:.40}",
                hint='quote it ("true", "0.10") so that the container gets exactly that text',
            )
        text = str(value)
        if len(text) > MAX_ENV_VALUE:
            raise ProfileError(
                f"{where}.{name}: {len(text)} characters, at most {MAX_ENV_VALUE}",
                hint="pass large settings in a file in the model cache, not the environment",
            )
        pairs.append((name, text))
    return tuple(sorted(pairs))


def aliases(raw: Any, name: str, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise ProfileError(f"{where}: expected a list of names")
    for alias in raw:
        if not ALIAS_PATTERN.match(alias):
            raise ProfileError(
                f"{where}: {alias!r:.40} is not a usable name: letters, digits and ._- , "
                "starting with a letter or digit (names are typed after commands like `logs`)"
            )
        if alias == name or raw.count(alias) > 1:
            raise ProfileError(f"{where}: {alias!r} is listed twice (or is the service's name)")
    return tuple(raw)

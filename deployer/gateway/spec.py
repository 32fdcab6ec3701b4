"""A profile's `gateway:` section: port, bind, keys (per-key tiers, requests/minute,
concurrency, admin), limits and fallback. Strict, like the rest of the profile: a typo'd key is
an error naming the file and the key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from deployer.errors import ProfileError

DEFAULT_PORT = 19100  # seed 004's port
GATEWAY_KEY_VAR_PREFIX = "QWEN_DEPLOY_GATEWAY_KEY_"
GATEWAY_SERVICE = "gateway"
GATEWAY_MODEL = "qwen-deploy gateway"  # what `status` shows in its MODEL column
CONFIG_ENV = "QWEN_DEPLOY_GATEWAY"  # the public config as JSON, in the gateway's container
KEY_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


class Fallback(str, Enum):
    """Which other tier may serve a request its tier cannot (always announced in a header)."""

    OFF = "off"
    LARGER = "larger"  # only a tier with a bigger model
    ANY = "any"


@dataclass(frozen=True)
class Limits:
    """The gateway's limits on bodies, waits and queues (the profile's gateway.limits)."""

    max_body_bytes: int = 8 * 1024 * 1024
    connect_timeout_s: float = 5.0
    # Time to the first body byte of a tier's answer: prefill of a long prompt, not generation.
    first_byte_timeout_s: float = 300.0
    idle_timeout_s: float = 120.0  # longest gap between two chunks of a stream
    keepalive_s: float = 10.0  # an SSE comment after this much silence keeps proxies open
    queue_timeout_s: float = 15.0  # longest wait for a slot on a GPU before 429
    max_queue: int = 512  # requests waiting per GPU group beyond which 429 comes at once
    gpu_inflight: int | None = None  # cap per GPU group; None: from the plan (max_num_seqs)
    kv_saturation: float = 0.95  # a tier above this KV-cache use admits no new request
    retries: int = 2  # before the first byte only
    health_interval_s: float = 2.0


@dataclass(frozen=True)
class KeySpec:
    """One gateway key as the profile describes it (the secret itself lives in .env)."""

    name: str
    tiers: tuple[str, ...] | None = None  # None: every tier
    rpm: int | None = None
    concurrent: int | None = None
    admin: bool = False
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None

    @property
    def env_var(self) -> str:
        return GATEWAY_KEY_VAR_PREFIX + self.name.upper().replace("-", "_")


DEFAULT_KEYS = (KeySpec("default"), KeySpec("admin", admin=True))


@dataclass(frozen=True)
class GatewaySpec:
    """A profile's `gateway:` section."""

    port: int = DEFAULT_PORT
    bind: str = "127.0.0.1"
    fallback: Fallback = Fallback.OFF
    keys: tuple[KeySpec, ...] = DEFAULT_KEYS
    limits: Limits = Limits()

    def to_dict(self) -> dict[str, Any]:
        """For plan.json: everything but literal secrets."""
        return {
            "port": self.port,
            "bind": self.bind,
            "fallback": self.fallback.value,
            "keys": [
                {
                    "name": k.name,
                    "tiers": list(k.tiers) if k.tiers is not None else None,
                    "rpm": k.rpm,
                    "concurrent": k.concurrent,
                    "admin": k.admin,
                    "api_key_env": k.api_key_env,
                }
                for k in self.keys
            ],
            "limits": dict(vars(self.limits)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GatewaySpec:
        keys = tuple(
            KeySpec(
                name=str(k["name"]),
                tiers=tuple(k["tiers"]) if k.get("tiers") is not None else None,
                rpm=k.get("rpm"),
                concurrent=k.get("concurrent"),
                admin=bool(k.get("admin", False)),
                api_key_env=k.get("api_key_env"),
            )
            for k in data.get("keys", [])
        )
        known = set(vars(Limits()))
        limits = Limits(**{k: v for k, v in dict(data.get("limits") or {}).items() if k in known})
        return cls(
            port=int(data.get("port", DEFAULT_PORT)),
            bind=str(data.get("bind", "127.0.0.1")),
            fallback=Fallback(data.get("fallback", "off")),
            keys=keys or DEFAULT_KEYS,
            limits=limits,
        )


# --- the profile section ----------------------------------------------------------------------

_SECTION_KEYS = {"port", "bind", "fallback", "keys", "limits"}
_KEY_KEYS = {"tiers", "rpm", "concurrent", "admin", "api_key", "api_key_env"}
_LIMIT_KEYS = {
    "max_body_mib",
    "connect_timeout_s",
    "first_byte_timeout_s",
    "idle_timeout_s",
    "keepalive_s",
    "queue_timeout_s",
    "max_queue",
    "gpu_inflight",
    "kv_saturation",
    "retries",
    "health_interval_s",
}


def _closest(word: str, options: Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(options), n=1)
    return found[0] if found else None


def _check(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            close = _closest(str(key), allowed)
            hint = f"did you mean {close!r}?" if close else f"expected one of {sorted(allowed)}"
            raise ProfileError(f"{where}: unknown key {key!r}", hint=hint)


def _number(raw: Any, where: str, low: float, high: float, integer: bool = False) -> float:
    ok = isinstance(raw, int) if integer else isinstance(raw, (int, float))
    if isinstance(raw, bool) or not ok or not low <= raw <= high:
        kind = "an integer" if integer else "a number"
        raise ProfileError(f"{where}: expected {kind} from {low:g} to {high:g}, got {raw!r}")
    return float(raw)


def _parse_limits(raw: Any, where: str) -> Limits:
    if raw is None:
        return Limits()
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping")
    _check(raw, _LIMIT_KEYS, where)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key == "max_body_mib":
            values["max_body_bytes"] = int(_number(value, at, 0.001, 1024) * 1024 * 1024)
        elif key in ("max_queue", "retries"):
            values[key] = int(_number(value, at, 0, 100000, integer=True))
        elif key == "gpu_inflight":
            if value != "auto":
                values[key] = int(_number(value, at, 1, 100000, integer=True))
        elif key == "kv_saturation":
            values[key] = _number(value, at, 0.01, 1.0)
        else:
            values[key] = _number(value, at, 0.01, 86400)
    return Limits(**values)


def _key_pattern() -> Any:
    # Imported late: the plan module imports this one, and profiles should not load with it.
    from deployer.profiles import API_KEY_PATTERN

    return API_KEY_PATTERN


def _parse_key(name: Any, raw: Any, where: str) -> KeySpec:
    name = str(name)
    if not name or not set(name) <= KEY_NAME_CHARS or len(name) > 32:
        raise ProfileError(
            f"{where}: key name {name!r}: use 1-32 lower-case letters, digits, - or _"
        )
    at = f"{where}.{name}"
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ProfileError(f"{at}: expected a mapping (tiers, rpm, concurrent, admin, api_key)")
    _check(raw, _KEY_KEYS, at)
    tiers = raw.get("tiers", "all")
    if tiers == "all":
        tier_tuple = None
    elif isinstance(tiers, list) and tiers and all(isinstance(t, str) for t in tiers):
        tier_tuple = tuple(tiers)
    else:
        raise ProfileError(f"{at}.tiers: expected `all` or a list of tier names, got {tiers!r}")
    api_key = raw.get("api_key")
    if api_key is not None and (not isinstance(api_key, str) or not _key_pattern().match(api_key)):
        raise ProfileError(
            f"{at}.api_key: keys are 8-256 characters of letters, digits and ._~+/=-"
        )
    env = raw.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not env.isidentifier()):
        raise ProfileError(f"{at}.api_key_env: expected an environment variable name")
    admin = raw.get("admin", False)
    if not isinstance(admin, bool):
        raise ProfileError(f"{at}.admin: expected true or false")
    rpm = raw.get("rpm")
    concurrent = raw.get("concurrent")
    return KeySpec(
        name=name,
        tiers=tier_tuple,
        rpm=None if rpm is None else int(_number(rpm, f"{at}.rpm", 1, 10**7, integer=True)),
        concurrent=(
            None
            if concurrent is None
            else int(_number(concurrent, f"{at}.concurrent", 1, 10**6, integer=True))
        ),
        admin=admin,
        api_key=api_key,
        api_key_env=env,
    )


def parse_gateway_section(raw: Any, source: str) -> GatewaySpec | None:
    """Validate a profile's `gateway:` section strictly; `false`/absent means no gateway."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return GatewaySpec()
    where = f"{source}: gateway"
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping (port, bind, keys, limits, fallback)")
    _check(raw, _SECTION_KEYS, where)
    port = int(_number(raw.get("port", DEFAULT_PORT), f"{where}.port", 1, 65535, integer=True))
    bind = raw.get("bind", "127.0.0.1")
    if not isinstance(bind, str) or not bind:
        raise ProfileError(f"{where}.bind: expected an address such as 127.0.0.1 or 0.0.0.0")
    fallback = raw.get("fallback", "off")
    if fallback is False:
        fallback = "off"
    try:
        fallback_mode = Fallback(fallback)
    except ValueError:
        raise ProfileError(
            f"{where}.fallback: expected one of off, larger, any, got {fallback!r}"
        ) from None
    keys_raw = raw.get("keys")
    keys: tuple[KeySpec, ...]
    if keys_raw is None:
        keys = DEFAULT_KEYS
    elif isinstance(keys_raw, dict) and keys_raw:
        keys = tuple(_parse_key(n, v, f"{where}.keys") for n, v in keys_raw.items())
    else:
        raise ProfileError(f"{where}.keys: expected a mapping of key names to their settings")
    return GatewaySpec(
        port=port,
        bind=bind,
        fallback=fallback_mode,
        keys=keys,
        limits=_parse_limits(raw.get("limits"), f"{where}.limits"),
    )


def resolve_gateway_keys(
    spec: GatewaySpec, existing: Mapping[str, str], environ: Mapping[str, str]
) -> dict[str, str]:
    """One secret per gateway key, for the deployment's .env: from the profile, the named
    environment variable, the .env already there, or a new random one."""
    import secrets as _secrets  # here: `plan` imports this module and never needs it

    out: dict[str, str] = {}
    for key in spec.keys:
        if key.api_key:
            value = key.api_key
        elif key.api_key_env:
            value = environ.get(key.api_key_env, "") or existing.get(key.env_var, "")
            if not value:
                raise ProfileError(
                    f"gateway.keys.{key.name}.api_key_env: ${key.api_key_env} is not set",
                    hint=f"export {key.api_key_env}=… or remove api_key_env to generate a key",
                )
        else:
            value = existing.get(key.env_var) or _secrets.token_urlsafe(32)
        if not _key_pattern().match(value):
            raise ProfileError(
                f"the gateway key {key.name!r} has characters that would break the .env file or "
                "the Authorization header (allowed: 8-256 of letters, digits and ._~+/=-)"
            )
        out[key.env_var] = value
    return out

"""The gateway's runtime config, built from a DeploymentPlan and its profile section: tiers,
contexts and shared GPUs come from the plan, nothing is configured twice; secrets come from the
deployment's .env (or, in the gateway's container, its environment). `public_config` is the
same config without secrets, as JSON the container receives."""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from deployer.errors import ProfileError
from deployer.gateway.spec import (
    DEFAULT_KEYS,
    DEFAULT_PORT,
    GATEWAY_KEY_VAR_PREFIX,
    GATEWAY_SERVICE,
    Fallback,
    GatewaySpec,
    KeySpec,
    Limits,
    parse_gateway_section,
    resolve_gateway_keys,
)
from deployer.plan import DeploymentPlan, ServicePlan
from deployer.vllm_pin import CONTAINER_PORT

SLEEP_MODE_FLAG = "--enable-sleep-mode"
__all__ = [
    "DEFAULT_KEYS",
    "DEFAULT_PORT",
    "GATEWAY_KEY_VAR_PREFIX",
    "GATEWAY_SERVICE",
    "Fallback",
    "GatewaySpec",
    "KeySpec",
    "Limits",
    "parse_gateway_section",
    "resolve_gateway_keys",
]


# --- the runtime config -----------------------------------------------------------------------


@dataclass(frozen=True)
class Tier:
    name: str
    served_model_name: str
    aliases: tuple[str, ...]
    base_url: str
    api_key: str | None = field(repr=False)
    max_model_len: int
    gpus: tuple[int, ...]
    group: str
    size_bytes: int  # weights of the whole model: `auto` tries the smallest first
    max_num_seqs: int
    startup_timeout_s: int
    sleep_mode: bool
    reasoning: bool
    node: str | None = None  # a several-box plan's node: GPU ids are per node

    def names(self) -> tuple[str, ...]:
        return (self.name, self.served_model_name, *self.aliases)


@dataclass(frozen=True)
class GpuGroup:
    """Tiers that share at least one GPU, transitively: admission caps them together."""

    name: str
    gpus: tuple[int, ...]
    tiers: tuple[str, ...]
    cap: int


@dataclass(frozen=True)
class GatewayKey:
    name: str
    secret: str = field(repr=False)
    tiers: frozenset[str] | None
    rpm: int | None
    concurrent: int | None
    admin: bool

    def allows(self, tier: str) -> bool:
        return self.tiers is None or tier in self.tiers


@dataclass(frozen=True)
class GatewayConfig:
    deployment: str
    tiers: tuple[Tier, ...]
    groups: tuple[GpuGroup, ...]
    keys: tuple[GatewayKey, ...]
    limits: Limits = field(default_factory=Limits)
    fallback: Fallback = Fallback.OFF
    port: int = DEFAULT_PORT
    bind: str = "127.0.0.1"

    def tier(self, name: str) -> Tier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    def group_of(self, tier: str) -> GpuGroup:
        for group in self.groups:
            if tier in group.tiers:
                return group
        raise KeyError(tier)

    def key_for(self, secret: str) -> GatewayKey | None:
        for key in self.keys:
            if _secrets.compare_digest(key.secret.encode(), secret.encode()):
                return key
        return None


class _Placed(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def gpus(self) -> tuple[int, ...]: ...
    @property
    def max_num_seqs(self) -> int: ...
    @property
    def node(self) -> str | None: ...


def gpu_groups(services: Iterable[_Placed], cap: int | None = None) -> tuple[GpuGroup, ...]:
    """Connected components of tiers by shared GPUs (a GPU is its node and index), in plan
    order."""
    groups: list[tuple[set[tuple[str, int]], list[_Placed]]] = []
    for service in services:
        merged_gpus, merged = {(service.node or "", g) for g in service.gpus}, [service]
        rest = []
        for gpus, members in groups:
            if gpus & merged_gpus:
                merged_gpus |= gpus
                merged = members + merged
            else:
                rest.append((gpus, members))
        groups = [*rest, (merged_gpus, merged)]
    out = []
    for gpus, members in sorted(groups, key=lambda g: min(g[0]) if g[0] else ("", -1)):
        ids = tuple(sorted(g for _, g in gpus))
        node = members[0].node
        name = "gpu" + "+".join(str(g) for g in ids) if ids else "cpu"
        out.append(
            GpuGroup(
                name=f"{node}/{name}" if node else name,
                gpus=ids,
                tiers=tuple(m.name for m in members),
                cap=cap or max(m.max_num_seqs for m in members),
            )
        )
    return tuple(out)


def tier_url(service: ServicePlan, upstream: str) -> str:
    """Where the gateway reaches a tier: the host port, or the service on the compose network."""
    if upstream == "network":
        return f"http://{service.name}:{CONTAINER_PORT}"
    return service.base_url()


def public_config(
    plan: DeploymentPlan,
    spec: GatewaySpec,
    upstream: str = "host",
    urls: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the gateway needs from the plan and the profile, secrets only by the name of
    the variable that holds them. `urls` overrides a tier's base URL."""
    aliases = {a.lower(): s.name for s in plan.services for a in (s.name, *s.aliases)}
    keys = []
    for key in spec.keys:
        tiers = None
        if key.tiers is not None:
            unknown = [t for t in key.tiers if t.lower() not in aliases]
            if unknown:
                raise ProfileError(
                    f"gateway.keys.{key.name}.tiers: no tier {unknown[0]!r}",
                    hint=f"tiers are {', '.join(s.name for s in plan.services)}",
                )
            tiers = sorted({aliases[t.lower()] for t in key.tiers})
        keys.append(
            {
                "name": key.name,
                "env_var": key.env_var,
                "tiers": tiers,
                "rpm": key.rpm,
                "concurrent": key.concurrent,
                "admin": key.admin,
            }
        )
    return {
        "deployment": plan.deployment,
        "port": spec.port,
        "bind": spec.bind,
        "fallback": spec.fallback.value,
        "limits": dict(vars(spec.limits)),
        "tiers": [
            {
                "name": s.name,
                "served_model_name": s.served_model_name,
                "aliases": list(s.aliases),
                "base_url": (urls or {}).get(s.name) or tier_url(s, upstream),
                "api_key_env": None if s.auth == "none" else s.api_key_env,
                "max_model_len": s.max_model_len,
                "gpus": list(s.gpus),
                "size_bytes": s.memory.weights * s.tensor_parallel_size,
                "max_num_seqs": s.max_num_seqs,
                "startup_timeout_s": s.startup_timeout_s,
                "sleep_mode": SLEEP_MODE_FLAG in s.extra_args,
                "reasoning": s.reasoning_parser is not None,
                **({"node": s.node} if s.node is not None else {}),
            }
            for s in plan.services
        ],
        "keys": keys,
    }


def config_from_public(doc: Mapping[str, Any], secrets: Mapping[str, str]) -> GatewayConfig:
    """The runtime config from `public_config`'s document and the secrets it names."""
    limits = Limits(**{k: v for k, v in doc["limits"].items() if k in vars(Limits())})
    tiers = []
    for raw in doc["tiers"]:
        var = raw["api_key_env"]
        key = secrets.get(var) if var else None
        if var and not key:
            raise ProfileError(
                f"no API key for tier {raw['name']} ({var} is not in .env)",
                hint="run `qwen-deploy render` or `qwen-deploy up` to write the deployment's .env",
            )
        tiers.append(
            Tier(
                name=raw["name"],
                served_model_name=raw["served_model_name"],
                aliases=tuple(raw["aliases"]),
                base_url=raw["base_url"],
                api_key=key,
                max_model_len=int(raw["max_model_len"]),
                gpus=tuple(raw["gpus"]),
                group="",
                size_bytes=int(raw["size_bytes"]),
                max_num_seqs=int(raw["max_num_seqs"]),
                startup_timeout_s=int(raw["startup_timeout_s"]),
                sleep_mode=bool(raw["sleep_mode"]),
                reasoning=bool(raw["reasoning"]),
                node=raw.get("node"),
            )
        )
    groups = gpu_groups(tiers, limits.gpu_inflight)
    by_tier = {t: g.name for g in groups for t in g.tiers}
    keys = []
    for raw in doc["keys"]:
        secret = secrets.get(raw["env_var"])
        if not secret:
            raise ProfileError(
                f"no secret for gateway key {raw['name']!r} ({raw['env_var']} is not in .env)",
                hint="run `qwen-deploy render` or `qwen-deploy up` to generate it",
            )
        allowed = frozenset(raw["tiers"]) if raw["tiers"] is not None else None
        keys.append(
            GatewayKey(
                raw["name"], secret, allowed, raw["rpm"], raw["concurrent"], bool(raw["admin"])
            )
        )
    return GatewayConfig(
        deployment=doc["deployment"],
        tiers=tuple(replace(t, group=by_tier[t.name]) for t in tiers),
        groups=groups,
        keys=tuple(keys),
        limits=limits,
        fallback=Fallback(doc["fallback"]),
        port=int(doc["port"]),
        bind=str(doc["bind"]),
    )


def build_config(
    plan: DeploymentPlan,
    spec: GatewaySpec,
    secrets: Mapping[str, str],
    upstream: str = "host",
    urls: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """The gateway's config from the plan (tiers, contexts, GPUs) and the .env (secrets)."""
    return config_from_public(public_config(plan, spec, upstream, urls), secrets)


def secret_vars(plan: DeploymentPlan, spec: GatewaySpec) -> tuple[str, ...]:
    """The .env variables the gateway needs: every tier's key and every gateway key."""
    tiers = tuple(s.api_key_env for s in plan.services if s.auth != "none")
    return (*tiers, *(k.env_var for k in spec.keys))


def plan_gateway(plan: DeploymentPlan) -> GatewaySpec | None:
    """The plan's gateway section, once the plan carries one (a `gateway` attribute)."""
    raw = getattr(plan, "gateway", None)
    if raw is None or isinstance(raw, GatewaySpec):
        return raw
    if isinstance(raw, Mapping):
        return GatewaySpec.from_dict(raw)
    return None

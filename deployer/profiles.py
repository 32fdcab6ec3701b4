"""Deployment profiles: strict YAML -> frozen dataclasses; errors name file, key and expectation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deployer import profile_fields as check
from deployer.catalog import Catalog, Checkpoint, _check_keys, parse_catalog
from deployer.errors import ProfileError
from deployer.gateway.spec import GatewaySpec, parse_gateway_section
from deployer.profile_fields import ENV_NAME_PATTERN, SERVED_NAME_PATTERN, SERVICE_NAME_PATTERN
from deployer.resources import profiles_dir
from deployer.vllm_pin import KV_CACHE_DTYPES

PROFILES_DIR = profiles_dir()  # the shipped profiles, in a wheel or a checkout

# Keys end up in an env file and an HTTP header: keep them to characters that need no quoting.
API_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]{8,256}$")


@dataclass(frozen=True)
class GenerationDefaults:
    """Qwen3 thinking-mode sampling (generation_config.json); vLLM applies them per request."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    min_p: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
        }


@dataclass(frozen=True)
class ServiceSpec:
    """One service as the profile asks for it; None leaves a value to the planner."""

    name: str
    model: str
    port: int
    gpus: tuple[int, ...] | None  # None = "auto"
    gpu_count: int
    tensor_parallel_size: int
    context: int | None  # None = the most that fits, up to the native context
    gpu_memory_utilization: float | None  # None = planned from weights + KV + overhead
    max_num_seqs: int | None
    kv_cache_dtype: str
    api_key: str | None = None
    api_key_env: str | None = None
    served_model_name: str | None = None
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    aliases: tuple[str, ...] = ()
    bind: str = "127.0.0.1"
    startup_timeout_s: int = 1200
    share: float = 1.0
    enforce_eager: bool = False
    reasoning_parser: str | None = "qwen3"
    extra_args: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()  # extra container env (VLLM_*, STANDIN_*)
    auth: str = "key"  # "none": served without an API key (needs --allow-unauthenticated)
    max_num_batched_tokens: int | None = None  # None: vLLM's default for the GPU


@dataclass(frozen=True)
class Profile:
    """A validated profile: its services, extra models and gateway."""

    name: str
    description: str
    services: tuple[ServiceSpec, ...]
    source: str
    models: dict[str, Checkpoint] = field(default_factory=dict)
    gateway: GatewaySpec | None = None  # one URL and key in front of every service

    @property
    def gpus_needed(self) -> int:
        """How many GPUs the box needs: the highest explicit index + 1, or the auto count."""
        explicit = {g for s in self.services if s.gpus for g in s.gpus}
        auto = max((s.gpu_count for s in self.services if s.gpus is None), default=0)
        return max(len(explicit) and max(explicit) + 1, auto, 1)

    def service(self, name: str) -> ServiceSpec:
        for service in self.services:
            if service.name == name or name in service.aliases:
                return service
        raise ProfileError(
            f"{self.source}: no service {name!r}",
            hint=f"services are {', '.join(s.name for s in self.services)}",
        )


_PROFILE_KEYS = {"name", "description", "defaults", "services", "models", "gateway"}
_SERVICE_KEYS = {
    "model",
    "port",
    "gpus",
    "gpu_count",
    "tensor_parallel_size",
    "context",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv_cache_dtype",
    "api_key",
    "api_key_env",
    "served_model_name",
    "generation",
    "aliases",
    "bind",
    "startup_timeout_s",
    "share",
    "enforce_eager",
    "reasoning_parser",
    "extra_args",
    "environment",
    "auth",
}
# `auth` is per service only: serving without a key is decided for one endpoint at a time.
_DEFAULT_KEYS = _SERVICE_KEYS - {
    "model",
    "port",
    "gpus",
    "api_key",
    "aliases",
    "served_model_name",
    "auth",
}
AUTH_MODES = ("key", "none")
_GENERATION_KEYS = {"temperature", "top_p", "top_k", "min_p"}


def _parse_generation(raw: Any, where: str, base: GenerationDefaults) -> GenerationDefaults:
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping of {sorted(_GENERATION_KEYS)}")
    _check_keys(raw, _GENERATION_KEYS, where)
    values = base.as_dict()
    for key, value in raw.items():
        if key == "top_k":
            values[key] = check.integer(value, f"{where}.top_k", -1, 100000)
        elif key == "min_p":
            values[key] = check.number(value, f"{where}.min_p", 0, 1)
        elif key == "temperature":  # vLLM refuses a negative one (400 on every request)
            values[key] = check.number(value, f"{where}.temperature", 0, 2)
        else:
            values[key] = check.number_above(value, f"{where}.{key}", 0, 1)
    return GenerationDefaults(**values)  # type: ignore[arg-type]


def _parse_service(name: str, raw: Any, defaults: dict[str, Any], source: str) -> ServiceSpec:
    where = f"{source}: services.{name}"
    if not SERVICE_NAME_PATTERN.match(name):
        raise ProfileError(
            f"{where}: service names are lower-case letters, digits and '-', starting with a letter"
        )
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping")
    _check_keys(raw, _SERVICE_KEYS, where)
    merged = {**defaults, **raw}
    if "model" not in merged:
        raise ProfileError(f"{where}: missing 'model' (a checkpoint id such as Qwen/Qwen3-8B-AWQ)")
    model = check.text(merged["model"], f"{where}.model", 256)
    if "port" not in merged:
        raise ProfileError(f"{where}: missing 'port'")
    port = check.integer(merged["port"], f"{where}.port", 1, 65535)

    gpus_raw = merged.get("gpus", "auto")
    gpus: tuple[int, ...] | None
    if gpus_raw == "auto":
        gpus = None
    elif isinstance(gpus_raw, int) and not isinstance(gpus_raw, bool):
        gpus = (check.integer(gpus_raw, f"{where}.gpus", 0, 1023),)
    elif isinstance(gpus_raw, list) and gpus_raw:
        gpus = tuple(
            check.integer(g, f"{where}.gpus[{i}]", 0, 1023) for i, g in enumerate(gpus_raw)
        )
        if len(set(gpus)) != len(gpus):
            raise ProfileError(f"{where}.gpus: a GPU is listed twice in {list(gpus)}")
    else:
        raise ProfileError(f"{where}.gpus: expected 'auto', a GPU index or a list of indices")
    if gpus is None:
        gpu_count = check.integer(
            merged.get("gpu_count", merged.get("tensor_parallel_size", 1)),
            f"{where}.gpu_count",
            1,
            64,
        )
    else:
        if "gpu_count" in raw and raw["gpu_count"] != len(gpus):
            raise ProfileError(f"{where}.gpu_count: {raw['gpu_count']} but gpus lists {len(gpus)}")
        gpu_count = len(gpus)
    tp = check.integer(
        merged.get("tensor_parallel_size", gpu_count), f"{where}.tensor_parallel_size", 1, 64
    )
    if tp != gpu_count:
        raise ProfileError(
            f"{where}.tensor_parallel_size: {tp} but the service has {gpu_count} GPU(s)",
            hint="one instance spans all its GPUs; pipeline parallel is not supported",
        )

    context_raw = merged.get("context", "max")
    context = (
        None
        if context_raw == "max"
        else check.integer(context_raw, f"{where}.context", 256, 1048576)
    )
    gmu_raw = merged.get("gpu_memory_utilization", "auto")
    gmu = (
        None
        if gmu_raw == "auto"
        else check.number_above(gmu_raw, f"{where}.gpu_memory_utilization", 0, 1)
    )
    seqs_raw = merged.get("max_num_seqs")
    seqs = (
        None
        if seqs_raw in (None, "auto")
        else check.integer(seqs_raw, f"{where}.max_num_seqs", 1, 65536)
    )
    batched_raw = merged.get("max_num_batched_tokens")
    batched = (
        None
        if batched_raw in (None, "auto")
        else check.integer(batched_raw, f"{where}.max_num_batched_tokens", 16, 1048576)
    )
    kv_dtype = merged.get("kv_cache_dtype", "auto")
    if kv_dtype not in KV_CACHE_DTYPES:
        raise ProfileError(
            f"{where}.kv_cache_dtype: {kv_dtype!r:.40} is not one of {list(KV_CACHE_DTYPES)}"
        )

    api_key = raw.get("api_key")
    api_key_env = merged.get("api_key_env")
    if api_key is not None and api_key_env is not None:
        raise ProfileError(f"{where}: set api_key or api_key_env, not both")
    if api_key is not None and not isinstance(api_key, str):
        raise ProfileError(
            f"{where}.api_key: YAML read {api_key!r:.40} as a {type(api_key).__name__}, not a key",
            hint=f'quote it: api_key: "{api_key!s:.40}"',
        )
    if api_key is not None and not API_KEY_PATTERN.match(api_key):
        raise ProfileError(
            f"{where}.api_key: keys are 8-256 characters of letters, digits and ._~+/=-",
            hint="other characters would break the .env file or the Authorization header",
        )
    if api_key_env is not None and not (
        isinstance(api_key_env, str) and ENV_NAME_PATTERN.match(api_key_env)
    ):
        raise ProfileError(f"{where}.api_key_env: expected an environment variable name")
    auth = raw.get("auth", "key")
    if auth not in AUTH_MODES:
        raise ProfileError(f"{where}.auth: expected 'key' (the default) or 'none', got {auth!r}")
    if auth == "none" and (api_key is not None or "api_key_env" in raw):
        raise ProfileError(f"{where}: auth: none serves without a key; remove api_key/api_key_env")

    aliases = check.aliases(raw.get("aliases", []), name, f"{where}.aliases")
    extra = merged.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise ProfileError(f"{where}.extra_args: expected a list of strings")
    if extra:  # most services have none: no need to load vLLM's option table
        from deployer.vllm_options import check_extra_args

        problem = check_extra_args(extra, f"{where}.extra_args")
        if problem:
            raise ProfileError(problem)
    environment = check.environment(merged.get("environment", {}), f"{where}.environment")
    bind = check.bind_address(merged.get("bind", "127.0.0.1"), f"{where}.bind")
    served = raw.get("served_model_name")
    if (
        served is not None
        and served != ""
        and not (isinstance(served, str) and SERVED_NAME_PATTERN.match(served))
    ):
        raise ProfileError(
            f"{where}.served_model_name: expected a name of 1-256 printable characters, got "
            f"{served!r:.40}",
            hint="quote it if YAML reads it as a number",
        )
    return ServiceSpec(
        name=name,
        model=model,
        port=port,
        gpus=gpus,
        gpu_count=gpu_count,
        tensor_parallel_size=tp,
        context=context,
        gpu_memory_utilization=gmu,
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
        kv_cache_dtype=kv_dtype,
        api_key=api_key,
        api_key_env=api_key_env,
        served_model_name=served,
        generation=_parse_generation(
            raw.get("generation"),
            f"{where}.generation",
            _parse_generation(
                defaults.get("generation"), f"{source}: defaults.generation", GenerationDefaults()
            ),
        ),
        aliases=aliases,
        bind=bind,
        startup_timeout_s=check.integer(
            merged.get("startup_timeout_s", 1200), f"{where}.startup_timeout_s", 5, 86400
        ),
        share=check.number_above(merged.get("share", 1.0), f"{where}.share", 0, 100),
        enforce_eager=check.boolean(merged.get("enforce_eager", False), f"{where}.enforce_eager"),
        reasoning_parser=check.reasoning_parser(
            merged.get("reasoning_parser", "qwen3"), f"{where}.reasoning_parser"
        ),
        extra_args=tuple(extra),
        environment=environment,
        auth=auth,
    )


def parse_profile(data: Any, source: str, default_name: str = "profile") -> Profile:
    """Validate a profile document strictly."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: expected a mapping with a 'services' key")
    _check_keys(data, _PROFILE_KEYS, source)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ProfileError(f"{source}: defaults: expected a mapping")
    _check_keys(defaults, _DEFAULT_KEYS, f"{source}: defaults")
    raw_services = data.get("services")
    if not isinstance(raw_services, dict) or not raw_services:
        raise ProfileError(f"{source}: 'services' must map service names to their settings")
    services = tuple(
        _parse_service(str(name), raw, defaults, source) for name, raw in raw_services.items()
    )
    ports: dict[int, str] = {}
    names: dict[str, str] = {}
    for service in services:
        if service.port in ports:
            raise ProfileError(
                f"{source}: services.{service.name}.port: {service.port} is already used by "
                f"services.{ports[service.port]}",
                hint="every service needs its own host port",
            )
        ports[service.port] = service.name
        for alias in (service.name, *service.aliases):
            if alias in names and names[alias] != service.name:
                other = names[alias]
                if alias == service.name:  # an earlier service took this name as an alias
                    raise ProfileError(
                        f"{source}: services.{other}.aliases: {alias!r} is the name of "
                        f"services.{service.name}"
                    )
                raise ProfileError(
                    f"{source}: services.{service.name}.aliases: {alias!r} also names "
                    f"services.{other}"
                )
            names[alias] = service.name
    models = parse_catalog(data["models"], f"{source}: models") if "models" in data else {}
    gateway = parse_gateway_section(data.get("gateway"), source)
    if gateway is not None:
        gateway = _check_gateway(gateway, ports, names, source)
    return Profile(
        name=check.text(data.get("name", default_name), f"{source}: name", 128),
        description=check.text(data.get("description", ""), f"{source}: description"),
        services=services,
        source=source,
        models=models,
        gateway=gateway,
    )


def _check_gateway(
    gateway: GatewaySpec, ports: dict[int, str], names: dict[str, str], source: str
) -> GatewaySpec:
    """The gateway's port is its own and its keys name services that exist (an alias reads as
    its service's name)."""
    if gateway.port in ports:
        raise ProfileError(
            f"{source}: gateway.port: {gateway.port} is already used by "
            f"services.{ports[gateway.port]}",
            hint="the gateway needs its own host port (19100 by default)",
        )
    for key in gateway.keys:
        unknown = [t for t in key.tiers or () if t not in names]
        if unknown:
            raise ProfileError(
                f"{source}: gateway.keys.{key.name}.tiers: no service {unknown[0]!r}",
                hint=f"services are {', '.join(sorted(set(names.values())))}",
            )
    keys = tuple(
        replace(k, tiers=tuple(dict.fromkeys(names[t] for t in k.tiers)))
        if k.tiers is not None
        else k
        for k in gateway.keys
    )
    return replace(gateway, keys=keys)


def load_profile_file(path: Path) -> Profile:
    """Size-bounded, UTF-8, no duplicate keys or alias bombs (deployer.safeload)."""
    from deployer.safeload import load_yaml_file

    data = load_yaml_file(path, "profile", ProfileError)
    return parse_profile(data, str(path), default_name=path.stem)


def profile_paths(profiles_dir: Path = PROFILES_DIR) -> dict[str, Path]:
    """Profile name -> file, for every *.yaml in the profiles directory."""
    if not profiles_dir.is_dir():
        return {}
    return {p.stem: p for p in sorted(profiles_dir.glob("*.yaml"))}


def load_profile(name_or_path: str, profiles_dir: Path = PROFILES_DIR) -> Profile:
    """A profile by name (from the profiles directory) or by file path."""
    candidate = Path(name_or_path)
    if candidate.is_dir():
        raise ProfileError(
            f"cannot read profile {name_or_path}: it is a directory",
            hint="name a profile file, a shipped profile or `auto`",
        )
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        return load_profile_file(candidate)
    paths = profile_paths(profiles_dir)
    if name_or_path not in paths:
        from deployer.catalog import _closest

        close = _closest(name_or_path, paths)
        hint = f"did you mean {close!r}?" if close else f"profiles are {', '.join(paths) or 'none'}"
        raise ProfileError(f"unknown profile {name_or_path!r} in {profiles_dir}", hint=hint)
    return load_profile_file(paths[name_or_path])


def load_all_profiles(profiles_dir: Path = PROFILES_DIR) -> list[Profile]:
    return [load_profile_file(p) for p in profile_paths(profiles_dir).values()]


def catalog_for(profile: Profile, catalog: Catalog) -> Catalog:
    """The catalog extended with the profile's own `models:` section."""
    if not profile.models:
        return catalog
    return Catalog({**catalog.checkpoints, **profile.models})

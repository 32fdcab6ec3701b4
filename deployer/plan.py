"""The deployment plan: what the planner decided, as typed data, and its JSON both ways.

`planner.plan()` builds a `DeploymentPlan`; `render`, `runtime`, `verify`, `endpoints` and the
bench code read it. Facts derived from it (which services share a GPU, what a service starts
after, its URL) are methods here so that every reader computes them the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

from deployer.errors import ProfileError
from deployer.gateway.spec import GATEWAY_SERVICE, GatewaySpec
from deployer.gpus import GIB, Gpu, GpuProcess
from deployer.profiles import GenerationDefaults

PLAN_SCHEMA_VERSION = 1
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})


class Engine(str, Enum):
    """What serves the model: the real vLLM image or the project's CPU stand-in."""

    VLLM = "vllm"
    STAND_IN = "stand-in"

    def __str__(self) -> str:  # the JSON and the CLI show the plain string
        return self.value


class AuthMode(str, Enum):
    """Whether a service checks an API key (`none` only when the profile said so)."""

    KEY = "key"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU of one service, as vLLM will account for them.

    `budget` is ceil(gpu_memory_utilization x cuda_total), cudaMemGetInfo's total; the other
    terms are what vLLM takes out of it, and `kv_cache` is what is left ("Available KV cache
    memory").
    """

    budget: int
    weights: int
    activation_peak: int
    non_torch: int
    cuda_graphs: int
    kv_cache: int
    sampler_state: int = 0  # Model Runner V2's penalties buffer (0 in plans made before it)
    cuda_total: int = 0  # the total vLLM multiplies the fraction by (0: plans before v2)

    @property
    def overheads(self) -> int:
        """Everything in the budget besides weights and KV cache."""
        return self.activation_peak + self.non_torch + self.cuda_graphs + self.sampler_state

    def as_gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 2) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ServicePlan:
    """One planned vLLM instance: placement, engine arguments and the memory they leave."""

    name: str
    model: str
    served_model_name: str
    family: str
    quantization: str
    gpus: tuple[int, ...]
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_dtype: str
    kv_cache_tokens: int
    max_concurrency: float  # full-context requests the KV cache holds at once
    memory: MemoryBreakdown
    port: int
    bind: str
    api_key_source: str  # "profile", "env:NAME" or "generated" (never the key itself)
    generation: GenerationDefaults
    reasoning_parser: str | None
    yarn_factor: float | None
    kernel_note: str | None
    start_after: tuple[str, ...]
    startup_timeout_s: int
    aliases: tuple[str, ...]
    enforce_eager: bool
    extra_args: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    utilization_planned: bool  # False when the profile fixed gpu_memory_utilization
    auth: AuthMode = AuthMode.KEY  # NONE: no API key (the profile said so, up/render confirmed)
    node: str | None = None  # several-box plans: the node (inventory) this service runs on

    @property
    def api_key_env(self) -> str:
        """Variable in the deployment's .env that holds this service's key."""
        return f"QWEN_DEPLOY_API_KEY_{self.name.upper().replace('-', '_')}"

    def client_host(self, host: str | None = None) -> str:
        """The host a client on this machine uses: `host` when given, else the address the
        service binds (loopback when it binds every interface)."""
        chosen = host or ("127.0.0.1" if self.bind in WILDCARD_BINDS else self.bind)
        return f"[{chosen}]" if ":" in chosen and not chosen.startswith("[") else chosen

    def base_url(self, host: str | None = None) -> str:
        """Server root (no /v1), as `verify` uses it."""
        return f"http://{self.client_host(host)}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["auth"] = self.auth.value
        data["api_key_env"] = self.api_key_env
        data["memory_gib"] = self.memory.as_gib()
        return data

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServicePlan:
        raw = dict(raw)
        raw["gpus"] = tuple(raw["gpus"])
        raw["memory"] = _build(MemoryBreakdown, raw["memory"])
        raw["generation"] = _build(GenerationDefaults, raw["generation"])
        for key in ("start_after", "aliases", "extra_args"):
            raw[key] = tuple(raw[key])
        raw["environment"] = tuple(tuple(pair) for pair in raw["environment"])
        raw["auth"] = AuthMode(raw.get("auth", AuthMode.KEY.value))
        return _build(cls, raw)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class NodePlan:
    """One box of a several-box plan: its name, where its inventory came from, its GPUs."""

    name: str
    inventory_source: str
    gpus: tuple[Gpu, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NodePlan:
        return cls(
            name=str(raw["name"]),
            inventory_source=str(raw["inventory_source"]),
            gpus=tuple(_gpu_from_dict(g) for g in raw["gpus"]),
        )


@dataclass(frozen=True)
class LedgerRow:
    """One GPU of the plan: what its services ask of it and what stays free."""

    node: str | None
    index: int
    name: str
    total: int  # bytes, cudaMemGetInfo's total
    free: int  # bytes free when planned
    asks: tuple[tuple[str, int], ...]  # (service, bytes it asks: its budget)

    @property
    def spare(self) -> int:
        return self.free - sum(b for _, b in self.asks)


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything `render` and `up` need: the services, their GPUs, order and gateway."""

    deployment: str
    profile: str
    profile_source: str
    engine: Engine
    image: str
    vllm_version: str
    inventory_source: str
    gpus: tuple[Gpu, ...]
    services: tuple[ServicePlan, ...]
    start_waves: tuple[tuple[str, ...], ...]
    warnings: tuple[str, ...] = ()
    nodes: tuple[NodePlan, ...] = ()  # several boxes; empty for a one-box plan (see `gpus`)
    gateway: GatewaySpec | None = None  # the profile's `gateway:` section; None: no gateway

    def service(self, name: str) -> ServicePlan:
        for service in self.services:
            if name == service.name or name in service.aliases:
                return service
        raise ProfileError(
            f"no service {name!r} in deployment {self.deployment!r}",
            hint=f"services are {', '.join(s.name for s in self.services)}",
        )

    def unit_names(self) -> tuple[str, ...]:
        """The names of every container of the deployment: the services, then the gateway."""
        names = tuple(s.name for s in self.services)
        return (*names, GATEWAY_SERVICE) if self.gateway is not None else names

    def unit_name(self, name: str) -> str:
        """A service's name from its name or alias, or the gateway's (for logs, restart,
        verify); ProfileError naming every choice."""
        if self.gateway is not None and name == GATEWAY_SERVICE:
            return GATEWAY_SERVICE
        if any(name == s.name or name in s.aliases for s in self.services):
            return self.service(name).name
        raise ProfileError(
            f"no service {name!r} in deployment {self.deployment!r}",
            hint=f"services are {', '.join(self.unit_names())}",
        )

    def gpu(self, index: int, node: str | None = None) -> Gpu | None:
        """The planned GPU with this index (on `node` in a several-box plan)."""
        gpus = self.gpus
        if node is not None:
            gpus = next((n.gpus for n in self.nodes if n.name == node), ())
        return next((g for g in gpus if g.index == index), None)

    def services_on(self, index: int, node: str | None = None) -> tuple[ServicePlan, ...]:
        """The services that use GPU `index` (of `node`, when given), in profile order."""
        return tuple(
            s for s in self.services if index in s.gpus and (node is None or s.node == node)
        )

    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def ledger(self) -> tuple[LedgerRow, ...]:
        """Per node and GPU: each service's budget and what stays free (the per-GPU truth
        that targets without per-GPU scheduling, like Swarm, keep themselves)."""
        from deployer.memory_model import cuda_free_bytes, cuda_total_bytes

        boxes: list[tuple[str | None, tuple[Gpu, ...]]] = [(n.name, n.gpus) for n in self.nodes]
        boxes = boxes or [(None, self.gpus)]
        rows = []
        for node, gpus in boxes:
            for gpu in gpus:
                tenants = self.services_on(gpu.index, node)
                if not tenants:
                    continue
                rows.append(
                    LedgerRow(
                        node=node,
                        index=gpu.index,
                        name=gpu.name,
                        total=cuda_total_bytes(gpu),
                        free=cuda_free_bytes(gpu),
                        asks=tuple((s.name, s.memory.budget) for s in tenants),
                    )
                )
        return tuple(rows)

    def tenants_by_gpu(self) -> dict[int, tuple[str, ...]]:
        """GPU index -> names of the services on it, for every GPU some service uses."""
        users: dict[int, list[str]] = {}
        for service in self.services:
            for index in service.gpus:
                users.setdefault(index, []).append(service.name)
        return {index: tuple(names) for index, names in sorted(users.items())}

    def shared_gpus(self) -> dict[int, tuple[str, ...]]:
        """Only the GPUs that more than one service uses."""
        return {i: names for i, names in self.tenants_by_gpu().items() if len(names) > 1}

    def co_tenants(self, name: str) -> tuple[ServicePlan, ...]:
        """The other services that share at least one GPU with `name`."""
        me = self.service(name)
        return tuple(
            s
            for s in self.services
            if s.name != me.name and s.node == me.node and set(s.gpus) & set(me.gpus)
        )

    def starts_after(self, name: str) -> ServicePlan | None:
        """The service that must be ready before `name` starts (None: it starts at once)."""
        me = self.service(name)
        return self.service(me.start_after[-1]) if me.start_after else None

    def base_url(self, name: str, host: str | None = None) -> str:
        """A service's URL, or the gateway's."""
        if self.gateway is not None and name == GATEWAY_SERVICE:
            from deployer.gateway.guide import gateway_url

            return gateway_url(self.gateway, host)
        return self.service(name).base_url(host)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["engine"] = self.engine.value
        data["services"] = [s.to_dict() for s in self.services]
        data["nodes"] = [n.to_dict() for n in self.nodes]
        # Absent without a gateway, so plans of profiles without one read as they always did;
        # with one, its own to_dict (no literal key from the profile reaches plan.json).
        del data["gateway"]
        if self.gateway is not None:
            data["gateway"] = self.gateway.to_dict()
        data["schema_version"] = PLAN_SCHEMA_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentPlan:
        """Read `to_dict`'s document back (plan.json); ValueError/KeyError/TypeError if bad."""
        if data.get("schema_version") != PLAN_SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {data.get('schema_version')!r} is not {PLAN_SCHEMA_VERSION}"
            )
        gpus = [_gpu_from_dict(raw) for raw in data["gpus"]]
        top = dict(data)
        top["nodes"] = tuple(NodePlan.from_dict(n) for n in data.get("nodes", []))
        top["engine"] = Engine(data["engine"])
        top["services"] = tuple(ServicePlan.from_dict(raw) for raw in data["services"])
        top["gpus"] = tuple(gpus)
        top["start_waves"] = tuple(tuple(w) for w in data["start_waves"])
        top["warnings"] = tuple(data["warnings"])
        raw_gateway = data.get("gateway")
        top["gateway"] = GatewaySpec.from_dict(raw_gateway) if raw_gateway is not None else None
        return _build(cls, top)  # type: ignore[no-any-return]


def plan_from_dict(data: dict[str, Any]) -> DeploymentPlan:
    """`DeploymentPlan.from_dict` as a function (deployment.py and bench import it)."""
    return DeploymentPlan.from_dict(data)


def _gpu_from_dict(raw: dict[str, Any]) -> Gpu:
    raw = dict(raw)
    raw["processes"] = tuple(_build(GpuProcess, p) for p in raw.get("processes", []))
    return _build(Gpu, raw)  # type: ignore[no-any-return]


def _build(cls: type[Any], raw: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})

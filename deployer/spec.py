"""How each planned service runs as a container: one pure description used by both the compose
renderer and the Docker runtime, so the compose file and the started containers cannot drift."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from deployer.memory_model import reserved_mib
from deployer.planner import DeploymentPlan, ServicePlan
from deployer.vllm_pin import (
    CONTAINER_PORT,
    HF_CACHE_IN_CONTAINER,
    QUANTIZATION_FLAG,
    STANDIN_ENTRYPOINT,
    VLLM_ENTRYPOINT,
)

# docker compose's own label keys, so `docker compose -p NAME ps` lists our containers.
LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_ONEOFF = "com.docker.compose.oneoff"
LABEL_NUMBER = "com.docker.compose.container-number"
LABEL_CONFIG_HASH = "com.docker.compose.config-hash"
LABEL_WORKING_DIR = "com.docker.compose.project.working_dir"
LABEL_CONFIG_FILES = "com.docker.compose.project.config_files"
LABEL_DEPENDS_ON = "com.docker.compose.depends_on"
# Ours: enough for `status` to describe a service from the engine alone.
LABEL_PREFIX = "io.qwen-deploy."
LABEL_MODEL = LABEL_PREFIX + "model"
LABEL_GPUS = LABEL_PREFIX + "gpus"
LABEL_PORT = LABEL_PREFIX + "port"
LABEL_ENGINE = LABEL_PREFIX + "engine"
LABEL_MAX_MODEL_LEN = LABEL_PREFIX + "max-model-len"
LABEL_UTILIZATION = LABEL_PREFIX + "gpu-memory-utilization"
LABEL_START_AFTER = LABEL_PREFIX + "start-after"

HF_CACHE_VOLUME = "qwen-deploy-hf-cache"
STANDIN_LEDGER_VOLUME = "qwen-deploy-standin-ledger"
STANDIN_LEDGER_DIR = "/var/lib/standin-ledger"
DEPLOYMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
HEALTH_URL = f"http://127.0.0.1:{CONTAINER_PORT}/health"
HEALTHCHECK_TEST = (
    "CMD",
    "python3",
    "-c",
    f"import urllib.request; urllib.request.urlopen('{HEALTH_URL}', timeout=4)",
)


# Run before a co-tenant's engine: wait until the service it starts after is healthy, then
# exec the image's entrypoint. `up` already orders starts; this gate keeps the order when
# Docker restarts every container at once (engine restart, reboot), where two engines
# profiling one GPU together would mis-size each other (vllm#55827).
START_GATE = """\
import os, sys, time, urllib.request
url, command = sys.argv[1], sys.argv[2:]
waited = 0
while True:
    try:
        urllib.request.urlopen(url, timeout=5)
        break
    except Exception:
        if waited % 30 == 0:
            print(f"qwen-deploy: waiting for {url} before starting (shared GPU)", flush=True)
        time.sleep(2)
        waited += 2
os.execvp(command[0], command)
"""


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_s: int
    timeout_s: int
    retries: int
    start_period_s: int


@dataclass(frozen=True)
class ContainerSpec:
    service: str
    container_name: str
    image: str
    entrypoint: tuple[str, ...] | None  # None: the image's own (`vllm serve`)
    command: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]  # plain values, safe to write into compose.yaml
    secret_env: tuple[tuple[str, str], ...]  # container var -> variable in the .env file
    bind: str
    host_port: int
    container_port: int
    device_ids: tuple[str, ...]
    volumes: tuple[tuple[str, str], ...]  # named volume -> path in the container
    ipc_mode: str
    restart_policy: str
    network: str
    healthcheck: Healthcheck
    labels: tuple[tuple[str, str], ...]
    depends_on: tuple[str, ...]

    def config_hash(self, secret_values: dict[str, str]) -> str:
        """Digest of everything that should recreate the container when it changes.
        Secrets enter only as their own digests."""
        data = asdict(self)
        data.pop("labels")
        # HF_TOKEN only matters for downloads: running `up` with or without it in the shell
        # must not recreate every container.
        data["secret_digests"] = {
            var: hashlib.sha256(secret_values.get(var, "").encode()).hexdigest()
            for _, var in self.secret_env
            if var != "HF_TOKEN"
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def vllm_args(service: ServicePlan) -> tuple[str, ...]:
    """The `vllm serve` arguments (the image's entrypoint is `vllm serve`)."""
    args = [
        service.model,
        "--served-model-name", service.served_model_name,
        "--host", "0.0.0.0",
        "--port", str(CONTAINER_PORT),
        "--tensor-parallel-size", str(service.tensor_parallel_size),
        "--gpu-memory-utilization", f"{service.gpu_memory_utilization:g}",
        "--max-model-len", str(service.max_model_len),
        "--max-num-seqs", str(service.max_num_seqs),
        "--max-num-batched-tokens", str(service.max_num_batched_tokens),
        "--kv-cache-dtype", service.kv_cache_dtype,
    ]  # fmt: skip
    quantization = QUANTIZATION_FLAG[service.quantization]
    if quantization:
        args += ["--quantization", quantization]
    if service.reasoning_parser:
        args += ["--reasoning-parser", service.reasoning_parser]
    # Qwen3's generation_config.json already has these; the override makes the profile's
    # values win and keeps them when a checkpoint ships without one.
    args += [
        "--generation-config", "auto",
        "--override-generation-config",
        json.dumps(service.generation.as_dict(), separators=(",", ":")),
    ]  # fmt: skip
    if service.yarn_factor:
        rope = {
            "rope_type": "yarn",
            "factor": service.yarn_factor,
            "original_max_position_embeddings": 32768,
            # --hf-overrides replaces rope_parameters whole: keep Qwen3's base, or MoE models
            # fall back to 10000 (found by the real vLLM parser check, tests/vllm).
            "rope_theta": 1000000,
        }
        args += [
            "--hf-overrides",
            json.dumps(
                {"max_position_embeddings": service.max_model_len, "rope_parameters": rope},
                separators=(",", ":"),
            ),
        ]
    if service.enforce_eager:
        args.append("--enforce-eager")
    return (*args, *service.extra_args)


def project_name(plan: DeploymentPlan) -> str:
    return plan.deployment


def container_specs(plan: DeploymentPlan, deployment_dir: str) -> tuple[ContainerSpec, ...]:
    """One ContainerSpec per planned service, in plan order."""
    project = project_name(plan)
    specs = []
    for service in plan.services:
        environment: dict[str, str] = dict(service.environment)
        volumes = [(HF_CACHE_VOLUME, HF_CACHE_IN_CONTAINER)]
        if plan.engine == "stand-in":
            # The stand-in keeps a per-GPU memory ledger shared by every stand-in on the host:
            # its own node's GPUs in a several-box plan.
            box = next((n.gpus for n in plan.nodes if n.name == service.node), plan.gpus)
            environment["STANDIN_GPU_TOTAL_MIB"] = ",".join(
                f"{g.index}:{g.memory_total_mib}" for g in box
            )
            environment["STANDIN_GPU_FOREIGN_MIB"] = ",".join(
                f"{g.index}:{g.memory_used_mib}" for g in box
            )
            # vLLM's total leaves NVML's reserved memory out; the stand-in does too.
            environment["STANDIN_GPU_RESERVED_MIB"] = ",".join(
                f"{g.index}:{reserved_mib(g)}" for g in box
            )
            environment["STANDIN_LEDGER_DIR"] = STANDIN_LEDGER_DIR
            volumes.append((STANDIN_LEDGER_VOLUME, STANDIN_LEDGER_DIR))
        labels = {
            LABEL_PROJECT: project,
            LABEL_SERVICE: service.name,
            LABEL_ONEOFF: "False",
            LABEL_NUMBER: "1",
            LABEL_WORKING_DIR: deployment_dir,
            LABEL_CONFIG_FILES: f"{deployment_dir}/compose.yaml",
            LABEL_DEPENDS_ON: ",".join(f"{d}:service_healthy:false" for d in service.start_after),
            LABEL_MODEL: service.served_model_name,
            LABEL_GPUS: ",".join(map(str, service.gpus)),
            LABEL_PORT: str(service.port),
            LABEL_ENGINE: plan.engine,
            LABEL_MAX_MODEL_LEN: str(service.max_model_len),
            LABEL_UTILIZATION: f"{service.gpu_memory_utilization:g}",
            LABEL_START_AFTER: ",".join(service.start_after),
        }
        entrypoint = None
        if service.start_after:
            image_entrypoint = STANDIN_ENTRYPOINT if plan.engine == "stand-in" else VLLM_ENTRYPOINT
            gate_url = f"http://{service.start_after[-1]}:{CONTAINER_PORT}/health"
            entrypoint = ("python3", "-c", START_GATE, gate_url, *image_entrypoint)
        specs.append(
            ContainerSpec(
                service=service.name,
                container_name=f"{project}-{service.name}-1",
                image=plan.image,
                entrypoint=entrypoint,
                command=vllm_args(service),
                environment=tuple(sorted(environment.items())),
                secret_env=(
                    *((("VLLM_API_KEY", service.api_key_env),) if service.auth != "none" else ()),
                    ("HF_TOKEN", "HF_TOKEN"),
                ),
                bind=service.bind,
                host_port=service.port,
                container_port=CONTAINER_PORT,
                device_ids=tuple(str(g) for g in service.gpus),
                volumes=tuple(volumes),
                ipc_mode="host",
                restart_policy="always",
                network=f"{project}_default",
                healthcheck=Healthcheck(
                    test=HEALTHCHECK_TEST,
                    interval_s=10,
                    timeout_s=5,
                    retries=3,
                    start_period_s=service.startup_timeout_s,
                ),
                labels=tuple(sorted(labels.items())),
                depends_on=service.start_after,
            )
        )
    return tuple(specs)


def deployment_specs(plan: DeploymentPlan, deployment_dir: str) -> tuple[ContainerSpec, ...]:
    """Every container of the deployment: the services', then the gateway's when the plan has
    one (what `up` converges and `status` compares)."""
    from deployer.gateway.service import gateway_specs  # it builds on this module

    return (*container_specs(plan, deployment_dir), *gateway_specs(plan, deployment_dir))

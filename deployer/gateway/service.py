"""The gateway as a service of the deployment: its ContainerSpec (the same description for the
compose file and the Docker runtime), started once every tier it fronts is healthy, no GPU.
Pure: the plan in, the spec out."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from deployer.gateway import images
from deployer.gateway.config import (
    GATEWAY_SERVICE,
    GatewaySpec,
    plan_gateway,
    public_config,
    secret_vars,
)
from deployer.gateway.spec import CONFIG_ENV, GATEWAY_MODEL
from deployer.plan import DeploymentPlan
from deployer.spec import (
    LABEL_CONFIG_FILES,
    LABEL_DEPENDS_ON,
    LABEL_ENGINE,
    LABEL_GPUS,
    LABEL_MAX_MODEL_LEN,
    LABEL_MODEL,
    LABEL_NUMBER,
    LABEL_ONEOFF,
    LABEL_PORT,
    LABEL_PREFIX,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LABEL_START_AFTER,
    LABEL_UTILIZATION,
    LABEL_WORKING_DIR,
    ContainerSpec,
    Healthcheck,
    project_name,
)

START_PERIOD_S = 30


def gateway_container_spec(
    plan: DeploymentPlan, spec: GatewaySpec, deployment_dir: str, image: str
) -> ContainerSpec:
    """The gateway's container: the config as JSON in its environment (so the config hash
    follows the plan), the tiers' and clients' keys only as .env references."""
    project = project_name(plan)
    tiers = tuple(s.name for s in plan.services)
    config = json.dumps(public_config(plan, spec, "network"), sort_keys=True, separators=(",", ":"))
    health = f"http://127.0.0.1:{spec.port}/health"
    labels = {
        LABEL_PROJECT: project,
        LABEL_SERVICE: GATEWAY_SERVICE,
        LABEL_ONEOFF: "False",
        LABEL_NUMBER: "1",
        LABEL_WORKING_DIR: deployment_dir,
        LABEL_CONFIG_FILES: f"{deployment_dir}/compose.yaml",
        LABEL_DEPENDS_ON: ",".join(f"{t}:service_healthy:false" for t in tiers),
        LABEL_MODEL: GATEWAY_MODEL,
        LABEL_GPUS: "",
        LABEL_PORT: str(spec.port),
        LABEL_ENGINE: str(plan.engine),
        LABEL_MAX_MODEL_LEN: str(max(s.max_model_len for s in plan.services)),
        LABEL_UTILIZATION: "0",
        LABEL_START_AFTER: ",".join(tiers),
    }
    return ContainerSpec(
        service=GATEWAY_SERVICE,
        container_name=f"{project}-{GATEWAY_SERVICE}-1",
        image=image,
        entrypoint=None,  # the image's: python3 -m deployer.gateway
        command=("--config-env", CONFIG_ENV, "--host", "0.0.0.0", "--port", str(spec.port)),
        environment=((CONFIG_ENV, config),),
        secret_env=tuple((var, var) for var in secret_vars(plan, spec)),
        bind=spec.bind,
        host_port=spec.port,
        container_port=spec.port,
        device_ids=(),  # no GPU
        volumes=(),
        ipc_mode="private",
        restart_policy="always",
        network=f"{project}_default",
        healthcheck=Healthcheck(
            test=(
                "CMD",
                "python3",
                "-c",
                f"import urllib.request; urllib.request.urlopen('{health}', timeout=4)",
            ),
            interval_s=10,
            timeout_s=5,
            retries=3,
            start_period_s=START_PERIOD_S,
        ),
        labels=tuple(sorted(labels.items())),
        depends_on=tiers,
    )


def gateway_specs(
    plan: DeploymentPlan, deployment_dir: str, spec: GatewaySpec | None = None
) -> tuple[ContainerSpec, ...]:
    """The gateway's ContainerSpec when the plan has a gateway (for render, `up`, status)."""
    spec = spec or plan_gateway(plan)
    if spec is None:
        return ()
    return (gateway_container_spec(plan, spec, deployment_dir, images.image_tag(plan.engine)),)


def compose_entry(
    plan: DeploymentPlan, deployment_dir: str, interpolation: Callable[[str, bool], str]
) -> dict[str, Any] | None:
    """What compose_templates/gateway.yaml.j2 needs; None without a gateway. Every key is
    required (`${VAR:?…}`): a gateway without its keys must not start."""
    specs = gateway_specs(plan, deployment_dir)
    if not specs:
        return None
    spec = specs[0]
    return {
        "spec": spec,
        "secrets": [(name, interpolation(var, True)) for name, var in spec.secret_env],
        "labels": [(k, v) for k, v in spec.labels if k.startswith(LABEL_PREFIX)],
    }


def env_keys(plan: DeploymentPlan, keys: Mapping[str, str]) -> dict[str, str]:
    """The gateway keys for the deployment's .env (render_files); ValueError if one is missing."""
    spec = plan_gateway(plan)
    out = {}
    for key in spec.keys if spec else ():
        if not keys.get(key.env_var):
            raise ValueError(f"no secret for gateway key {key.name!r} ({key.env_var})")
        out[key.env_var] = keys[key.env_var]
    return out

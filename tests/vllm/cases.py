"""The rendered services the real-vLLM checks run: every profile on a box it fits, plus a YaRN
service and an fp8 KV cache service. Pure deployer code, so collection works without vLLM."""

from __future__ import annotations

from typing import Any

from deployer.catalog import load_catalog
from deployer.planner import ServicePlan, plan
from deployer.profiles import load_profile, parse_profile
from tests.helpers import inventory

PROFILE_BOXES = (
    ("tri-tier", "3x-rtx4090"),
    ("eight-gpu", "8x-h100"),
    ("nvfp4-8b", "1x-rtx5090"),
    ("single-gpu", "1x-l4"),
    ("dual-gpu", "2x-a100-40gb"),
)

# Services no profile in profiles/ produces: context beyond the native 32768 (YaRN) on a dense
# and on a MoE model, and an fp8 KV cache.
EXTRA_SERVICES: dict[str, tuple[str, dict[str, Any]]] = {
    "yarn-dense": (
        "8x-h100",
        {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 5001, "context": 65536},
    ),
    "yarn-moe": (
        "8x-h100",
        {"model": "Qwen/Qwen3-30B-A3B-FP8", "gpus": [0], "port": 5003, "context": 65536},
    ),
    "fp8-kv": (
        "1x-l4",
        {
            "model": "Qwen/Qwen3-8B-AWQ",
            "gpus": [0],
            "port": 5001,
            "context": 32768,
            "kv_cache_dtype": "fp8",
        },
    ),
}


def rendered_services() -> dict[str, ServicePlan]:
    """`profile/service` (or the extra service's name) -> its planned service."""
    catalog = load_catalog()
    services: dict[str, ServicePlan] = {}
    for profile, box in PROFILE_BOXES:
        for service in plan(inventory(box), load_profile(profile), catalog).services:
            services[f"{profile}/{service.name}"] = service
    for name, (box, spec) in EXTRA_SERVICES.items():
        profile_obj = parse_profile({"name": name, "services": {"svc": spec}}, f"<{name}>")
        services[name] = plan(inventory(box), profile_obj, catalog).services[0]
    return services


SERVICES = rendered_services()

"""The gateway's ContainerSpec and the public config it carries: pure."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from deployer.catalog import Catalog
from deployer.errors import ProfileError
from deployer.gateway.config import (
    GatewaySpec,
    KeySpec,
    build_config,
    config_from_public,
    public_config,
    resolve_gateway_keys,
)
from deployer.gateway.service import gateway_container_spec
from deployer.gateway.spec import CONFIG_ENV
from deployer.plan import DeploymentPlan
from deployer.planner import plan
from deployer.profiles import load_profile
from tests.helpers import inventory


@pytest.fixture
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    return plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)


def test_the_container_needs_no_gpu_waits_for_every_tier_and_holds_no_secret(
    tri_tier: DeploymentPlan,
) -> None:
    spec = GatewaySpec(keys=(KeySpec("apps", tiers=("mini",)), KeySpec("ops", admin=True)))
    container = gateway_container_spec(tri_tier, spec, "/srv/qwen3", "qwen-deploy/gateway:x")
    assert container.service == "gateway" and container.device_ids == ()
    assert set(container.depends_on) == {"medium", "mini", "micro"}
    assert (container.host_port, container.container_port, container.bind) == (
        19100,
        19100,
        "127.0.0.1",
    )
    assert dict(container.secret_env) == {
        "QWEN_DEPLOY_API_KEY_MEDIUM": "QWEN_DEPLOY_API_KEY_MEDIUM",
        "QWEN_DEPLOY_API_KEY_MINI": "QWEN_DEPLOY_API_KEY_MINI",
        "QWEN_DEPLOY_API_KEY_MICRO": "QWEN_DEPLOY_API_KEY_MICRO",
        "QWEN_DEPLOY_GATEWAY_KEY_APPS": "QWEN_DEPLOY_GATEWAY_KEY_APPS",
        "QWEN_DEPLOY_GATEWAY_KEY_OPS": "QWEN_DEPLOY_GATEWAY_KEY_OPS",
    }
    environment = dict(container.environment)
    assert "test-key-mini" not in environment[CONFIG_ENV]  # the profile's literal tier key
    doc = json.loads(environment[CONFIG_ENV])
    assert {t["name"]: t["base_url"] for t in doc["tiers"]}["mini"] == "http://mini:8000"
    assert doc["keys"][0] == {
        "name": "apps", "env_var": "QWEN_DEPLOY_GATEWAY_KEY_APPS", "tiers": ["mini"],
        "rpm": None, "concurrent": None, "admin": False,
    }  # fmt: skip


def test_the_public_config_round_trips_into_the_same_config(tri_tier: DeploymentPlan) -> None:
    spec = GatewaySpec()
    secrets = {s.api_key_env: f"tier-key-{s.name}" for s in tri_tier.services}
    secrets.update(resolve_gateway_keys(spec, {}, {}))
    doc = json.loads(json.dumps(public_config(tri_tier, spec)))
    assert config_from_public(doc, secrets) == build_config(tri_tier, spec, secrets)
    with pytest.raises(ProfileError, match="QWEN_DEPLOY_GATEWAY_KEY_ADMIN"):
        config_from_public(doc, {k: v for k, v in secrets.items() if "ADMIN" not in k})


def test_a_changed_tier_changes_the_gateways_config_hash(tri_tier: DeploymentPlan) -> None:
    spec = GatewaySpec()
    before = gateway_container_spec(tri_tier, spec, "/d", "img").config_hash({})
    services = tuple(
        replace(s, max_model_len=8192) if s.name == "micro" else s for s in tri_tier.services
    )
    changed = replace(tri_tier, services=services)
    assert gateway_container_spec(changed, spec, "/d", "img").config_hash({}) != before
    assert gateway_container_spec(tri_tier, spec, "/d", "img").config_hash({}) == before


def test_the_guide_shows_one_url_one_key_and_every_name(tri_tier: DeploymentPlan) -> None:
    from deployer.gateway.guide import gateway_entry, gateway_markdown

    spec = GatewaySpec()
    keys = resolve_gateway_keys(spec, {}, {})
    secret = keys["QWEN_DEPLOY_GATEWAY_KEY_DEFAULT"]
    masked = gateway_entry(tri_tier, spec, keys, False, lambda k: "xx…yy")
    assert masked["base_url"] == "http://127.0.0.1:19100/v1"
    assert masked["api_key"] == "xx…yy" and secret not in json.dumps(masked)
    assert "$QWEN_DEPLOY_GATEWAY_KEY_DEFAULT" in masked["examples"]["curl_chat"]
    names = {m["tier"]: m["names"] for m in masked["models"]}
    assert names["mini"] == ["mini", "Qwen/Qwen3-8B-AWQ", "MINI", "8b"] and "auto" in names
    shown = gateway_entry(tri_tier, spec, keys, True, lambda k: "xx…yy")
    assert secret in shown["examples"]["curl_chat"] and shown["api_key"] == secret
    text = "\n".join(gateway_markdown(masked))
    assert text.startswith("## Gateway (one URL for every tier)")
    assert "--data-binary @question.json" in text and "brièvement" in text
    assert "/api/v1/chat/stream" in text

"""The gateway's config: the profile section, and what comes from the plan (nothing twice)."""

from __future__ import annotations

import pytest

from deployer.catalog import Catalog
from deployer.errors import ProfileError
from deployer.gateway.config import (
    DEFAULT_PORT,
    Fallback,
    GatewaySpec,
    KeySpec,
    build_config,
    gpu_groups,
    parse_gateway_section,
    resolve_gateway_keys,
)
from deployer.planner import DeploymentPlan
from tests.helpers import tri_tier_plan


@pytest.fixture
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    return tri_tier_plan(catalog)


def secrets_for(the_plan: DeploymentPlan, spec: GatewaySpec) -> dict[str, str]:
    tier_keys = {s.api_key_env: f"tier-key-{s.name}" for s in the_plan.services}
    return {**tier_keys, **resolve_gateway_keys(spec, {}, {})}


def test_tiers_contexts_and_shared_gpus_come_from_the_plan(tri_tier: DeploymentPlan) -> None:
    spec = GatewaySpec()
    config = build_config(tri_tier, spec, secrets_for(tri_tier, spec))
    by_name = {t.name: t for t in config.tiers}
    assert by_name["micro"].max_model_len == 16384
    assert by_name["medium"].max_model_len == 32768
    assert by_name["mini"].base_url == "http://127.0.0.1:5001"
    assert by_name["mini"].api_key == "tier-key-mini"
    assert by_name["mini"].group == by_name["micro"].group == "gpu2"
    assert by_name["medium"].group == "gpu0+1"
    assert by_name["micro"].size_bytes < by_name["mini"].size_bytes < by_name["medium"].size_bytes
    groups = {g.name: g for g in config.groups}
    assert set(groups["gpu2"].tiers) == {"mini", "micro"}
    # The cap defaults to the plan's max_num_seqs of the busiest tier on that GPU.
    assert groups["gpu2"].cap == max(by_name["mini"].max_num_seqs, by_name["micro"].max_num_seqs)


def test_network_upstream_reaches_tiers_by_service_name(tri_tier: DeploymentPlan) -> None:
    spec = GatewaySpec()
    config = build_config(tri_tier, spec, secrets_for(tri_tier, spec), upstream="network")
    assert config.tier("medium").base_url == "http://medium:8000"


def test_groups_merge_transitively(tri_tier: DeploymentPlan) -> None:
    from dataclasses import replace

    a, b, c = tri_tier.services
    services = [replace(a, gpus=(0, 1)), replace(b, gpus=(1, 2)), replace(c, gpus=(3,))]
    groups = gpu_groups(services, cap=7)
    assert [(g.name, set(g.tiers), g.cap) for g in groups] == [
        ("gpu0+1+2", {a.name, b.name}, 7),
        ("gpu3", {c.name}, 7),
    ]


def test_the_same_gpu_index_on_two_nodes_is_two_gpus(tri_tier: DeploymentPlan) -> None:
    """A several-box plan numbers GPUs per node: GPU 0 of box a and of box b are not shared."""
    from dataclasses import replace

    a, b, c = tri_tier.services
    services = [
        replace(a, gpus=(0,), node="box-a"),
        replace(b, gpus=(0,), node="box-b"),
        replace(c, gpus=(0,), node="box-b"),
    ]
    groups = gpu_groups(services, cap=3)
    assert [(g.name, set(g.tiers)) for g in groups] == [
        ("box-a/gpu0", {a.name}),
        ("box-b/gpu0", {b.name, c.name}),
    ]
    plan_b = replace(tri_tier, services=tuple(services))
    spec = GatewaySpec()
    config = build_config(plan_b, spec, secrets_for(plan_b, spec), upstream="network")
    assert config.tier(b.name).node == "box-b"
    assert config.group_of(b.name) == config.group_of(c.name) != config.group_of(a.name)


def test_section_parses_keys_limits_and_fallback() -> None:
    spec = parse_gateway_section(
        {
            "port": 19200,
            "bind": "0.0.0.0",
            "fallback": "larger",
            "keys": {
                "team-a": {"tiers": ["mini", "MICRO"], "rpm": 60, "concurrent": 4},
                "ops": {"admin": True, "api_key": "ops-key-123456"},
            },
            "limits": {"max_body_mib": 1, "first_byte_timeout_s": 30, "gpu_inflight": 16},
        },
        "p.yaml",
    )
    assert spec is not None
    assert (spec.port, spec.bind, spec.fallback) == (19200, "0.0.0.0", Fallback.LARGER)
    assert spec.keys[0] == KeySpec("team-a", ("mini", "MICRO"), 60, 4)
    assert spec.keys[1].admin and spec.keys[1].api_key == "ops-key-123456"
    assert spec.limits.max_body_bytes == 1024 * 1024
    assert spec.limits.first_byte_timeout_s == 30
    assert spec.limits.gpu_inflight == 16
    assert parse_gateway_section(None, "p.yaml") is None
    assert parse_gateway_section(True, "p.yaml") == GatewaySpec()
    assert GatewaySpec().port == DEFAULT_PORT == 19100


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"prot": 1}, "unknown key 'prot' (did you mean 'port'?)"),
        ({"port": 70000}, "gateway.port: expected an integer from 1 to 65535"),
        ({"fallback": "sideways"}, "expected one of off, larger, any"),
        ({"keys": {"a": {"rmp": 5}}}, "unknown key 'rmp' (did you mean 'rpm'?)"),
        ({"keys": {"Bad Name": {}}}, "use 1-32 lower-case letters"),
        ({"keys": {"a": {"api_key": "has space x"}}}, "keys are 8-256 characters"),
        ({"keys": {"a": {"tiers": "mini"}}}, "expected `all` or a list of tier names"),
        ({"limits": {"idle_timeout_s": 0}}, "idle_timeout_s: expected a number"),
        ("yes", "expected a mapping"),
    ],
)
def test_section_errors_name_the_key(raw: object, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_gateway_section(raw, "p.yaml")
    assert message in str(caught.value)
    assert "p.yaml: gateway" in str(caught.value)


def test_keys_are_kept_generated_or_taken_from_the_environment() -> None:
    spec = GatewaySpec(keys=(KeySpec("a"), KeySpec("b", api_key_env="MY_KEY")))
    first = resolve_gateway_keys(spec, {}, {"MY_KEY": "from-env-12345"})
    assert first["QWEN_DEPLOY_GATEWAY_KEY_B"] == "from-env-12345"
    assert len(first["QWEN_DEPLOY_GATEWAY_KEY_A"]) >= 32
    again = resolve_gateway_keys(spec, first, {"MY_KEY": "from-env-12345"})
    assert again == first
    with pytest.raises(ProfileError, match=r"\$MY_KEY is not set"):
        resolve_gateway_keys(spec, {}, {})


def test_build_config_refuses_missing_secrets_and_unknown_tiers(tri_tier: DeploymentPlan) -> None:
    spec = GatewaySpec(keys=(KeySpec("a", tiers=("mini", "8b")),))
    secrets = secrets_for(tri_tier, spec)
    config = build_config(tri_tier, spec, secrets)
    assert config.keys[0].tiers == frozenset({"mini"})
    assert config.key_for(secrets["QWEN_DEPLOY_GATEWAY_KEY_A"]) == config.keys[0]
    assert config.key_for("nope-nope-nope") is None
    with pytest.raises(ProfileError, match=r"QWEN_DEPLOY_API_KEY_MINI is not in \.env"):
        build_config(tri_tier, spec, {k: v for k, v in secrets.items() if "MINI" not in k})
    bad = GatewaySpec(keys=(KeySpec("a", tiers=("huge",)),))
    with pytest.raises(ProfileError, match="no tier 'huge'"):
        build_config(tri_tier, bad, secrets_for(tri_tier, bad))


def test_plan_json_round_trip_keeps_no_literal_secret() -> None:
    spec = GatewaySpec(keys=(KeySpec("a", api_key="literal-secret-1"), KeySpec("b", admin=True)))
    data = spec.to_dict()
    assert "literal-secret-1" not in repr(data)
    back = GatewaySpec.from_dict(data)
    assert [k.name for k in back.keys] == ["a", "b"] and back.keys[1].admin
    assert back.limits == spec.limits

"""The plan as data: JSON both ways over every shipped profile on every GPU fixture, and the
facts derived from it (tenants of a GPU, start order, URLs)."""

from __future__ import annotations

import json

import pytest

from deployer.catalog import Catalog
from deployer.endpoints import base_url_for
from deployer.errors import PlanError, ProfileError
from deployer.plan import AuthMode, DeploymentPlan, Engine, ServicePlan, plan_from_dict
from deployer.planner import PlanOptions, plan
from deployer.profiles import load_all_profiles, load_profile
from tests.helpers import GPU_FILES, inventory

BOXES = sorted(p.stem for p in GPU_FILES.glob("*.json"))
PROFILES = sorted(p.name for p in load_all_profiles())


def _plans(catalog: Catalog) -> list[DeploymentPlan]:
    out = []
    for box in BOXES:
        for name in PROFILES:
            for engine in ("vllm", "stand-in"):
                try:
                    out.append(
                        plan(
                            inventory(box), load_profile(name), catalog, PlanOptions(engine=engine)
                        )
                    )
                except (PlanError, ProfileError):
                    continue  # refusals are test_planner's business; here only plans matter
    return out


def test_every_plan_survives_json_both_ways(catalog: Catalog) -> None:
    plans = _plans(catalog)
    # Every profile fits at least one fixture box, so every profile is covered.
    assert {p.profile for p in plans} == set(PROFILES)
    assert len(plans) >= 2 * len(PROFILES)
    for original in plans:
        text = json.dumps(original.to_dict())
        back = DeploymentPlan.from_dict(json.loads(text))
        assert back == original, (original.profile, original.inventory_source)
        assert plan_from_dict(json.loads(text)) == original
        # Writing the read-back plan gives the same document, byte for byte.
        assert json.dumps(back.to_dict()) == text


def test_json_keeps_plain_strings_for_engine_and_auth(catalog: Catalog) -> None:
    result = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    assert result.engine is Engine.VLLM and result.engine == "vllm"
    data = json.loads(json.dumps(result.to_dict()))
    assert data["engine"] == "vllm"
    assert {s["auth"] for s in data["services"]} == {"key"}
    assert f"{result.engine}" == "vllm" and str(AuthMode.NONE) == "none"
    assert data["schema_version"] == 1
    assert "api_key_env" in data["services"][0] and "memory_gib" in data["services"][0]


def test_old_plan_without_auth_reads_as_key(catalog: Catalog) -> None:
    data = plan(inventory("1x-l4"), load_profile("single-gpu"), catalog).to_dict()
    del data["services"][0]["auth"]
    assert DeploymentPlan.from_dict(data).services[0].auth is AuthMode.KEY


def test_wrong_schema_version_is_refused(catalog: Catalog) -> None:
    data = plan(inventory("1x-l4"), load_profile("single-gpu"), catalog).to_dict()
    data["schema_version"] = 99
    with pytest.raises(ValueError, match="schema_version 99"):
        DeploymentPlan.from_dict(data)


def test_tenants_co_tenants_and_start_order(catalog: Catalog) -> None:
    result = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    assert result.tenants_by_gpu() == {0: ("medium",), 1: ("medium",), 2: ("mini", "micro")}
    assert result.shared_gpus() == {2: ("mini", "micro")}
    assert [s.name for s in result.services_on(2)] == ["mini", "micro"]
    assert [s.name for s in result.co_tenants("micro")] == ["mini"]
    assert result.co_tenants("medium") == ()
    after = result.starts_after("micro")
    assert after is not None and after.name == "mini"
    assert result.starts_after("mini") is None
    gpu = result.gpu(2)
    assert gpu is not None and gpu.index == 2
    assert result.gpu(7) is None


def test_base_url_is_one_rule_everywhere(catalog: Catalog) -> None:
    result = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    micro: ServicePlan = result.service("micro")
    assert micro.base_url() == base_url_for(micro) == f"http://127.0.0.1:{micro.port}"
    assert result.base_url("micro", "gpu-box.lan") == f"http://gpu-box.lan:{micro.port}"
    v6 = micro.__class__(**{**micro.__dict__, "bind": "::1"})
    assert v6.base_url() == f"http://[::1]:{micro.port}"
    wildcard = micro.__class__(**{**micro.__dict__, "bind": "0.0.0.0"})
    assert wildcard.client_host() == "127.0.0.1"

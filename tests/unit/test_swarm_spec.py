"""Swarm services from a plan, and what a node must have, without an engine (the real swarm
is in tests/integration/test_swarm.py)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from deployer.catalog import Catalog
from deployer.errors import TargetUnsupported
from deployer.plan import DeploymentPlan
from deployer.planner import PlanOptions, plan
from deployer.profiles import load_profile
from deployer.runtime.states import ActionKind
from deployer.spec import START_GATE, vllm_args
from deployer.targets.swarm import converge_actions
from deployer.targets.swarm_spec import (
    LABEL_SWARM_HASH,
    SECRET_SHIM,
    check_node,
    swarm_services,
)
from tests.helpers import inventory

NODE = "node.id==abc123"


def _plan(catalog: Catalog, bind: str = "0.0.0.0", engine: str = "vllm") -> DeploymentPlan:
    result = plan(
        inventory("3x-rtx4090"), load_profile("tri-tier"), catalog, PlanOptions(engine=engine)
    )
    return replace(result, services=tuple(replace(s, bind=bind) for s in result.services))


def _values(result: DeploymentPlan) -> dict[str, str]:
    return {s.api_key_env: f"sk-{s.name}-0123456789abcdef" for s in result.services}


def test_a_plan_bound_to_one_address_is_refused_with_the_options(catalog: Catalog) -> None:
    local = _plan(catalog, bind="127.0.0.1")
    with pytest.raises(TargetUnsupported) as caught:
        swarm_services(local, _values(local), NODE)
    text = str(caught.value)
    assert "cannot bind one address" in text and "medium (127.0.0.1:5002)" in text
    assert "bind: 0.0.0.0" in text and "--target compose" in text


def test_services_pin_the_plans_devices_and_keep_the_start_gate(catalog: Catalog) -> None:
    result = _plan(catalog)
    services = {s.tier: s for s in swarm_services(result, _values(result), NODE)}
    for tier in result.services:
        s = services[tier.name]
        assert s.args == vllm_args(tier)
        env = dict(s.env)
        assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(map(str, tier.gpus))
        assert s.constraints == (NODE,)
        assert s.shm_bytes == 2 * 2**30 * tier.tensor_parallel_size
        assert s.command[:3] == ("python3", "-c", SECRET_SHIM)
        assert s.published_port == tier.port and s.target_port == 8000
    # micro starts after mini on GPU 2: the gate waits for mini's alias on the overlay.
    assert services["micro"].command[3:6] == ("python3", "-c", START_GATE)
    assert services["micro"].command[6] == "http://mini:8000/health"
    assert services["micro"].command[-2:] == ("vllm", "serve")
    assert services["mini"].command[3:] == ("vllm", "serve")
    assert services["micro"].start_after == ("mini",)


def test_keys_travel_as_secrets_named_by_digest(catalog: Catalog) -> None:
    result = _plan(catalog)
    values = _values(result)
    services = swarm_services(result, values, NODE)
    for s in services:
        (var, name), *_ = s.secrets
        assert var == "VLLM_API_KEY" and name.startswith(f"qwen3-{s.tier}-api-key-")
        assert dict(s.env)["QWEN_DEPLOY_SECRET_FILES"] == f"VLLM_API_KEY=/run/secrets/{name}"
        assert all(key not in repr(s) for key in values.values())
    # A new key is a new secret and a new hash; HF_TOKEN is a secret outside the hash.
    mini = services[1]
    new_key = {**values, result.service("mini").api_key_env: "sk-new-key-0123456789"}
    rotated = swarm_services(result, new_key, NODE)[1]
    assert rotated.secrets != mini.secrets and rotated.config_hash() != mini.config_hash()
    with_token = swarm_services(result, {**values, "HF_TOKEN": "hf_abcdefghijkl"}, NODE)[1]
    assert ("HF_TOKEN", with_token.secrets[1][1]) in with_token.secrets
    assert with_token.config_hash() == mini.config_hash()


def _info(state: str = "active", manager: bool = True, runtime: str = "nvidia") -> dict[str, Any]:
    return {
        "Swarm": {"LocalNodeState": state, "ControlAvailable": manager, "NodeID": "abc123"},
        "DefaultRuntime": runtime,
    }


def _node(*uuids: str) -> dict[str, Any]:
    resources = [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": u}} for u in uuids]
    return {"Description": {"Resources": {"GenericResources": resources}}}


def test_node_checks_name_what_is_missing(catalog: Catalog) -> None:
    result = _plan(catalog)
    uuids = [g.uuid for g in result.gpus]
    ok = check_node(result, _info(), _node(*uuids), 'swarm-resource = "DOCKER_RESOURCE_GPU"', False)
    assert ok.problems == () and "swarm-resource is set" in ok.notes[0]
    bare = check_node(result, _info(runtime="runc"), _node(uuids[0]), None, False)
    gpus, runtime = bare.problems
    assert gpus.startswith("the node does not advertise GPU(s) 1, 2 as generic resources")
    assert '"node-generic-resources": [' + ", ".join(f'"NVIDIA-GPU={u}"' for u in uuids) in gpus
    assert "default runtime is 'runc', not 'nvidia'" in runtime
    assert "not readable here" in bare.notes[0]
    assert (
        check_node(result, _info("inactive"), {}, None, False)
        .problems[0]
        .startswith("this engine is not part of a swarm")
    )
    worker = check_node(result, _info(manager=False), _node(*uuids), "", False)
    assert worker.problems == ("this engine is a swarm worker; run qwen-deploy against a manager",)
    skipped = check_node(result, _info(runtime="runc"), {}, None, True)
    assert skipped.problems == () and "GPU checks skipped" in skipped.notes[0]


def _existing(name: str, config_hash: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, attrs={"Spec": {"Labels": {LABEL_SWARM_HASH: config_hash}}})


def test_converge_recreates_changed_tiers_and_the_co_tenants_after_them(catalog: Catalog) -> None:
    result = _plan(catalog)
    desired = swarm_services(result, _values(result), NODE)
    same = {s.tier: _existing(s.name, s.config_hash()) for s in desired}
    assert {a.kind for a in converge_actions(result, desired, same)} == {ActionKind.NOOP}
    changed = {**same, "mini": _existing("qwen3-mini", "old"), "gone": _existing("qwen3-gone", "x")}
    actions = {a.service: (a.kind, a.reason) for a in converge_actions(result, desired, changed)}
    assert actions == {
        "medium": (ActionKind.NOOP, "up to date"),
        "mini": (ActionKind.RECREATE, "configuration changed"),
        "micro": (ActionKind.RECREATE, "starts after mini"),
        "gone": (ActionKind.REMOVE, "not in the plan"),
    }
    fresh = converge_actions(result, desired, {})
    assert [a.kind for a in fresh] == [ActionKind.CREATE] * 3

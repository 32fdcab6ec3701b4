"""Swarm services from a plan (one box or several, with or without the gateway), and what the
nodes must have, without an engine (the real swarm is in tests/integration/test_swarm.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from deployer.catalog import Catalog
from deployer.errors import DeployFailed, TargetUnsupported
from deployer.gateway import images
from deployer.gateway.config import GatewaySpec, KeySpec
from deployer.gateway.spec import CONFIG_ENV
from deployer.plan import DeploymentPlan
from deployer.planner import PlanOptions, plan
from deployer.profiles import load_profile
from deployer.runtime.states import ActionKind
from deployer.spec import START_GATE, vllm_args
from deployer.targets.swarm import converge_actions
from deployer.targets.swarm_nodes import check_node, check_nodes, match_nodes
from deployer.targets.swarm_spec import (
    GATEWAY_ENTRYPOINT,
    LABEL_SWARM_HASH,
    SECRET_NAME_MAX,
    SECRET_SHIM,
    secret_payloads,
    swarm_services,
)
from tests.helpers import inventory

NODE = "node.id==abc123"
MANAGER = "node.id==manager1"
GATEWAY_KEYS = {
    "QWEN_DEPLOY_GATEWAY_KEY_DEFAULT": "gw-default-0123456789abcdef",
    "QWEN_DEPLOY_GATEWAY_KEY_ADMIN": "gw-admin-0123456789abcdef",
}


def _plan(catalog: Catalog, bind: str = "0.0.0.0", engine: str = "vllm") -> DeploymentPlan:
    result = plan(
        inventory("3x-rtx4090"), load_profile("tri-tier"), catalog, PlanOptions(engine=engine)
    )
    services = tuple(replace(s, bind=bind) for s in result.services)
    return replace(result, services=services, gateway=None)


def _with_gateway(result: DeploymentPlan, bind: str = "0.0.0.0") -> DeploymentPlan:
    keys = (KeySpec("default"), KeySpec("admin", admin=True))
    return replace(result, gateway=GatewaySpec(port=19100, bind=bind, keys=keys))


def _values(result: DeploymentPlan) -> dict[str, str]:
    tiers = {s.api_key_env: f"sk-{s.name}-0123456789abcdef" for s in result.services}
    return {**tiers, **(GATEWAY_KEYS if result.gateway else {})}


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


# --- several boxes ------------------------------------------------------------------------


def _boxes(catalog: Catalog, engine: str = "vllm") -> DeploymentPlan:
    from deployer.multibox import plan_boxes

    boxes = {"gpu-a": inventory("3x-rtx4090"), "gpu-b": inventory("3x-rtx4090")}
    result = plan_boxes(boxes, load_profile("tri-tier"), catalog, PlanOptions(engine=engine))
    services = tuple(replace(s, bind="0.0.0.0") for s in result.services)
    return replace(result, services=services, gateway=None)


def test_a_several_box_plan_pins_each_tier_to_its_node_by_host_name(catalog: Catalog) -> None:
    result = _boxes(catalog, engine="stand-in")
    assert {s.name: s.node for s in result.services} == {
        "medium": "gpu-a",
        "mini": "gpu-b",
        "micro": "gpu-b",
    }
    services = {s.tier: s for s in swarm_services(result, _values(result), NODE)}
    for tier in result.services:
        s, env = services[tier.name], dict(services[tier.name].env)
        # node.hostname, as `docker node ls` lists it; NODE (a one-box plan's) is not used.
        assert s.constraints == (f"node.hostname=={tier.node}",)
        assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(map(str, tier.gpus))
        # The stand-in's ledger knows its own node's GPUs (the plan's `gpus` is empty).
        (box,) = [n for n in result.nodes if n.name == tier.node]
        totals = ",".join(f"{g.index}:{g.memory_total_mib}" for g in box.gpus)
        assert env["STANDIN_GPU_TOTAL_MIB"] == totals != ""
    assert services["micro"].command[6] == "http://mini:8000/health"  # same node, same gate


# --- the gateway ------------------------------------------------------------------------------


def test_the_gateway_is_one_more_service_fronting_the_tiers_by_name(catalog: Catalog) -> None:
    result = _with_gateway(_plan(catalog, engine="stand-in"))
    values = _values(result)
    *tiers, gateway = swarm_services(result, values, NODE, MANAGER)
    assert [s.tier for s in tiers] == ["medium", "mini", "micro"]
    assert gateway.tier == "gateway" and gateway.name == "qwen3-gateway"
    assert gateway.image == images.image_tag("stand-in")
    assert gateway.command == ("python3", "-c", SECRET_SHIM, *GATEWAY_ENTRYPOINT)
    assert gateway.args[-2:] == ("--port", "19100")
    assert gateway.published_port == gateway.target_port == 19100
    # No GPU, no /dev/shm, on the manager `up` runs against; the tiers stay on theirs.
    env = dict(gateway.env)
    assert "NVIDIA_VISIBLE_DEVICES" not in env and gateway.shm_bytes == 0
    assert gateway.constraints == (MANAGER,) and all(t.constraints == (NODE,) for t in tiers)
    assert gateway.start_after == () and gateway.network == tiers[0].network
    config = json.loads(env[CONFIG_ENV])
    assert {t["name"]: t["base_url"] for t in config["tiers"]} == {
        "medium": "http://medium:8000",
        "mini": "http://mini:8000",
        "micro": "http://micro:8000",
    }
    # Every key it holds is a Swarm secret: the tiers' and the clients'.
    held = dict(gateway.secrets)
    assert set(held) == {
        *(s.api_key_env for s in result.services),
        *GATEWAY_KEYS,
    }
    assert env["QWEN_DEPLOY_SECRET_FILES"].count("/run/secrets/") == len(held)
    assert all(len(name) <= SECRET_NAME_MAX for name in held.values())
    assert all(value not in repr(gateway) for value in values.values())
    payloads = secret_payloads((*tiers, gateway), values)
    admin = "QWEN_DEPLOY_GATEWAY_KEY_ADMIN"
    assert payloads[held[admin]] == ("gateway", GATEWAY_KEYS[admin])
    assert payloads[held["QWEN_DEPLOY_API_KEY_MINI"]][1] == values["QWEN_DEPLOY_API_KEY_MINI"]
    # A new client key is a new secret and a new gateway; the tiers keep theirs.
    rotated = {**values, "QWEN_DEPLOY_GATEWAY_KEY_DEFAULT": "gw-new-0123456789abcdef"}
    *same, new_gateway = swarm_services(result, rotated, NODE, MANAGER)
    assert new_gateway.config_hash() != gateway.config_hash()
    assert [s.config_hash() for s in same] == [s.config_hash() for s in tiers]


def test_a_gateway_bound_to_one_address_or_without_its_keys_is_refused(catalog: Catalog) -> None:
    local = _with_gateway(_plan(catalog), bind="127.0.0.1")
    with pytest.raises(TargetUnsupported) as caught:
        swarm_services(local, _values(local), NODE)
    assert "gateway (127.0.0.1:19100)" in str(caught.value)
    assert "medium" not in str(caught.value).split("; the plan binds")[1]
    result = _with_gateway(_plan(catalog))
    missing = {k: v for k, v in _values(result).items() if k != "QWEN_DEPLOY_GATEWAY_KEY_ADMIN"}
    with pytest.raises(ValueError, match="QWEN_DEPLOY_GATEWAY_KEY_ADMIN"):
        swarm_services(result, missing, NODE)


def test_long_deployment_names_keep_secret_names_within_dockers_limit(catalog: Catalog) -> None:
    result = _with_gateway(replace(_plan(catalog), deployment="d" * 60))
    for service in swarm_services(result, _values(result), NODE):
        for _, name in service.secrets:
            assert len(name) <= SECRET_NAME_MAX and name[-13] == "-"


def _swarm_node(
    node_id: str, hostname: str, *uuids: str, availability: str = "active"
) -> dict[str, Any]:
    attrs = _node(*uuids)
    attrs["Description"]["Hostname"] = hostname
    spec = {"Availability": availability}
    return {"ID": node_id, "Status": {"State": "ready"}, "Spec": spec, **attrs}


def test_a_plans_node_is_matched_by_host_name_or_refused_in_one_line(catalog: Catalog) -> None:
    result = _boxes(catalog)
    nodes = [_swarm_node("abc123", "GPU-A"), _swarm_node("def456", "gpu-b")]
    matched = match_nodes(result, nodes)  # Swarm compares host names ignoring case
    assert {name: attrs["ID"] for name, attrs in matched.items()} == {
        "gpu-a": "abc123",
        "gpu-b": "def456",
    }
    with pytest.raises(DeployFailed) as missing:
        match_nodes(result, nodes[:1])
    assert str(missing.value.message) == (
        "the plan places mini and micro on node gpu-b, which is not in this swarm "
        "(its nodes: GPU-A)"
    )
    assert "docker node ls" in (missing.value.hint or "") and "\n" not in str(missing.value)
    with pytest.raises(DeployFailed, match="2 nodes of this swarm have the host name gpu-b"):
        match_nodes(result, [*nodes, _swarm_node("zzz999", "gpu-b")])


def test_each_node_is_checked_for_its_own_gpus(catalog: Catalog) -> None:
    result = _boxes(catalog)
    box = {n.name: n for n in result.nodes}
    a_uuids = [g.uuid for g in box["gpu-a"].gpus]
    b_uuids = [g.uuid for g in box["gpu-b"].gpus]
    good = {
        "gpu-a": _swarm_node("abc123", "gpu-a", *a_uuids),  # this engine (see _info)
        "gpu-b": _swarm_node("def456", "gpu-b", *b_uuids),
    }
    ok = check_nodes(result, _info(), good, "", False)
    assert ok.problems == ()
    assert any("node gpu-b: its default runtime is not visible" in n for n in ok.notes)
    bad = {
        "gpu-a": _swarm_node("abc123", "gpu-a", *a_uuids),
        "gpu-b": _swarm_node("def456", "gpu-b", availability="drain"),
    }
    runtime, drained, gpus = check_nodes(result, _info(runtime="runc"), bad, None, False).problems
    assert runtime.startswith("node gpu-a's default runtime is 'runc'")
    assert drained.startswith("node gpu-b is drain: Swarm places no task there")
    assert gpus.startswith("node gpu-b does not advertise GPU(s) 2 as generic resources")
    assert f'"NVIDIA-GPU={b_uuids[0]}"' in gpus and a_uuids[0] not in gpus
    skipped = check_nodes(result, _info(runtime="runc"), bad, None, True)
    assert skipped.problems == (drained,)  # --skip-gpu-check keeps the placement checks

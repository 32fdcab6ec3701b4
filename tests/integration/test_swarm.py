"""`up --target swarm` on this machine's engine: a one-node swarm (created here when the engine
is in none, and left again afterwards), tri-tier with the vLLM stand-in deployed as Swarm
services, answering on its ports, verified, restarted in order, converged, then removed.

The stand-in engine has a no-op NVIDIA hook and no GPU generic resources, so `up` runs with
--skip-gpu-check; the test checks that without it the same `up` names what the node lacks."""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from deployer.errors import ExitCode
from tests.helpers.deployments import KEYS, Deployment, free_ports

pytestmark = pytest.mark.integration
LABEL = "io.qwen-deploy.deployment"
TIERS = ("medium", "mini", "micro")
MODELS = {
    "medium": "Qwen/Qwen3-32B-AWQ",
    "mini": "Qwen/Qwen3-8B-AWQ",
    "micro": "Qwen/Qwen3-1.7B-FP8",
}


@pytest.fixture(scope="module")
def swarm(engine: Any) -> Iterator[Any]:
    """This engine as a swarm manager; a swarm this test created is left at the end, with the
    bridge Docker made for it (nothing else of the engine is touched)."""
    state = engine.info()["Swarm"]["LocalNodeState"]
    had_bridge = bool(engine.networks.list(names=["docker_gwbridge"]))
    created = state == "inactive"
    if created:
        engine.swarm.init(advertise_addr="127.0.0.1")
    elif state != "active":
        pytest.fail(f"the engine's swarm is {state!r}; this test needs an active one or none")
    yield engine
    if created:
        engine.swarm.leave(force=True)
        if not had_bridge:
            for network in engine.networks.list(names=["docker_gwbridge"]):
                with contextlib.suppress(Exception):
                    network.remove()


@pytest.fixture
def swarm_deployment(swarm: Any, tmp_path: Path) -> Iterator[Deployment]:
    name = f"sw-{uuid.uuid4().hex[:8]}"
    ports = dict(zip(TIERS, free_ports(3), strict=True))
    deployment = Deployment(name, tmp_path / "home", swarm, ports, random.randrange(1000, 1021, 3))
    # Swarm publishes ports on every interface: the profile has to say so.
    deployment.write_profile(**{t: {"bind": "0.0.0.0"} for t in TIERS})
    yield deployment
    # Cleanup with the SDK directly, not with the code under test.
    for service in swarm.services.list(filters={"label": f"{LABEL}={name}"}):
        with contextlib.suppress(Exception):
            service.remove()
    for secret in swarm.secrets.list(filters={"label": f"{LABEL}={name}"}):
        with contextlib.suppress(Exception):
            secret.remove()
    for network in swarm.networks.list(filters={"label": f"{LABEL}={name}"}):
        with contextlib.suppress(Exception):
            network.remove()


def _services(engine: Any, name: str) -> dict[str, Any]:
    found = engine.services.list(filters={"label": f"{LABEL}={name}"})
    return {s.attrs["Spec"]["Labels"]["io.qwen-deploy.tier"]: s for s in found}


def _models(port: int, key: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.get(f"http://127.0.0.1:{port}/v1/models", headers=headers, timeout=10)


def _task_created(service: Any) -> list[str]:
    service.reload()
    return sorted(t["CreatedAt"] for t in service.tasks())


def test_tri_tier_on_a_swarm_deployed_verified_restarted_and_removed(
    swarm_deployment: Deployment,
) -> None:
    d, engine = swarm_deployment, swarm_deployment.engine
    result = d.up("--target", "swarm", "--skip-gpu-check")
    assert result.exit_code == 0, result.output
    assert "3/3 services ready" in result.stdout and "checks passed" in result.stdout
    assert json.loads((d.home / d.name / "target.json").read_text())["target"] == "swarm"

    services = _services(engine, d.name)
    assert set(services) == set(TIERS)
    node = engine.info()["Swarm"]["NodeID"]
    for tier, service in services.items():
        spec = service.attrs["Spec"]
        container = spec["TaskTemplate"]["ContainerSpec"]
        env = dict(e.split("=", 1) for e in container["Env"])
        assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(d.gpu_ids[tier])
        assert spec["TaskTemplate"]["Placement"]["Constraints"] == [f"node.id=={node}"]
        shm = [m for m in container["Mounts"] if m["Target"] == "/dev/shm"]
        assert shm and shm[0]["Type"] == "tmpfs"
        (secret,) = container["Secrets"]  # the stand-in's run has no HF_TOKEN
        assert secret["SecretName"].startswith(f"{d.name}-{tier}-api-key-")
        # The key reaches the engine only as a Swarm secret, never in the service spec.
        assert KEYS[tier] not in json.dumps(spec)
        ok = _models(d.ports[tier], KEYS[tier])
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODELS[tier]
        assert _models(d.ports[tier], None).status_code == 401

    status = d.cli("status", "--json")
    assert status.exit_code == 0, status.output
    rows = {r["service"]: r for r in json.loads(status.stdout)["services"]}
    assert {t: (rows[t]["state"], rows[t]["health"]) for t in TIERS} == {
        t: ("running", "healthy") for t in TIERS
    }
    logs = d.cli("logs", "mini", "--tail", "200")
    assert logs.exit_code == 0 and "Application startup complete" in logs.stdout
    assert d.cli("verify").exit_code == 0

    # Restarting mini restarts micro after it (they share a GPU), never medium.
    before = {t: _task_created(services[t]) for t in TIERS}
    restart = d.cli("restart", "mini")
    assert restart.exit_code == 0, restart.output
    after = {t: _task_created(services[t]) for t in TIERS}
    assert after["medium"] == before["medium"]
    assert len(after["mini"]) == 2 and len(after["micro"]) == 2
    assert after["micro"][-1] > after["mini"][-1]  # micro's new task came once mini was back

    again = d.up("--target", "swarm", "--skip-gpu-check")
    assert again.exit_code == 0, again.output
    assert {t: _task_created(services[t]) for t in TIERS} == after  # nothing recreated

    down = d.cli("down")
    assert down.exit_code == 0, down.output
    assert _services(engine, d.name) == {}
    assert not engine.secrets.list(filters={"label": f"{LABEL}={d.name}"})
    assert not engine.networks.list(filters={"label": f"{LABEL}={d.name}"})
    with pytest.raises(requests.ConnectionError):
        _models(d.ports["micro"], KEYS["micro"])


def test_what_swarm_cannot_do_is_refused_before_anything_is_created(
    swarm_deployment: Deployment,
) -> None:
    d, engine = swarm_deployment, swarm_deployment.engine
    # Without --skip-gpu-check the node must advertise the plan's GPUs and run nvidia.
    result = d.up("--target", "swarm")
    assert result.exit_code == ExitCode.DEPLOY, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: the swarm cannot run this plan: the node does not advertise")
    assert '"node-generic-resources": ["NVIDIA-GPU=GPU-' in line and "default runtime" in line
    # A profile that binds 127.0.0.1 cannot be said to Swarm.
    d.write_profile()
    refused = d.up("--target", "swarm", "--skip-gpu-check")
    assert refused.exit_code == ExitCode.PLAN
    assert "cannot bind one address" in refused.output and "--target compose" in refused.output
    assert _services(engine, d.name) == {}
    assert not (d.home / d.name / "target.json").exists()


def test_a_tier_that_fails_stays_down_with_its_logs_and_its_co_tenant_is_not_created(
    swarm_deployment: Deployment,
) -> None:
    d, engine = swarm_deployment, swarm_deployment.engine
    d.write_profile(
        medium={"bind": "0.0.0.0"},
        mini={"bind": "0.0.0.0", "environment": {"STANDIN_FAULT": "oom_on_start"}},
        micro={"bind": "0.0.0.0"},
    )
    result = d.up("--target", "swarm", "--skip-gpu-check")
    assert result.exit_code == ExitCode.DEPLOY, result.output
    assert "mini did not become ready" in result.output
    services = _services(engine, d.name)
    assert set(services) == {"medium", "mini"}  # micro starts after mini: never created
    # No crash loop next to a healthy co-tenant: the failed tier is scaled to 0 and kept.
    assert services["mini"].attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
    assert _models(d.ports["medium"], KEYS["medium"]).status_code == 200
    logs = d.cli("logs", "mini")
    assert "CUDA out of memory" in logs.stdout
    status = json.loads(d.cli("status", "--json").stdout)
    rows = {r["service"]: r for r in status["services"]}
    assert rows["micro"]["state"] == "missing" and rows["medium"]["state"] == "running"
    assert d.cli("down").exit_code == 0
    assert _services(engine, d.name) == {}


def _request(d: Deployment, *boxes: str) -> Any:
    """`up`'s request for a plan over the named boxes, each with this test's inventory."""
    from deployer.catalog import load_catalog
    from deployer.deployment import DeploymentDir
    from deployer.gpus import load_inventory_file
    from deployer.multibox import plan_boxes
    from deployer.planner import PlanOptions
    from deployer.profiles import load_profile_file
    from deployer.runtime.operations import UpRequest

    profile = load_profile_file(d.profile)
    options = PlanOptions(deployment=d.name, engine="stand-in")
    inventories = {box: load_inventory_file(d.gpus_file) for box in boxes}
    plan = plan_boxes(inventories, profile, load_catalog(), options)
    return UpRequest(DeploymentDir.named(d.home, d.name), profile, plan, environ={}, poll_s=0.5)


def test_a_several_box_plan_runs_on_the_node_it_names_and_a_missing_node_is_refused(
    swarm_deployment: Deployment,
) -> None:
    from deployer.errors import DeployFailed
    from deployer.targets import swarm as swarm_target

    d, engine = swarm_deployment, swarm_deployment.engine
    here = engine.nodes.get(engine.info()["Swarm"]["NodeID"]).attrs["Description"]["Hostname"]
    # medium on this node, mini and micro on a node the swarm does not have.
    absent = _request(d, here, "gpu-box-absent")
    assert {s.name: s.node for s in absent.plan.services} == {
        "medium": here,
        "mini": "gpu-box-absent",
        "micro": "gpu-box-absent",
    }
    with pytest.raises(DeployFailed) as refused:
        swarm_target.up(engine, absent, skip_gpu_check=True)
    assert refused.value.message == (
        "the plan places mini and micro on node gpu-box-absent, which is not in this swarm "
        f"(its nodes: {here})"
    )
    assert _services(engine, d.name) == {}
    assert not engine.secrets.list(filters={"label": f"{LABEL}={d.name}"})
    assert not engine.networks.list(filters={"label": f"{LABEL}={d.name}"})
    assert not (d.home / d.name / "target.json").exists()

    # Every tier on this node, named by its host name (as `docker node ls` shows it).
    request = _request(d, here)
    assert {s.node for s in request.plan.services} == {here} and request.plan.gpus == ()
    result = swarm_target.up(engine, request, skip_gpu_check=True)
    assert result.result.ok, result.result
    services = _services(engine, d.name)
    assert set(services) == set(TIERS)
    for tier, service in services.items():
        spec = service.attrs["Spec"]
        assert spec["TaskTemplate"]["Placement"]["Constraints"] == [f"node.hostname=={here}"]
        env = dict(e.split("=", 1) for e in spec["TaskTemplate"]["ContainerSpec"]["Env"])
        assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(d.gpu_ids[tier])
        # The stand-in's ledger has this node's GPUs, numbered as in its inventory.
        assert env["STANDIN_GPU_TOTAL_MIB"].startswith(f"{d.first_gpu}:")
        ok = _models(d.ports[tier], KEYS[tier])
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODELS[tier]
    recorded = json.loads((d.home / d.name / "target.json").read_text())
    assert recorded["nodes"] == {here: engine.info()["Swarm"]["NodeID"]}
    status = json.loads(d.cli("status", "--json").stdout)
    assert {r["service"]: r["state"] for r in status["services"]} == dict.fromkeys(TIERS, "running")
    assert d.cli("down").exit_code == 0
    assert _services(engine, d.name) == {}


def test_tri_tier_with_the_gateway_answers_through_its_port_then_is_removed(
    swarm_deployment: Deployment,
) -> None:
    import yaml

    from tests.helpers.deployments import tri_tier_profile

    d, engine = swarm_deployment, swarm_deployment.engine
    (gateway_port,) = free_ports(1)
    data = tri_tier_profile(d.ports, d.first_gpu, **{t: {"bind": "0.0.0.0"} for t in TIERS})
    data["gateway"] = {"port": gateway_port, "bind": "0.0.0.0"}
    d.profile.write_text(yaml.safe_dump(data, sort_keys=False))
    result = d.up("--target", "swarm", "--skip-gpu-check")
    assert result.exit_code == 0, result.output
    assert "checks passed" in result.stdout  # verify checks the gateway like a tier

    services = _services(engine, d.name)
    assert set(services) == {*TIERS, "gateway"}
    spec = services["gateway"].attrs["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Image"].startswith("qwen-deploy/gateway:standin-")
    secrets = {s["SecretName"] for s in container["Secrets"]}
    assert len(secrets) == len(TIERS) + 2  # the tiers' keys and the default and admin keys
    env_file = (d.home / d.name / ".env").read_text()
    keys = dict(line.split("=", 1) for line in env_file.splitlines() if "=" in line)
    client_key = keys["QWEN_DEPLOY_GATEWAY_KEY_DEFAULT"]
    assert client_key not in json.dumps(spec) and KEYS["mini"] not in json.dumps(spec)

    url = f"http://127.0.0.1:{gateway_port}"
    answer = requests.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {client_key}"},
        json={"model": "MINI", "messages": [{"role": "user", "content": "salut"}], "max_tokens": 8},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-qwen-deploy-tier"] == "mini"
    assert answer.json()["model"] == MODELS["mini"]
    assert requests.get(url + "/v1/models", timeout=10).status_code == 401

    rows = {r["service"]: r for r in json.loads(d.cli("status", "--json").stdout)["services"]}
    assert rows["gateway"]["state"] == "running" and rows["gateway"]["in_plan"] is True
    restarted = d.cli("restart", "gateway")
    assert restarted.exit_code == 0, restarted.output
    again = d.up("--target", "swarm", "--skip-gpu-check", "--no-verify")
    assert again.exit_code == 0, again.output
    assert len(_task_created(services["gateway"])) == 2  # kept: only the restart replaced it

    assert d.cli("down").exit_code == 0
    assert _services(engine, d.name) == {}
    assert not engine.secrets.list(filters={"label": f"{LABEL}={d.name}"})
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/health", timeout=5)

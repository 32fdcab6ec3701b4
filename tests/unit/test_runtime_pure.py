"""The pure parts of deployer.runtime: convergence decisions, the memory re-check, status rows."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

import pytest

from deployer.catalog import Catalog
from deployer.gpus import Gpu, GpuInventory, GpuProcess
from deployer.planner import DeploymentPlan, PlanOptions, plan
from deployer.profiles import load_profile
from deployer.runtime.convergence import converge_actions
from deployer.runtime.observed import Observed
from deployer.runtime.preflight import memory_shortfall
from deployer.runtime.status import parse_docker_time, status_summary
from deployer.spec import LABEL_CONFIG_HASH, ContainerSpec, container_specs
from tests.helpers import inventory

DIR = "/srv/qwen-deploy/t"


@pytest.fixture
def tri_tier(catalog: Catalog) -> DeploymentPlan:
    box = inventory("3x-rtx4090")
    return plan(box, load_profile("tri-tier"), catalog, PlanOptions(deployment="t"))


def keys(p: DeploymentPlan) -> dict[str, str]:
    return {s.api_key_env: f"key-of-{s.name}" for s in p.services}


def running(spec: ContainerSpec, env: dict[str, str], **state: Any) -> Observed:
    """What the engine would report for a container created from `spec`."""
    labels = {**dict(spec.labels), LABEL_CONFIG_HASH: spec.config_hash(env)}
    attrs = {
        "Id": f"id-{spec.service}",
        "Name": f"/{spec.container_name}",
        "Config": {"Labels": labels, "Image": spec.image},
        "State": {"Status": "running", "ExitCode": 0, "StartedAt": "2030-01-01T00:00:00Z"} | state,
        "HostConfig": {"RestartPolicy": {"Name": "always"}},
        "RestartCount": 0,
    }
    return Observed.from_attrs(attrs)


def kinds(actions: Any) -> dict[str, str]:
    return {a.service: a.kind for a in actions}


def test_nothing_there_creates_everything(tri_tier: DeploymentPlan) -> None:
    specs = container_specs(tri_tier, DIR)
    actions = converge_actions(tri_tier, specs, keys(tri_tier), [])
    assert [(a.service, a.kind) for a in actions] == [
        ("medium", "create"),
        ("mini", "create"),
        ("micro", "create"),
    ]


def test_same_plan_twice_is_all_noop(tri_tier: DeploymentPlan) -> None:
    env = keys(tri_tier)
    specs = container_specs(tri_tier, DIR)
    observed = [running(s, env) for s in specs]
    assert kinds(converge_actions(tri_tier, specs, env, observed)) == {
        "medium": "noop",
        "mini": "noop",
        "micro": "noop",
    }


def test_deployment_dir_is_not_part_of_the_hash(tri_tier: DeploymentPlan) -> None:
    env = keys(tri_tier)
    observed = [running(s, env) for s in container_specs(tri_tier, "/elsewhere")]
    specs = container_specs(tri_tier, DIR)
    assert set(kinds(converge_actions(tri_tier, specs, env, observed)).values()) == {"noop"}


def test_a_moved_image_tag_recreates_its_containers(tri_tier: DeploymentPlan) -> None:
    env = keys(tri_tier)
    specs = container_specs(tri_tier, DIR)
    observed = [dataclasses.replace(running(s, env), image_id="sha256:old") for s in specs]
    same = converge_actions(tri_tier, specs, env, observed, {tri_tier.image: "sha256:old"})
    assert set(kinds(same).values()) == {"noop"}
    moved = converge_actions(tri_tier, specs, env, observed, {tri_tier.image: "sha256:new"})
    assert set(kinds(moved).values()) == {"recreate"}
    assert all(a.reason == f"image {tri_tier.image} was updated" for a in moved)
    # An image that is not here (to be pulled) says nothing about what the container runs.
    assert set(kinds(converge_actions(tri_tier, specs, env, observed, {})).values()) == {"noop"}


def test_changed_context_recreates_only_that_service(tri_tier: DeploymentPlan) -> None:
    env = keys(tri_tier)
    before = container_specs(tri_tier, DIR)
    observed = [running(s, env) for s in before]
    changed = dataclasses.replace(
        tri_tier,
        services=tuple(
            dataclasses.replace(s, max_model_len=8192) if s.name == "micro" else s
            for s in tri_tier.services
        ),
    )
    actions = converge_actions(changed, container_specs(changed, DIR), env, observed)
    assert kinds(actions) == {"medium": "noop", "mini": "noop", "micro": "recreate"}
    micro = next(a for a in actions if a.service == "micro")
    assert micro.reason == "max-model-len 16384 -> 8192"
    assert micro.container == "t-micro-1"


def test_memory_change_restarts_the_gpu_neighbours_that_start_after(
    tri_tier: DeploymentPlan,
) -> None:
    env = keys(tri_tier)
    observed = [running(s, env) for s in container_specs(tri_tier, DIR)]
    changed = dataclasses.replace(
        tri_tier,
        services=tuple(
            dataclasses.replace(s, gpu_memory_utilization=0.6) if s.name == "mini" else s
            for s in tri_tier.services
        ),
    )
    actions = converge_actions(changed, container_specs(changed, DIR), env, observed)
    assert kinds(actions) == {"medium": "noop", "mini": "recreate", "micro": "restart"}
    micro = next(a for a in actions if a.service == "micro")
    assert "mini" in micro.reason


def test_a_new_key_recreates_that_service(tri_tier: DeploymentPlan) -> None:
    env = keys(tri_tier)
    observed = [running(s, env) for s in container_specs(tri_tier, DIR)]
    env2 = {**env, tri_tier.service("medium").api_key_env: "another-key-123"}
    actions = converge_actions(tri_tier, container_specs(tri_tier, DIR), env2, observed)
    assert kinds(actions) == {"medium": "recreate", "mini": "noop", "micro": "noop"}
    assert "keys" in actions[0].reason


def test_stopped_and_crash_looping_containers(tri_tier: DeploymentPlan) -> None:
    env = keys(tri_tier)
    specs = container_specs(tri_tier, DIR)
    observed = [
        running(specs[0], env, Status="exited", ExitCode=137),
        running(specs[1], env, Status="restarting"),
        running(specs[2], env, Status="dead"),
    ]
    actions = converge_actions(tri_tier, specs, env, observed)
    assert [(a.kind, a.reason) for a in actions] == [
        ("start", "exited (exit code 137)"),
        ("restart", "crash-looping"),
        ("recreate", "container dead"),
    ]


def test_services_no_longer_planned_are_removed(tri_tier: DeploymentPlan) -> None:
    env = keys(tri_tier)
    specs = container_specs(tri_tier, DIR)
    observed = [running(s, env) for s in specs]
    smaller = dataclasses.replace(tri_tier, services=tri_tier.services[:2])
    actions = converge_actions(smaller, container_specs(smaller, DIR), env, observed)
    assert [(a.service, a.kind) for a in actions] == [
        ("medium", "noop"),
        ("mini", "noop"),
        ("micro", "remove"),
    ]


def _gpu(index: int, total_mib: int, used_mib: int, procs: tuple[GpuProcess, ...] = ()) -> Gpu:
    return Gpu(index, f"GPU-{index}", "NVIDIA GeForce RTX 4090", total_mib, used_mib, "8.9",
               processes=procs)  # fmt: skip


def test_memory_shortfall_names_the_numbers(tri_tier: DeploymentPlan) -> None:
    # gpu_memory_utilization 0.641 of GPU 2 (memory model v2, issue 11: 0.661 before, when the
    # fraction was of NVML's total and the margin was one per GPU instead of one per process)
    mini = tri_tier.service("mini")
    free = GpuInventory("550", "12.4", (_gpu(0, 24564, 0), _gpu(1, 24564, 0), _gpu(2, 24564, 0)))
    assert memory_shortfall(mini, free) is None
    busy = GpuInventory(
        "550",
        "12.4",
        (_gpu(2, 24564, 12288, (GpuProcess(4242, "python", 12288),)),),
    )
    problem = memory_shortfall(mini, busy)
    assert problem is not None
    assert "GPU 2 has 12.0 GiB free of 24.0 GiB" in problem
    # The ask is the fraction of CUDA's total (NVML's less the reserved memory), the planner's
    # rule (planner.requested_bytes / usable_room_bytes), so 15.2 GiB rather than 15.4.
    assert "mini asks 15.2 GiB (gpu_memory_utilization 0.641)" in problem
    assert "python[4242] 12.0 GiB" in problem


def test_memory_shortfall_for_a_gpu_nvml_does_not_see(tri_tier: DeploymentPlan) -> None:
    medium = tri_tier.service("medium")
    one = GpuInventory("550", "12.4", (_gpu(0, 24564, 0),))
    assert memory_shortfall(medium, one) == "GPU 1 is not there (NVML sees 0)"


def test_docker_times() -> None:
    assert parse_docker_time("2024-05-01T12:00:00.123456789Z") == datetime(
        2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc
    )
    assert parse_docker_time("2024-05-01T14:00:00+02:00") == datetime(
        2024, 5, 1, 12, 0, tzinfo=timezone.utc
    )
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time(None) is None


def test_status_summary() -> None:
    from deployer.runtime.status import ServiceStatus

    def row(name: str, state: str, health: str, **kw: Any) -> ServiceStatus:
        base = dict(
            service=name, model="m", gpus="0", port=1, state=state, health=health,
            uptime_s=None, restart_count=0, exit_code=None, container=None, in_plan=True,
            up_to_date=True, verify=None,
        )  # fmt: skip
        return ServiceStatus(**(base | kw))  # type: ignore[arg-type]

    rows = [
        row("a", "running", "healthy"),
        row("b", "exited", "unhealthy", exit_code=1),
        row("c", "missing", "-"),
        row("d", "running", "starting", up_to_date=False),
        row("old", "running", "healthy", in_plan=False),
    ]
    assert status_summary("t", rows) == (
        "t: 2/4 running, 1 healthy, 1 exited, 1 missing, changed since started: d "
        "(run `qwen-deploy up`), not in the plan: old"
    )


def test_foreign_containers_are_their_own_rows_and_never_not_in_the_plan() -> None:
    from deployer.runtime.status import foreign_rows

    attrs = {
        "Id": "f1",
        "Name": "/t-db-1",
        "Config": {
            "Labels": {"com.docker.compose.project": "t", "com.docker.compose.service": "db"}
        },
        "State": {"Status": "running", "StartedAt": "2030-01-01T00:00:00Z"},
    }
    now = datetime(2030, 1, 1, 0, 1, tzinfo=timezone.utc)
    [row] = foreign_rows([Observed.from_attrs(attrs)], now)
    assert (row.service, row.foreign, row.in_plan, row.container) == ("db", True, False, "t-db-1")
    assert row.to_dict()["foreign"] is True
    assert status_summary("t", [row]) == (
        "t: 0/0 running, 0 healthy, foreign: db (another compose project's, left alone)"
    )


def test_startup_figures_are_recorded_beside_the_plan_and_dropped_when_a_start_has_none(
    tri_tier: DeploymentPlan, tmp_path: Any
) -> None:
    from deployer.deployment import DeploymentDir
    from deployer.runtime.results import ApplyResult, ServiceOutcome
    from deployer.runtime.startup_record import record_startup, startup_comparisons
    from deployer.runtime.states import ActionKind, Stage
    from deployer.startup_check import StartupFigures, predicted

    directory = DeploymentDir.named(tmp_path / "home", "t")
    mini = tri_tier.service("mini")
    off = StartupFigures(1.0, predicted(mini).available_kv_cache_gib * 0.9, 1000, 2.0)

    def result(**started: StartupFigures | None) -> ApplyResult:
        outcomes = tuple(
            ServiceOutcome(name, ActionKind.CREATE, True, Stage.HEALTHY, startup=figures)
            for name, figures in started.items()
        )
        return ApplyResult("t", (), outcomes, 1.0)

    assert record_startup(
        directory, tri_tier, result(mini=off, micro=predicted(tri_tier.service("micro")))
    )
    state = directory.load_state()
    assert state["startup_figures"]["mini"]["available_kv_cache_gib"] == off.available_kv_cache_gib
    [kv] = [
        f
        for f in state["startup_vs_plan"]["mini"]["figures"]
        if f["figure"] == "available_kv_cache_gib"
    ]
    assert kv["diff_percent"] == -10.0 and kv["warn"] is True
    by_service = {c.service: c for c in startup_comparisons(tri_tier, state)}
    assert set(by_service) == {"mini", "micro"}
    assert not by_service["micro"].warnings and by_service["mini"].warnings
    # Kept running (None): nothing to record; started again without figures: the old go.
    assert not record_startup(directory, tri_tier, result(mini=None))
    assert record_startup(directory, tri_tier, result(mini=StartupFigures()))
    assert set(directory.load_state()["startup_figures"]) == {"micro"}

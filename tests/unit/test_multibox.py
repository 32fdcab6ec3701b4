"""Plans over several boxes (issue 13, "Several boxes"): one inventory per node, the same memory
model per node, tensor parallelism within a node, co-tenants together, a per-node ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from deployer.catalog import Catalog
from deployer.cli.main import cli
from deployer.errors import ExitCode, PlanError
from deployer.multibox import plan_boxes
from deployer.plan import DeploymentPlan
from deployer.planner import plan
from deployer.profiles import load_profile, parse_profile
from tests.helpers import GPU_FILES, inventory


def _profile(services: dict, name: str = "boxes") -> object:
    return parse_profile({"name": name, "services": services}, f"<{name}>")


def test_tri_tier_on_two_boxes_keeps_co_tenants_together(catalog: Catalog) -> None:
    boxes = {"gpu-a": inventory("3x-rtx4090"), "gpu-b": inventory("3x-rtx4090")}
    result = plan_boxes(boxes, load_profile("tri-tier"), catalog)
    node = {s.name: s.node for s in result.services}
    # medium takes GPUs 0-1 of the first box; mini and micro share GPU 2, on the box with the
    # most untouched GPUs left.
    assert node == {"medium": "gpu-a", "mini": "gpu-b", "micro": "gpu-b"}
    assert result.node_names() == ("gpu-a", "gpu-b") and result.gpus == ()
    assert result.service("micro").start_after == ("mini",)
    assert result.start_waves == (("medium", "mini"), ("micro",))
    # Each node is planned by the one-box planner: the same numbers as on one box.
    one = plan(inventory("3x-rtx4090"), load_profile("tri-tier"), catalog)
    assert [s.kv_cache_tokens for s in result.services] == [s.kv_cache_tokens for s in one.services]
    assert [s.name for s in result.co_tenants("mini")] == ["micro"]
    assert all(w.startswith("node gpu-b: ") for w in result.warnings)


def test_the_ledger_adds_up_per_node_and_gpu(catalog: Catalog) -> None:
    boxes = {"a": inventory("3x-rtx4090"), "b": inventory("3x-rtx4090")}
    result = plan_boxes(boxes, load_profile("tri-tier"), catalog)
    rows = {(r.node, r.index): r for r in result.ledger()}
    assert set(rows) == {("a", 0), ("a", 1), ("b", 2)}
    shared = rows["b", 2]
    assert [name for name, _ in shared.asks] == ["mini", "micro"]
    assert shared.spare == shared.free - sum(size for _, size in shared.asks) > 0
    gpu = result.gpu(2, "b")
    assert gpu is not None and result.gpu(2, "a") is None


def test_json_both_ways_keeps_nodes(catalog: Catalog) -> None:
    boxes = {"a": inventory("8x-h100"), "b": inventory("3x-rtx4090")}
    result = plan_boxes(boxes, load_profile("dual-gpu"), catalog)
    back = DeploymentPlan.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back == result
    assert {n.name for n in back.nodes} == {s.node for s in back.services}


def test_tensor_parallelism_never_spans_nodes(catalog: Catalog) -> None:
    services = {"big": {"model": "Qwen/Qwen3-32B-AWQ", "gpus": "auto", "gpu_count": 4,
                        "port": 6001}}  # fmt: skip
    boxes = {"a": inventory("3x-rtx4090"), "b": inventory("3x-rtx4090")}
    with pytest.raises(PlanError) as err:
        plan_boxes(boxes, _profile(services), catalog)
    assert "big fit on no node (tensor parallelism stays within one node)" in err.value.message
    assert "a: services.big needs 4 GPUs; this box has 3" in err.value.message


def test_auto_services_spread_over_boxes(catalog: Catalog) -> None:
    services = {f"s{i}": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": "auto", "port": 6000 + i}
                for i in range(3)}  # fmt: skip
    boxes = {f"n{i}": inventory("1x-l4") for i in range(3)}
    result = plan_boxes(boxes, _profile(services), catalog)
    assert sorted(s.node or "" for s in result.services) == ["n0", "n1", "n2"]
    assert result.start_waves == (("s0", "s1", "s2"),)


def test_explicit_gpus_of_two_groups_never_meet_on_one_node(catalog: Catalog) -> None:
    services = {
        "a": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 6001},
        "b": {"model": "Qwen/Qwen3-8B-AWQ", "gpus": [0], "port": 6002},
    }
    boxes = {"x": inventory("8x-h100"), "y": inventory("1x-l4")}
    result = plan_boxes(boxes, _profile(services), catalog)
    # One profile, two services on "GPU 0": that is two co-tenants on one box, but two boxes
    # let each have its own GPU 0... only if the profile did not share them: here it did.
    assert {s.node for s in result.services} == {"x"}
    assert result.service("b").start_after == ("a",)


def test_a_bad_node_name_is_refused(catalog: Catalog) -> None:
    with pytest.raises(PlanError, match="node name 'bad name' is not a host name"):
        plan_boxes({"bad name": inventory("1x-l4")}, load_profile("single-gpu"), catalog)


def _cli(tmp_path: Path, *args: str) -> object:
    return CliRunner().invoke(cli, ["--home", str(tmp_path), *args], catch_exceptions=False)


def test_cli_plans_several_boxes_and_prints_the_ledger(tmp_path: Path) -> None:
    a = b = GPU_FILES / "3x-rtx4090.json"
    result = _cli(tmp_path, "plan", "-p", "tri-tier", "--gpus-file", f"a={a}", "--gpus-file",
                  f"b={b}")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "on 2 node(s)" in result.output and result.output.splitlines()[1].startswith("NODE")
    assert "ledger per node and GPU" in result.output
    data = json.loads(_cli(tmp_path, "plan", "-p", "tri-tier", "--json", "--gpus-file",
                           f"a={a}", "--gpus-file", f"b={b}").output)  # fmt: skip
    assert {s["node"] for s in data["services"]} <= {"a", "b"}
    assert {(r["node"], r["index"]) for r in data["ledger"]} == {("a", 0), ("a", 1), ("b", 2)}
    assert all(r["spare"] == r["free"] - sum(size for _, size in r["asks"]) for r in data["ledger"])
    # A node is named after its file when NODE= is left out.
    l4 = GPU_FILES / "1x-l4.json"
    named = _cli(
        tmp_path, "plan", "-p", "single-gpu", "--gpus-file", str(a), "--gpus-file", str(l4)
    )
    assert named.exit_code == 0 and "3x-rtx4090" in named.output


def test_cli_refuses_several_boxes_where_one_host_is_meant(tmp_path: Path) -> None:
    a, b = GPU_FILES / "3x-rtx4090.json", GPU_FILES / "1x-l4.json"
    gpus = _cli(tmp_path, "gpus", "--gpus-file", f"a={a}", "--gpus-file", f"b={b}")
    assert gpus.exit_code == ExitCode.USAGE and "work with `plan` and `render`" in gpus.output
    render = _cli(tmp_path, "-d", "boxes", "render", "-p", "tri-tier", "--gpus-file", f"a={a}",
                  "--gpus-file", f"b={b}")  # fmt: skip
    assert render.exit_code == ExitCode.PLAN
    assert "cannot be one compose file" in render.output
    assert not (tmp_path / "boxes").exists()
    twice = _cli(tmp_path, "plan", "-p", "tri-tier", "--gpus-file", f"a={a}", "--gpus-file",
                 f"a={b}")  # fmt: skip
    assert twice.exit_code == ExitCode.USAGE and "named twice" in twice.output

"""The CLI through its real entry point (click's CliRunner): output, JSON and exit codes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from deployer.cli.main import cli
from deployer.errors import ExitCode
from tests.helpers import GPU_FILES

BOX = str(GPU_FILES / "3x-rtx4090.json")


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> object:
    runner = CliRunner()
    return runner.invoke(cli, ["--home", str(tmp_path), *args], env=env, catch_exceptions=False)


def test_gpus_table_and_json(tmp_path: Path) -> None:
    result = run(tmp_path, "gpus", "--gpus-file", str(GPU_FILES / "1x-rtx4090-half-used.json"))
    assert result.exit_code == 0
    assert "NVIDIA GeForce RTX 4090" in result.output
    assert "python[4242] 12288 MiB" in result.output
    as_json = run(tmp_path, "gpus", "--json", "--gpus-file", BOX)
    data = json.loads(as_json.output)
    assert data["kind"] == "gpu-inventory" and data["schema_version"] == 1
    assert [g["index"] for g in data["gpus"]] == [0, 1, 2]
    # What `gpus --json` prints is what `--gpus-file` reads.
    path = tmp_path / "box.json"
    path.write_text(as_json.output)
    again = run(tmp_path, "plan", "-p", "tri-tier", "--gpus-file", str(path))
    assert again.exit_code == 0, again.output


def test_gpus_without_a_driver_is_one_clean_line(tmp_path: Path) -> None:
    # This machine has no NVIDIA driver: NVML fails to load, for real.
    result = run(tmp_path, "gpus")
    assert result.exit_code == ExitCode.INVENTORY
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot talk to the NVIDIA driver")
    assert "--gpus-file" in lines[0]
    assert "Traceback" not in result.output


def test_plan_json_has_the_documented_fields(tmp_path: Path) -> None:
    result = run(tmp_path, "plan", "-p", "tri-tier", "--gpus-file", BOX, "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["kind"] == "plan"
    medium = next(s for s in data["services"] if s["name"] == "medium")
    assert medium["gpus"] == [0, 1]
    assert medium["tensor_parallel_size"] == 2
    for key in ("model", "gpu_memory_utilization", "max_model_len", "max_num_seqs", "port",
                "kv_cache_tokens"):  # fmt: skip
        assert key in medium
    assert "test-key-medium" not in result.output  # keys never appear in plans


def test_plan_table_shows_order_and_shared_gpu_note(tmp_path: Path) -> None:
    result = run(tmp_path, "plan", "-p", "tri-tier", "--gpus-file", BOX)
    assert result.exit_code == 0
    assert "start order: [medium, mini] -> [micro]" in result.output
    assert "GPU 2 is shared by mini and micro" in result.output


def test_plan_names_the_gateway_and_its_keys(tmp_path: Path) -> None:
    result = run(tmp_path, "plan", "-p", "tri-tier", "--gpus-file", BOX)
    assert "start order: [medium, mini] -> [micro] -> [gateway]" in result.output
    assert "gateway: 127.0.0.1:19100 in front of medium, mini, micro, no GPU" in result.output
    data = json.loads(run(tmp_path, "plan", "-p", "tri-tier", "--gpus-file", BOX, "--json").output)
    assert data["gateway"]["port"] == 19100
    assert [k["name"] for k in data["gateway"]["keys"]] == ["default", "admin"]
    single = run(tmp_path, "plan", "-p", "single-gpu", "--gpus-file", BOX)
    assert "gateway" not in single.output


def test_plan_auto_says_why(tmp_path: Path) -> None:
    result = run(tmp_path, "plan", "-p", "auto", "--gpus-file", BOX)
    assert result.exit_code == 0
    assert result.output.startswith("chose tri-tier")
    assert "eight-gpu: needs 8 GPUs, this box has 3" in result.output


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["plan", "-p", "tri-tier", "--gpus-file", str(GPU_FILES / "1x-t4.json")], ExitCode.PLAN,
         "GPU 1 does not exist"),
        (["plan", "-p", "single-gpu", "--gpus-file", str(GPU_FILES / "1x-v100.json")], ExitCode.PLAN,
         "compute capability 7.5 or newer"),
        (["plan", "-p", "nope", "--gpus-file", BOX], ExitCode.PROFILE, "unknown profile 'nope'"),
        (["plan", "-p", "tri-tier", "--gpus-file", "missing.json"], ExitCode.INVENTORY,
         "cannot read GPU file"),
        (["--deployment", "Bad Name", "render", "-p", "tri-tier", "--gpus-file", BOX],
         ExitCode.STATE, "bad deployment name"),
    ],
)  # fmt: skip
def test_errors_are_one_line_with_distinct_exit_codes(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = run(tmp_path, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_render_writes_compose_env_and_plan(tmp_path: Path) -> None:
    result = run(tmp_path, "--deployment", "box1", "render", "-p", "tri-tier", "--gpus-file", BOX)
    assert result.exit_code == 0, result.output
    directory = tmp_path / "box1"
    env_file = directory / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "QWEN_DEPLOY_API_KEY_MEDIUM=test-key-medium" in env_file.read_text()
    compose = yaml.safe_load((directory / "compose.yaml").read_text())
    # The shipped tri-tier fronts its tiers with the gateway (issue 10).
    assert set(compose["services"]) == {"medium", "mini", "micro", "gateway"}
    assert "QWEN_DEPLOY_GATEWAY_KEY_DEFAULT=" in env_file.read_text()
    assert "test-key" not in (directory / "compose.yaml").read_text()
    assert json.loads((directory / "plan.json").read_text())["profile"] == "tri-tier"


def test_render_generates_keys_once_and_keeps_them(tmp_path: Path) -> None:
    args = ["--deployment", "gen", "render", "-p", "single-gpu", "--gpus-file", BOX]
    assert run(tmp_path, *args).exit_code == 0
    first = (tmp_path / "gen" / ".env").read_text()
    key = first.split("QWEN_DEPLOY_API_KEY_MINI=")[1].strip()
    assert len(key) >= 32
    assert run(tmp_path, *args).exit_code == 0
    assert (tmp_path / "gen" / ".env").read_text() == first


def test_api_key_env_must_be_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
    args = ["render", "-p", "nvfp4-8b", "--gpus-file", str(GPU_FILES / "1x-rtx5090.json")]
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), *args], env={"VLLM_API_KEY": None})
    assert result.exit_code == ExitCode.PROFILE
    assert "$VLLM_API_KEY is not set" in result.output
    assert not (tmp_path / "qwen3" / "compose.yaml").exists()
    ok = CliRunner().invoke(
        cli, ["--home", str(tmp_path), *args], env={**env, "VLLM_API_KEY": "secret-key-123"}
    )
    assert ok.exit_code == 0, ok.output


def test_profiles_and_models_list(tmp_path: Path) -> None:
    profiles = run(tmp_path, "profiles", "--json")
    names = {p["name"] for p in json.loads(profiles.output)["profiles"]}
    assert {"tri-tier", "nvfp4-8b", "single-gpu", "dual-gpu", "eight-gpu"} <= names
    models = run(tmp_path, "models")
    assert "Qwen/Qwen3-32B-AWQ" in models.output and "RedHatAI/Qwen3-8B-NVFP4" in models.output


def test_environment_variables_configure_options(tmp_path: Path) -> None:
    env = {"QWEN_DEPLOY_GPUS_FILE": BOX, "QWEN_DEPLOY_PROFILE": "tri-tier"}
    result = run(tmp_path, "plan", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["profile"] == "tri-tier"


def test_json_errors_are_a_json_document_on_stdout_too(tmp_path: Path) -> None:
    """`… --json | jq` reads an error document, and stderr keeps its one `error:` line."""
    t4 = str(GPU_FILES / "1x-t4.json")
    for args, code in (
        (("plan", "-p", "tri-tier", "--gpus-file", t4, "--json"), ExitCode.PLAN),
        (("gpus", "--json", "--gpus-file", str(tmp_path / "missing.json")), ExitCode.INVENTORY),
        (("-d", "nothing-here", "endpoints", "--json"), ExitCode.STATE),
        (("plan", "--json", "--bogus"), ExitCode.USAGE),
    ):
        result = run(tmp_path, *args)
        assert result.exit_code == code, result.output
        document = json.loads(result.stdout)
        assert document["kind"] == "error" and document["schema_version"] == 1
        assert document["error"]["exit_code"] == code
        assert document["error"]["class"] == code.name.lower()
        [line] = result.stderr.splitlines()
        assert line.startswith("error: ") and document["error"]["message"] in line
    plain = run(tmp_path, "plan", "-p", "tri-tier", "--gpus-file", t4)
    assert plain.exit_code == ExitCode.PLAN and plain.stdout == ""  # no --json: no document


def test_endpoints_takes_json_like_every_other_command(tmp_path: Path) -> None:
    assert run(tmp_path, "render", "-p", "tri-tier", "--gpus-file", BOX).exit_code == 0
    flag = run(tmp_path, "endpoints", "--json")
    fmt = run(tmp_path, "endpoints", "--format", "json")
    assert flag.exit_code == 0 and json.loads(flag.stdout) == json.loads(fmt.stdout)
    assert json.loads(flag.stdout)["kind"] == "endpoints"


def test_render_warns_like_plan_and_up(tmp_path: Path) -> None:
    """D30: an open bind is named on stderr by render too, not only in a compose comment."""
    profile = tmp_path / "open.yaml"
    data = yaml.safe_load(
        (GPU_FILES.parent.parent.parent / "profiles" / "tri-tier.yaml").read_text()
    )
    data["services"]["micro"]["bind"] = "0.0.0.0"
    profile.write_text(yaml.safe_dump(data))
    result = run(tmp_path, "render", "-p", str(profile), "--gpus-file", BOX)
    assert result.exit_code == 0, result.output
    assert "note: micro: port" in result.stderr and "binds every interface" in result.stderr

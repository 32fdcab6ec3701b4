"""Security defaults without Docker: `auth: none` takes the profile and the flag and leaves no
key anywhere; open binds and open endpoints are named in the plan's warnings; keys stay out of
everything `render` writes but .env."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from deployer.catalog import Catalog
from deployer.cli.main import cli
from deployer.errors import ExitCode, ProfileError
from deployer.planner import PlanOptions, plan
from deployer.profiles import parse_profile
from tests.helpers import inventory
from tests.helpers.deployments import tri_tier_profile, write_inventory

PORTS = {"medium": 15002, "mini": 15001, "micro": 15000}


def _render(tmp_path: Path, data: dict[str, Any], *flags: str) -> Any:
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(data))
    gpus = write_inventory(tmp_path / "gpus.json", 0)
    args = [
        "--home",
        str(tmp_path / "home"),
        "render",
        "-p",
        str(profile),
        "--gpus-file",
        str(gpus),
    ]
    return CliRunner().invoke(cli, [*args, *flags])


def test_auth_none_renders_no_key_for_that_service_only(tmp_path: Path) -> None:
    data = tri_tier_profile(PORTS, micro={"api_key": None, "auth": "none"})
    refused = _render(tmp_path, data)
    assert refused.exit_code == ExitCode.PROFILE
    assert not (tmp_path / "home" / "qwen3" / "compose.yaml").exists()

    result = _render(tmp_path, data, "--allow-unauthenticated")
    assert result.exit_code == 0, result.output
    assert "warning: micro serves 127.0.0.1:15000 WITHOUT an API key" in result.stderr
    directory = tmp_path / "home" / "qwen3"
    env = (directory / ".env").read_text()
    assert "QWEN_DEPLOY_API_KEY_MINI=test-key-mini" in env
    assert "MICRO" not in env
    assert stat.S_IMODE((directory / ".env").stat().st_mode) == 0o600
    assert (directory / ".env").stat().st_uid == os.getuid()
    compose = yaml.safe_load((directory / "compose.yaml").read_text())
    assert "VLLM_API_KEY" not in compose["services"]["micro"]["environment"]
    assert compose["services"]["mini"]["environment"]["VLLM_API_KEY"].startswith(
        "${QWEN_DEPLOY_API_KEY_MINI:?"
    )
    for name in ("compose.yaml", "plan.json"):
        text = (directory / name).read_text()
        assert "test-key-" not in text
    assert '"auth": "none"' in (directory / "plan.json").read_text()


@pytest.mark.parametrize(
    "service, message",
    [
        ({"auth": "none", "api_key": "test-key-micro"}, "auth: none serves without a key"),
        ({"auth": "maybe"}, r"auth: expected 'key' \(the default\) or 'none'"),
    ],
)
def test_auth_values_are_checked(service: dict[str, Any], message: str) -> None:
    data = tri_tier_profile(PORTS, micro=service)
    with pytest.raises(ProfileError, match=message):
        parse_profile(data, "p.yaml")


def test_auth_is_per_service_not_a_default() -> None:
    data = tri_tier_profile(PORTS)
    data["defaults"]["auth"] = "none"
    with pytest.raises(ProfileError, match="defaults: unknown key 'auth'"):
        parse_profile(data, "p.yaml")


def test_open_binds_and_open_endpoints_are_warned_about(catalog: Catalog) -> None:
    data = tri_tier_profile(
        PORTS, mini={"bind": "0.0.0.0"}, micro={"api_key": None, "auth": "none"}
    )
    result = plan(inventory("3x-rtx4090"), parse_profile(data, "p.yaml"), catalog, PlanOptions())
    assert any(w.startswith("mini: port 15001 binds every interface") for w in result.warnings)
    assert any("micro: auth: none: 127.0.0.1:15000 serves without an API key" in w
               for w in result.warnings)  # fmt: skip
    assert result.service("micro").api_key_source == "none"
    default = plan(
        inventory("3x-rtx4090"), parse_profile(tri_tier_profile(PORTS), "p"), catalog, PlanOptions()
    )
    assert {s.bind for s in default.services} == {"127.0.0.1"}
    assert not any("binds every interface" in w or "auth: none" in w for w in default.warnings)


# --- the deployment directory is private (D2, D3, D4, D14, D15) ----------------------------------


def test_state_dirs_and_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    from deployer.deployment import DeploymentDir

    old = os.umask(0)
    try:
        directory = DeploymentDir(tmp_path / "home" / "a" / "qwen3")
        directory.write_files({"compose.yaml": "x\n", ".env": "A=1\n", "plan.json": "{}\n"})
        with directory.lock():
            pass
    finally:
        os.umask(old)
    for path in (tmp_path / "home", tmp_path / "home" / "a", directory.path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in ("compose.yaml", ".env", "plan.json", ".lock"):
        assert stat.S_IMODE(directory.file(name).stat().st_mode) == 0o600, name


def test_state_that_is_not_a_plain_private_file_is_refused(tmp_path: Path) -> None:
    from deployer.deployment import DeploymentDir
    from deployer.errors import StateError

    directory = DeploymentDir(tmp_path / "qwen3")
    directory.write_files({".env": "QWEN_DEPLOY_API_KEY_A=abcdefgh12\n"})
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    directory.file(".lock").symlink_to(victim)
    with pytest.raises(StateError, match="symbolic link"), directory.lock():
        pass
    directory.file(".lock").unlink()
    os.link(victim, directory.file(".lock"))  # a hard link is another file's content too
    with pytest.raises(StateError, match="other hard links"), directory.lock():
        pass
    assert victim.read_text() == "keep me\n"
    directory.file(".lock").unlink()
    if os.geteuid() == 0:  # chown needs root: another user's .env
        os.chown(directory.file(".env"), 65534, 65534)
        with pytest.raises(StateError, match="belongs to nobody, not to you"):
            directory.read_env()
        os.chown(directory.file(".env"), 0, 0)
    directory.path.chmod(0o775)
    with pytest.raises(StateError, match=r"may be changed by other users \(mode 0775\)"):
        directory.read_env()


def test_os_errors_are_state_errors_with_the_path_and_a_fix(tmp_path: Path) -> None:
    import errno

    from deployer.statefs import os_errors

    for code, hint in (
        (errno.ENOSPC, "the disk is full"),
        (errno.EACCES, "check the owner and mode"),
        (errno.EPERM, "immutable"),
        (errno.ENOTDIR, "a file stands where a directory should be"),
    ):
        with pytest.raises(Exception) as caught, os_errors("write the plan", tmp_path):
            raise OSError(code, os.strerror(code), str(tmp_path / "plan.json"))
        text = str(caught.value)
        assert type(caught.value).__name__ == "StateError"
        assert text.startswith(f"cannot write the plan: {tmp_path}/plan.json: ") and hint in text

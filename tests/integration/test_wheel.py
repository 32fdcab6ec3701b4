"""The wheel a new user installs: built from this checkout, installed into a fresh venv outside
it, and run from a directory that has no profiles/ or compose_templates/ of its own.

No registry is reached: the wheel is built with `--no-isolation` (setuptools comes from the dev
dependencies) and installed with `--no-index --no-deps`; the new venv sees the dependencies
already installed in this one through a .pth file written after the install, so pip never sees
(and never touches) this venv's own qwen-deploy.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parents[2]
GPUS_FILE = ROOT / "tests" / "fixtures" / "gpus" / "3x-rtx4090.json"
SHIPPED = {"profiles": "*.yaml", "compose_templates": "*.j2"}
BASE_IMAGE = os.environ.get("BASE_IMAGE", "qwen-deploy/base:bookworm")


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def shipped_files() -> dict[str, list[str]]:
    return {
        name: sorted(p.name for p in (ROOT / name).glob(pattern))
        for name, pattern in SHIPPED.items()
    }


@dataclass(frozen=True)
class Installed:
    venv: Path
    workdir: Path  # outside the checkout: no profiles/ or compose_templates/ here
    wheel: Path
    sdist: Path

    @property
    def cli(self) -> str:
        return str(self.venv / "bin" / "qwen-deploy")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_DEPLOY_")}
        env.pop("PYTHONPATH", None)
        env["QWEN_DEPLOY_HOME"] = str(self.workdir / "home")
        return env

    def qwen_deploy(self, *args: str) -> str:
        return run([self.cli, *args], cwd=self.workdir, env=self.env())

    def python(self, code: str) -> str:
        return run([str(self.venv / "bin" / "python"), "-c", code], self.workdir, self.env())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    # sdist first, then the wheel built from that sdist: both must carry the shipped files.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)], base)
    wheel = next(dist.glob("qwen_deploy-*.whl"))
    sdist = next(dist.glob("qwen_deploy-*.tar.gz"))
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base)
    venv_python = str(venv / "bin" / "python")
    run(
        [sys.executable, "-m", "pip", "--python", venv_python, "install", "--quiet",
         "--no-index", "--no-deps", str(wheel)],
        base,
    )  # fmt: skip
    site = run([venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               base).strip()  # fmt: skip
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "zz_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    workdir = base / "work"
    workdir.mkdir()
    return Installed(venv=venv, workdir=workdir, wheel=wheel, sdist=sdist)


def test_wheel_and_sdist_ship_profiles_and_templates(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for directory, files in shipped_files().items():
        assert files, directory
        for file in files:
            assert f"deployer/data/{directory}/{file}" in names, (directory, file)
    assert "deployer/data/models.yaml" in names and "deployer/py.typed" in names
    assert "deployer/cli/help.txt" in names  # `--help` without importing click
    listing = run(["tar", "tzf", str(installed.sdist)], installed.workdir).split()
    for directory, files in shipped_files().items():
        for file in files:
            assert any(entry.endswith(f"/{directory}/{file}") for entry in listing), file


def test_the_installed_package_is_the_one_that_runs(installed: Installed) -> None:
    out = installed.python(
        "import deployer, deployer.resources as r; "
        "print(deployer.__file__); print(r.profiles_dir()); print(r.templates_dir())"
    )
    for line in out.splitlines():
        path = Path(line).resolve()
        assert path.is_relative_to(installed.venv.resolve()), line
        assert not path.is_relative_to(ROOT), line


def test_profiles_lists_every_shipped_profile(installed: Installed) -> None:
    out = installed.qwen_deploy("profiles")
    listed = [line.split()[0] for line in out.splitlines()[1:] if line.strip()][:-1]
    expected = [Path(name).stem for name in shipped_files()["profiles"]]
    assert listed == expected, out
    assert f"{len(expected)} profiles in " in out


def test_help_is_the_checkouts(installed: Installed) -> None:
    stored = (ROOT / "deployer" / "cli" / "help.txt").read_text()
    assert installed.qwen_deploy("--help") == stored


def test_models_lists_the_catalog(installed: Installed) -> None:
    out = installed.qwen_deploy("models")
    for model in ("Qwen/Qwen3-32B-AWQ", "Qwen/Qwen3-8B-AWQ", "RedHatAI/Qwen3-8B-NVFP4"):
        assert re.search(rf"^{re.escape(model)}\s", out, re.M), model


def test_plan_and_render_match_the_checkout(installed: Installed, tmp_path: Path) -> None:
    gpus = installed.workdir / "gpus.json"
    gpus.write_text(GPUS_FILE.read_text())
    plan = installed.qwen_deploy("plan", "-p", "tri-tier", "--gpus-file", str(gpus))
    assert re.search(r"^medium\s+Qwen/Qwen3-32B-AWQ\s+0,1\s+2\s", plan, re.M), plan
    assert "start order: [medium, mini] -> [micro]" in plan

    name = f"wheel-{uuid.uuid4().hex[:8]}"
    installed.qwen_deploy("-d", name, "render", "-p", "tri-tier", "--gpus-file", str(gpus))
    rendered = installed.workdir / "home" / name / "compose.yaml"
    compose = rendered.read_text()
    installed_profile = installed.python(
        "from deployer.resources import profiles_dir; print(profiles_dir() / 'tri-tier.yaml')"
    ).strip()
    assert installed_profile in compose  # the profile came from the installed package

    # The same render from the checkout gives the same file, apart from the profile's path.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_DEPLOY_")}
    checkout_cmd = [sys.executable, "-m", "deployer.cli.main", "--home", str(tmp_path), "-d", name]
    run([*checkout_cmd, "render", "-p", "tri-tier", "--gpus-file", str(gpus)], ROOT, env)
    expected = (tmp_path / name / "compose.yaml").read_text()
    assert compose.replace(installed_profile, "PROFILE") == expected.replace(
        str(ROOT / "profiles" / "tri-tier.yaml"), "PROFILE"
    )


def test_the_standin_image_builds_from_the_installed_package(installed: Installed) -> None:
    """`make images`'s script, pointed at the installed stand-in instead of the checkout."""
    context = Path(
        installed.python("from deployer.resources import standin_dir; print(standin_dir())").strip()
    )
    assert context.resolve().is_relative_to(installed.venv.resolve())
    dockerfile = (context / "Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+\s*$", dockerfile, re.M):
        for part in source.split():  # a path or a glob such as *.py
            assert list(context.glob(part.rstrip("/"))), f"the Dockerfile copies {part}: not here"

    client = docker.from_env()
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {BASE_IMAGE} not found; run `make images`", pytrace=False)
    tag = f"qwen-deploy/vllm-standin:wheel-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "STANDIN_CONTEXT": str(context), "STANDIN_IMAGE": tag}
    try:
        run(["bash", str(ROOT / "scripts" / "build-images.sh")], installed.workdir, env)
        out = client.containers.run(tag, ["--help"], remove=True).decode()
        assert "usage:" in out.lower(), out[:500]
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag)
        client.close()

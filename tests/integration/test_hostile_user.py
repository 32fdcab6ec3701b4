"""A hostile local user against the deployment directory, on the real file system, with a second,
unprivileged user (`nobody`) where the case needs one: state is private whatever the umask
(D2), a planted link truncates nothing (D3), another user's directory or .env is refused (D4),
another user gets one-line state errors instead of crashes (D14), secrets in extra_args are
refused (D5), and an alias bomb ends in a second, not with gigabytes (D6).

The entry point runs as a real process: as root (this test's user) through the venv's script,
and as `nobody` through a system Python with the checkout and the venv's packages on its path
(the venv's interpreter lives under root's home, which nobody may not enter)."""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import stat
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bad_input_cases import BILLION_LAUGHS, entry_point
from tests.helpers.deployments import tri_tier_profile, write_inventory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PORTS = {"medium": 15102, "mini": 15101, "micro": 15100}  # rendered only: nothing binds them


def _nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.fail("these tests run as root: they need a second user (nobody) and chown")
    return pwd.getpwnam("nobody")


def _system_python() -> str:
    """A python3 that `nobody` may execute (os.defpath: /bin and /usr/bin)."""
    found = shutil.which("python3", path=os.defpath)
    assert found, "no system python3 for the other user"
    return found


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="qd-hostile-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _inputs(scratch: Path, **services: dict[str, Any]) -> tuple[Path, Path]:
    """A profile and a GPU file that every user may read."""
    profile = scratch / "profile.yaml"
    profile.write_text(yaml.safe_dump(tri_tier_profile(PORTS, **services), sort_keys=False))
    gpus = write_inventory(scratch / "gpus.json", 0)
    for path in (profile, gpus):
        path.chmod(0o644)
    return profile, gpus


def _run(
    home: Path,
    name: str,
    *args: str,
    as_nobody: bool = False,
    preexec: Callable[[], None] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_DEPLOY_")}
    env.update({"NO_COLOR": "1", "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    command = [*entry_point(), "--home", str(home), "-d", name, *args]
    if as_nobody:
        user = _nobody()
        packages = sysconfig.get_paths()["purelib"]
        env.update({"PYTHONPATH": f"{ROOT}:{packages}", "HOME": "/nonexistent"})
        command = [_system_python(), "-m", "deployer.cli.main", *command[1:]]

        def drop() -> None:
            os.setgid(user.pw_gid)
            os.setgroups([])
            os.setuid(user.pw_uid)

        preexec = drop
    return subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
        check=False,
        cwd=ROOT,
    )


def _render(home: Path, name: str, profile: Path, gpus: Path, **kw: Any) -> Any:
    return _run(home, name, "render", "-p", str(profile), "--gpus-file", str(gpus), **kw)


def _one_error(done: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    shown = f"exit {done.returncode}\nstdout: {done.stdout!r}\nstderr: {done.stderr!r}"
    assert done.returncode == code, shown
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert "unexpected" not in lines[0] and fragment in lines[0], shown


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_state_is_private_whatever_the_umask(scratch: Path) -> None:
    """D2: `umask 000` and a home that does not exist yet: every directory made 0700, every
    file 0600; the other user can read none of it."""
    profile, gpus = _inputs(scratch)
    home = scratch / "home-um" / "a" / "b"
    done = _render(home, "adv1", profile, gpus, preexec=lambda: os.umask(0))
    assert done.returncode == 0, done.stderr
    for directory in (scratch / "home-um", scratch / "home-um" / "a", home, home / "adv1"):
        assert _mode(directory) == 0o700, directory
    names = sorted(p.name for p in (home / "adv1").iterdir())
    assert names == [".env", ".lock", "compose.yaml", "plan.json"]
    for name in names:
        assert _mode(home / "adv1" / name) == 0o600, name
    (home / "adv1").chmod(0o755)  # even with a readable directory, the files stay private
    peek = subprocess.run(
        ["cat", str(home / "adv1" / ".env")],
        preexec_fn=lambda: os.setuid(_nobody().pw_uid),
        capture_output=True,
        check=False,
    )
    assert peek.returncode != 0 and b"QWEN_DEPLOY_API_KEY" not in peek.stdout


def test_a_link_another_user_planted_truncates_nothing(scratch: Path) -> None:
    """D3: in a directory an older version left 0777, `nobody` replaces .lock by a link to a
    root-owned file; root's next render refuses the directory, then (made 0700 again) the
    link, and the file keeps every byte."""
    profile, gpus = _inputs(scratch)
    home = scratch / "home"
    assert _render(home, "adv1", profile, gpus).returncode == 0
    victim = scratch / "victim.txt"
    victim.write_text("root's file, 29 bytes long\n")
    home.chmod(0o755)
    (home / "adv1").chmod(0o777)
    plant = subprocess.run(
        ["sh", "-c", f"rm -f .lock && ln -s {victim} .lock"],
        cwd=home / "adv1",
        preexec_fn=lambda: os.setuid(_nobody().pw_uid),
        capture_output=True,
        text=True,
        check=False,
    )
    assert plant.returncode == 0, plant.stderr
    assert os.lstat(home / "adv1" / ".lock").st_uid == _nobody().pw_uid

    _one_error(_render(home, "adv1", profile, gpus), 9, "may be changed by other users")
    (home / "adv1").chmod(0o700)
    _one_error(_render(home, "adv1", profile, gpus), 9, "symbolic link")
    assert victim.read_text() == "root's file, 29 bytes long\n"

    (home / "adv1" / ".lock").unlink()
    assert _render(home, "adv1", profile, gpus).returncode == 0
    assert stat.S_ISREG(os.lstat(home / "adv1" / ".lock").st_mode)


def test_a_directory_or_env_another_user_owns_is_refused(scratch: Path) -> None:
    """D4: a deployment directory `nobody` owns (so they could swap .env at will) is refused
    before anything is read or written; so is an .env they own in our directory."""
    profile, gpus = _inputs(scratch, mini={"api_key": None})  # a generated key
    home = scratch / "home"
    home.mkdir(mode=0o700)
    theirs = home / "adv15"
    theirs.mkdir()
    os.chown(theirs, _nobody().pw_uid, _nobody().pw_gid)
    _one_error(_render(home, "adv15", profile, gpus), 9, "belongs to nobody, not to you")
    assert list(theirs.iterdir()) == []

    assert _render(home, "adv16", profile, gpus).returncode == 0
    env = home / "adv16" / ".env"
    swapped = env.read_text().replace("QWEN_DEPLOY_API_KEY_MINI=", "QWEN_DEPLOY_API_KEY_MINI=x")
    env.write_text(swapped)
    os.chown(env, _nobody().pw_uid, _nobody().pw_gid)
    compose = (home / "adv16" / "compose.yaml").read_text()
    _one_error(_render(home, "adv16", profile, gpus), 9, "belongs to nobody, not to you")
    assert env.read_text() == swapped and (home / "adv16" / "compose.yaml").read_text() == compose


def test_another_user_gets_state_errors_not_crashes(scratch: Path) -> None:
    """D14: `nobody` running commands on root's deployment gets one line and exit 9 (or the
    plain "no deployment" when they cannot even see it), never "unexpected PermissionError"."""
    profile, gpus = _inputs(scratch)
    home = scratch / "home"
    assert _render(home, "adv3", profile, gpus).returncode == 0
    home.chmod(0o755)  # they can list the home, not enter the deployment (0700)
    before = {p.name: p.read_bytes() for p in (home / "adv3").iterdir()}
    _one_error(_render(home, "adv3", profile, gpus, as_nobody=True), 9, "adv3")
    _one_error(_run(home, "adv3", "endpoints", as_nobody=True), 9, "adv3")
    _one_error(_run(home, "adv3", "verify", "--deadline", "1", as_nobody=True), 9, "adv3")
    _one_error(_render(home, "adv4", profile, gpus, as_nobody=True), 9, "Permission denied")
    assert {p.name: p.read_bytes() for p in (home / "adv3").iterdir()} == before
    assert not (home / "adv4").exists()


def test_secret_flags_in_extra_args_are_refused_and_nothing_is_written(scratch: Path) -> None:
    """D5: `--api-key K` (or `--hf-token`, `--api_key=K`) in extra_args never reaches a file."""
    home = scratch / "home"
    for extra in (["--api-key", "injected-secret-key-9999"], ["--api_key=injected-secret-9999"]):
        profile, gpus = _inputs(scratch, mini={"extra_args": extra})
        _one_error(_render(home, "adv23", profile, gpus), 3, "would write a secret")
        assert not home.exists()


def _limit_memory() -> None:
    limit = 1 << 30  # 1 GiB of address space: the bomb would need many
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_an_alias_bomb_is_refused_at_once(scratch: Path) -> None:
    """D6: a 1 KB billion-laughs profile, by path and in the profiles directory (which
    `profiles` and `--profile auto` read whole), is refused quickly in 1 GiB of memory."""
    bomb = scratch / "laughs.yaml"
    bomb.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 1024
    gpus = write_inventory(scratch / "gpus.json", 0)
    started = time.monotonic()
    done = _run(
        scratch / "home", "adv9", "plan", "-p", str(bomb), "--gpus-file", str(gpus),
        preexec=_limit_memory, timeout=60,
    )  # fmt: skip
    _one_error(done, 3, "expands to more than 100,000 values")
    profiles = scratch / "profiles"
    profiles.mkdir()
    shutil.copy(bomb, profiles / "laughs.yaml")
    for args in (("profiles",), ("plan", "-p", "auto", "--gpus-file", str(gpus))):
        done = subprocess.run(
            [*entry_point(), "--home", str(scratch / "home"), *args],
            env={**os.environ, "QWEN_DEPLOY_PROFILES_DIR": str(profiles), "NO_COLOR": "1"},
            capture_output=True, text=True, timeout=60, preexec_fn=_limit_memory, check=False,
        )  # fmt: skip
        _one_error(done, 3, "laughs.yaml: expands to more than")
    assert time.monotonic() - started < 45, "three refusals should take seconds"


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 96 KiB tmpfs: room for one deployment's files, and a disk that can be filled."""
    mount = Path(tempfile.mkdtemp(prefix="qd-full-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


def _files(directory: Path) -> dict[str, bytes]:
    return {n: (directory / n).read_bytes() for n in (".env", "compose.yaml", "plan.json")}


def test_a_full_disk_is_a_state_error_and_the_old_files_stay(
    scratch: Path, tiny_disk: Path
) -> None:
    """D14, D15: render onto a full disk: exit 9 naming the disk, and .env, compose.yaml and
    plan.json are all still the previous render's (none of them replaced, none cut short)."""
    first, gpus = _inputs(scratch)
    assert _render(tiny_disk, "adv16", first, gpus).returncode == 0
    before = _files(tiny_disk / "adv16")
    second = scratch / "second.yaml"
    data = tri_tier_profile(PORTS, micro={"context": 8192, "api_key": "other-key-micro"})
    second.write_text(yaml.safe_dump(data))
    fd = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # fill the disk until it refuses
        while os.write(fd, b"\0" * 1024):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    _one_error(_render(tiny_disk, "adv16", second, gpus), 9, "No space left on device")
    assert _files(tiny_disk / "adv16") == before
    assert sorted(p.name for p in (tiny_disk / "adv16").iterdir()) == [
        ".env",
        ".lock",
        "compose.yaml",
        "plan.json",
    ]  # fmt: skip  (no temp files or backups left behind)
    (tiny_disk / "filler").unlink()
    assert _render(tiny_disk, "adv16", second, gpus).returncode == 0
    assert _files(tiny_disk / "adv16") != before


def test_an_immutable_plan_json_leaves_all_three_files_as_they_were(scratch: Path) -> None:
    """D15: `chattr +i plan.json` used to leave a new compose.yaml beside the old plan.json."""
    first, gpus = _inputs(scratch)
    home = scratch / "home"
    assert _render(home, "adv3", first, gpus).returncode == 0
    before = _files(home / "adv3")
    second = scratch / "second.yaml"
    second.write_text(yaml.safe_dump(tri_tier_profile(PORTS, micro={"context": 8192})))
    plan = home / "adv3" / "plan.json"
    if subprocess.run(["chattr", "+i", str(plan)], check=False).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    try:
        _one_error(_render(home, "adv3", second, gpus), 9, "Operation not permitted")
        assert _files(home / "adv3") == before
    finally:
        subprocess.run(["chattr", "-i", str(plan)], check=False)

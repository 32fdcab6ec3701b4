"""The deployment directory: compose.yaml, .env (API keys), plan.json, state.json and a lock.

Private to its user: the directory is 0700 and its files 0600 whatever the umask, and a
directory or file that another user owns or may write is refused (they could swap the keys).
The rendered files are replaced together or not at all, each one atomically, so a crash or a
full disk never leaves a truncated file or a new compose.yaml beside an old plan.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.errors import LockBusy, ProfileError, StateError
from deployer.plan import DeploymentPlan
from deployer.plan import plan_from_dict as plan_from_dict  # re-exported for its importers
from deployer.planfile import check_plan_types
from deployer.profiles import API_KEY_PATTERN, Profile
from deployer.safeload import load_json
from deployer.spec import DEPLOYMENT_NAME
from deployer.statefs import (
    FILE_MODE,
    check_dir,
    make_private_dirs,
    open_private,
    os_errors,
    read_private,
    remove_leftovers,
    replace_together,
    sync_dir,
)

COMPOSE_FILE = "compose.yaml"  # found without -f by compose v2 and Debian's docker-compose 1.29
ENV_FILE = ".env"
PLAN_FILE = "plan.json"
LOCK_FILE = ".lock"
STATE_FILE = "state.json"  # last verification results, written by `verify`
API_KEY_VAR_PREFIX = "QWEN_DEPLOY_API_KEY_"  # ServicePlan.api_key_env
PROJECT_VAR = "COMPOSE_PROJECT_NAME"  # both compose versions read it from .env
MAX_DEPLOYMENT_NAME = 41


def default_home() -> Path:
    return Path.home() / ".local" / "share" / "qwen-deploy"


@dataclass(frozen=True)
class DeploymentDir:
    path: Path

    @classmethod
    def named(cls, home: Path, name: str) -> DeploymentDir:
        if len(name) > MAX_DEPLOYMENT_NAME:
            raise StateError(
                f"bad deployment name {name[:20]!r}…: {len(name)} characters, at most "
                f"{MAX_DEPLOYMENT_NAME}",
                hint="container names are NAME-SERVICE-1: choose a shorter name",
            )
        if not DEPLOYMENT_NAME.match(name):
            raise StateError(
                f"bad deployment name {name!r}: use lower-case letters, digits, '-' and '_'"
            )
        return cls(home / name)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self) -> bool:
        with os_errors("read the deployment directory", self.path):  # EACCES: another user's
            return self.file(PLAN_FILE).is_file()

    def _prepare(self) -> None:
        """Create the directory (0700, parents too) or check the one that is there."""
        with os_errors("create the deployment directory", self.path):
            make_private_dirs(self.path)
            check_dir(self.path)

    def _read(self, name: str, what: str) -> str | None:
        """A file of the directory (None when absent), after checking who may change them."""
        with os_errors(f"read {what}", self.file(name)):
            if not self.path.is_dir():
                return None
            check_dir(self.path)
            return read_private(self.file(name), what)

    # --- writing ---------------------------------------------------------------------------

    def write_files(self, files: Mapping[str, str]) -> None:
        """Replace the rendered files together (all 0600), or leave the old ones as they were.
        Temp files a killed writer left behind are removed first (callers hold the lock)."""
        self._prepare()
        with os_errors("write the deployment's files", self.path):
            remove_leftovers(self.path, list(files))
            replace_together(self.path, files)

    def save_state(self, state: dict[str, Any]) -> None:
        self._prepare()
        with os_errors("save the deployment's state", self.file(STATE_FILE)):
            replace_together(self.path, {STATE_FILE: json.dumps(state, indent=2) + "\n"})

    # --- reading ---------------------------------------------------------------------------

    def load_plan(self) -> DeploymentPlan:
        path = self.file(PLAN_FILE)
        text = self._read(PLAN_FILE, "the plan") if self.exists() else None
        if text is None:
            raise StateError(
                f"no deployment {self.name!r} at {self.path}",
                hint="run `qwen-deploy up` or `qwen-deploy render` first",
            )
        hint = "render it again with `qwen-deploy render --profile …`"
        try:
            data = load_json(text, "JSON", StateError)
        except StateError as exc:
            raise StateError(f"{path} is not a valid plan ({exc.message})", hint=hint) from None
        try:
            plan = plan_from_dict(data)
            check_plan_types(plan)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise StateError(f"{path} is not a valid plan ({exc})", hint=hint) from None
        return plan

    def read_env(self, missing_ok: bool = False) -> dict[str, str]:
        """The .env file's variables. A lost .env beside a plan whose services have keys is an
        error (the running containers still hold the old keys), unless missing_ok."""
        path = self.file(ENV_FILE)
        text = self._read(ENV_FILE, "the .env file")
        if text is None:
            if not missing_ok:
                self._check_env_not_lost()
            return {}
        env = parse_env(text, str(path))
        env.pop(PROJECT_VAR, None)  # compose's, not a key
        for name, value in env.items():
            # A hand-edited key would break compose's .env parsing or the Authorization header.
            if name.startswith(API_KEY_VAR_PREFIX) and not API_KEY_PATTERN.match(value):
                raise StateError(
                    f"{path}: {name} is not a usable API key (8-256 of letters, digits and "
                    "._~+/=-, no quotes or spaces)",
                    hint="fix that line, or delete it and `qwen-deploy render` writes a new key",
                )
        return env

    def _check_env_not_lost(self) -> None:
        if not self.exists():
            return
        keyed = [s for s in self.load_plan().services if s.auth != "none"]
        if not keyed:
            return
        first = keyed[0]
        raise StateError(
            f"{self.file(ENV_FILE)} is missing: plan.json says {', '.join(s.name for s in keyed)} "
            "use API keys, and running containers still hold the old ones",
            hint=f"restore each key from its container (`docker exec {self.name}-{first.name}-1 "
            f"printenv VLLM_API_KEY` gives {first.api_key_env}=…) into .env; or, to issue new "
            f"keys, delete {self.file(PLAN_FILE)} and run `qwen-deploy up` again",
        )

    def load_state(self) -> dict[str, Any]:
        try:
            text = self._read(STATE_FILE, "the state file")
        except StateError:
            return {}
        try:
            data = json.loads(text) if text else {}
        except (ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    # --- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, wait_s: float = 0.0) -> Iterator[None]:
        """Exclusive lock for commands that change the deployment; waits up to wait_s."""
        self._prepare()
        path = self.file(LOCK_FILE)
        with os_errors("open the deployment's lock", path):
            fd = open_private(path, os.O_RDWR | os.O_CREAT, "the lock file")
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                        raise LockBusy(
                            f"deployment {self.name!r} is locked by "
                            f"{holder or 'another qwen-deploy command'!s:.80}",
                            hint="wait for it to finish, or pass --wait SECONDS",
                        ) from None
                    time.sleep(0.2)
            # Ours, a regular file with one link (open_private checked): safe to rewrite. The
            # pid is only for the message above: a full disk must not stop the command.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """One file, atomically (temp file, fsync, rename), created with `mode` from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        sync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def parse_env(text: str, source: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip().isidentifier():
            raise StateError(
                f"{source}:{number}: expected NAME=value",
                hint="fix that line, or delete the file and `qwen-deploy render` writes it again",
            )
        if name.strip() in env:
            raise StateError(
                f"{source}:{number}: {name.strip()} is set twice",
                hint="keep one of the lines (compose would take the first, qwen-deploy the last)",
            )
        env[name.strip()] = value.strip()
    return env


def render_env(values: Mapping[str, str], project: str | None = None) -> str:
    """The .env file: the project name compose uses (both versions read it here; v1 rejects a
    `name:` key in the file) and the services' keys."""
    lines = ["# API keys for this deployment; compose reads it, keep it private (mode 0600)."]
    if project is not None:
        lines.append(f"{PROJECT_VAR}={project}")
    lines += [f"{name}={value}" for name, value in sorted(values.items())]
    return "\n".join(lines) + "\n"


def resolve_api_keys(
    plan: DeploymentPlan,
    profile: Profile,
    existing: Mapping[str, str],
    environ: Mapping[str, str],
    allow_unauthenticated: bool = False,
) -> dict[str, str]:
    """One key per service (and per gateway key): from the profile, from the named environment
    variable, the one already in the deployment's .env, or a new random one. A service with
    `auth: none` gets none, and only when the caller confirms it (`--allow-unauthenticated`)."""
    keys: dict[str, str] = {}
    for service in plan.services:
        spec = profile.service(service.name)
        var = service.api_key_env
        if service.auth == "none":
            if not allow_unauthenticated:
                raise ProfileError(
                    f"{profile.source}: services.{service.name}.auth: none would serve "
                    f"{service.bind}:{service.port} without an API key",
                    hint="pass --allow-unauthenticated to confirm, or remove `auth: none`",
                )
            continue
        if spec.api_key:
            key = spec.api_key
        elif spec.api_key_env:
            key = environ.get(spec.api_key_env, "") or existing.get(var, "")
            if not key:
                raise ProfileError(
                    f"{profile.source}: services.{service.name}.api_key_env: "
                    f"${spec.api_key_env} is not set",
                    hint=f"export {spec.api_key_env}=… or remove api_key_env to generate a key",
                )
        else:
            key = existing.get(var) or secrets.token_urlsafe(32)
        if not API_KEY_PATTERN.match(key):
            origin = f" (from ${spec.api_key_env})" if spec.api_key_env else ""
            raise ProfileError(
                f"the API key for {service.name}{origin} has characters that would break the "
                ".env file or the Authorization header (allowed: 8-256 of letters, digits and "
                "._~+/=-)"
            )
        keys[var] = key
    if profile.gateway is not None:  # the clients' keys for the gateway, same sources
        from deployer.gateway.spec import resolve_gateway_keys

        keys.update(resolve_gateway_keys(profile.gateway, existing, environ))
    return keys

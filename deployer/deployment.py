"""The deployment directory: compose.yaml, .env (API keys, mode 0600), plan.json and a lock.

Files are written atomically (temp file + fsync + rename) so a crash never leaves a truncated
compose or .env file, and a lock serialises commands that change one deployment.
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
from deployer.profiles import API_KEY_PATTERN, Profile
from deployer.spec import DEPLOYMENT_NAME

COMPOSE_FILE = "compose.yaml"
ENV_FILE = ".env"
PLAN_FILE = "plan.json"
LOCK_FILE = ".lock"
STATE_FILE = "state.json"  # last verification results, written by `verify`
API_KEY_VAR_PREFIX = "QWEN_DEPLOY_API_KEY_"  # ServicePlan.api_key_env


def default_home() -> Path:
    return Path.home() / ".local" / "share" / "qwen-deploy"


@dataclass(frozen=True)
class DeploymentDir:
    path: Path

    @classmethod
    def named(cls, home: Path, name: str) -> DeploymentDir:
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
        return self.file(PLAN_FILE).is_file()

    # --- writing ---------------------------------------------------------------------------

    def write_files(self, files: Mapping[str, str]) -> None:
        """Write rendered files atomically; .env gets mode 0600 from the start. Temp files a
        killed writer left behind are removed first (callers hold the lock: none is live)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in files:
            for stale in self.path.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        for name, text in files.items():
            write_atomic(self.file(name), text, 0o600 if name == ENV_FILE else 0o644)

    def save_state(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.file(STATE_FILE), json.dumps(state, indent=2) + "\n", 0o644)

    # --- reading ---------------------------------------------------------------------------

    def load_plan(self) -> DeploymentPlan:
        path = self.file(PLAN_FILE)
        if not path.is_file():
            raise StateError(
                f"no deployment {self.name!r} at {self.path}",
                hint="run `qwen-deploy up` or `qwen-deploy render` first",
            )
        try:
            return plan_from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"{path} is not a valid plan ({exc})",
                hint="render it again with `qwen-deploy render --profile …`",
            ) from None

    def read_env(self) -> dict[str, str]:
        path = self.file(ENV_FILE)
        if not path.is_file():
            return {}
        env = parse_env(path.read_text(), str(path))
        for name, value in env.items():
            # A hand-edited key would break compose's .env parsing or the Authorization header.
            if name.startswith(API_KEY_VAR_PREFIX) and not API_KEY_PATTERN.match(value):
                raise StateError(
                    f"{path}: {name} is not a usable API key (8-256 of letters, digits and "
                    "._~+/=-, no quotes or spaces)",
                    hint="fix that line, or delete it and `qwen-deploy render` writes a new key",
                )
        return env

    def load_state(self) -> dict[str, Any]:
        path = self.file(STATE_FILE)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # --- locking ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, wait_s: float = 0.0) -> Iterator[None]:
        """Exclusive lock for commands that change the deployment; waits up to wait_s."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.file(LOCK_FILE), "a+") as handle:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "another qwen-deploy command"
                        raise LockBusy(
                            f"deployment {self.name!r} is locked by {holder}",
                            hint="wait for it to finish, or pass --wait SECONDS",
                        ) from None
                    time.sleep(0.2)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomic(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        # Make the rename itself durable, not just the file's contents.
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
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
        env[name.strip()] = value.strip()
    return env


def render_env(values: Mapping[str, str]) -> str:
    lines = ["# API keys for this deployment; compose reads it, keep it private (mode 0600)."]
    lines += [f"{name}={value}" for name, value in sorted(values.items())]
    return "\n".join(lines) + "\n"


def resolve_api_keys(
    plan: DeploymentPlan,
    profile: Profile,
    existing: Mapping[str, str],
    environ: Mapping[str, str],
    allow_unauthenticated: bool = False,
) -> dict[str, str]:
    """One key per service: from the profile, from the named environment variable, the one
    already in the deployment's .env, or a new random one. A service with `auth: none` gets
    none, and only when the caller confirms it (`--allow-unauthenticated`)."""
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
    return keys

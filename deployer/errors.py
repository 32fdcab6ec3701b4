"""One exception hierarchy; the CLI turns each class into one exit code and a one-line message."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # unexpected failure (a bug): traceback with --debug
    USAGE = 2  # click's own usage errors
    PROFILE = 3
    INVENTORY = 4
    PLAN = 5
    DOCKER = 6
    DEPLOY = 7
    VERIFY = 8
    STATE = 9
    LOCKED = 10
    NAME_TAKEN = 11
    INTERRUPTED = 130
    TERMINATED = 143  # SIGTERM during up/restart (128 + 15, as a shell reports it)


class DeployError(Exception):
    """Base for every failure a user can act on."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ProfileError(DeployError):
    """A profile or model-catalog file is invalid."""

    exit_code = ExitCode.PROFILE


class InventoryError(DeployError):
    """GPUs cannot be read (no driver, no NVML, bad --gpus-file)."""

    exit_code = ExitCode.INVENTORY


class PlanError(DeployError):
    """The profile cannot be placed on these GPUs."""

    exit_code = ExitCode.PLAN


class DockerUnavailable(DeployError):
    """The Docker engine cannot be reached or refused the request."""

    exit_code = ExitCode.DOCKER


class DeployFailed(DeployError):
    """A container did not start or did not become healthy."""

    exit_code = ExitCode.DEPLOY


class VerifyFailed(DeployError):
    """Smoke requests against a running service failed."""

    exit_code = ExitCode.VERIFY


class StateError(DeployError):
    """The deployment directory or the engine's state is not what a command needs."""

    exit_code = ExitCode.STATE


class LockBusy(DeployError):
    """Another qwen-deploy command holds the deployment's lock."""

    exit_code = ExitCode.LOCKED


class BenchError(DeployError):
    """Bench options or saved runs that cannot be used (exits like a state problem)."""

    exit_code = ExitCode.STATE


class TargetUnsupported(DeployError):
    """A deployment target (kubernetes, swarm) cannot express this plan; says why and what to
    change. Exits like a plan that does not fit: nothing was written or started."""

    exit_code = ExitCode.PLAN


class NameTaken(DeployError):
    """Containers of another docker-compose project (not qwen-deploy's) carry the deployment's
    name; `up` refuses to share the compose project with them unless asked."""

    exit_code = ExitCode.NAME_TAKEN

"""Docker SDK and transport errors turned into DeployError subclasses, in one place
(docker/compose v1 `cli/errors.py::handle_connection_errors`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker.errors
import requests

from deployer.errors import DeployError, DeployFailed, DockerUnavailable, StateError


@contextlib.contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Turn Docker SDK and transport errors into DeployError subclasses a user can act on."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except DeployError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise DeployFailed(
            f"{prefix}image not found ({explanation(exc)})",
            hint="build the stand-in with `make images`, or `docker pull` the image",
        ) from None
    except docker.errors.NotFound as exc:
        raise StateError(
            f"{prefix}{explanation(exc)}",
            hint="the container or network went away meanwhile; run the command again",
        ) from None
    except docker.errors.APIError as exc:
        text = explanation(exc)
        hint = None
        if "could not select device driver" in text:
            hint = "install the NVIDIA Container Toolkit and restart dockerd"
        elif "port is already allocated" in text or "address already in use" in text:
            hint = "another process or container holds that host port: stop it or change `port:`"
        elif "Conflict" in text and "already in use" in text:
            hint = "a container with that name exists outside this deployment's labels: remove it"
        raise DeployFailed(f"{prefix}Docker refused: {text}", hint=hint) from None
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        raise DockerUnavailable(
            f"{prefix}lost the connection to the Docker engine ({exc})",
            hint="is dockerd running? check DOCKER_HOST",
        ) from None


def explanation(exc: docker.errors.APIError) -> str:
    """The engine's own words for an API error."""
    text = exc.explanation or str(exc)
    return text.decode() if isinstance(text, bytes) else str(text)

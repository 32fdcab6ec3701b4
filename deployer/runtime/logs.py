"""`logs`: the deployment's container logs, one service's or all interleaved by time with a
`name | ` prefix as compose prints them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests

from deployer.errors import StateError
from deployer.runtime.engine_errors import docker_errors
from deployer.runtime.observed import containers as deployment_containers
from deployer.runtime.observed import project_filter
from deployer.spec import LABEL_SERVICE


def _find_container(client: docker.DockerClient, deployment: str, service: str) -> Any:
    found = client.containers.list(
        all=True,
        filters={"label": [*project_filter(deployment)["label"], f"{LABEL_SERVICE}={service}"]},
    )
    if not found:
        raise StateError(
            f"no container for {service} in deployment {deployment!r}",
            hint="`qwen-deploy up` creates it; `qwen-deploy status` shows what there is",
        )
    return found[0]


def _split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace").rstrip("\r")
    if buffer:
        yield buffer.decode(errors="replace").rstrip("\r")


def _timestamped(line: str) -> tuple[str, str]:
    stamp, _, text = line.partition(" ")
    return stamp, text


def logs(
    client: docker.DockerClient,
    deployment: str,
    services: Sequence[str] = (),
    *,
    follow: bool = False,
    tail: int | None = None,
    since: datetime | int | None = None,
) -> Iterator[str]:
    """Log lines of the named services' containers (all when empty). With several services,
    each line is prefixed with `name | ` as compose does, interleaved by time."""
    with docker_errors(f"logs of {deployment!r}"):
        if services:
            chosen = [(s, _find_container(client, deployment, s)) for s in services]
        else:
            chosen = sorted(
                (
                    (c.labels.get(LABEL_SERVICE, c.name), c)
                    for c in deployment_containers(client, deployment)
                ),
                key=lambda pair: pair[0],
            )
        if not chosen:
            raise StateError(f"deployment {deployment!r} has no containers")
    width = max(len(name) for name, _ in chosen)
    prefixed = len(chosen) > 1
    options: dict[str, Any] = {"tail": "all" if tail is None else tail}
    if since is not None:
        options["since"] = since

    def prefix(name: str) -> str:
        return f"{name.ljust(width)} | " if prefixed else ""

    if not follow:
        merged: list[tuple[str, int, str]] = []
        with docker_errors(f"logs of {deployment!r}"):
            for order, (name, container) in enumerate(chosen):
                raw = container.logs(timestamps=True, **options)
                for line in _split_lines([raw]):
                    stamp, text = _timestamped(line)
                    merged.append((stamp, order, prefix(name) + text))
        # RFC 3339 with fixed-width nanoseconds sorts as text; stable within one container.
        merged.sort(key=lambda item: (item[0], item[1]) if prefixed else (0, 0))
        yield from (text for _, _, text in merged)
        return
    if not prefixed:
        name, container = chosen[0]
        with docker_errors(f"logs of {name}"):
            stream = container.logs(stream=True, follow=True, **options)
            yield from _split_lines(stream)
        return
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(name: str, container: Any) -> None:
        try:
            for line in _split_lines(container.logs(stream=True, follow=True, **options)):
                lines.put(prefix(name) + line)
        except (docker.errors.DockerException, requests.RequestException):
            pass
        finally:
            lines.put(None)

    for name, container in chosen:
        threading.Thread(target=pump, args=(name, container), daemon=True).start()
    running = len(chosen)
    while running:
        item = lines.get()
        if item is None:
            running -= 1
        else:
            yield item

"""Which target a deployment runs on, recorded in its directory (`target.json`), so that
status, logs, restart, verify and down act on the Swarm services of a Swarm deployment and on
the containers of a compose one. A directory without the file is a compose deployment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deployer.deployment import write_atomic
from deployer.targets import Target

TARGET_FILE = "target.json"


def read_target(directory: Path) -> tuple[Target, dict[str, Any]]:
    """(target, details) of the deployment in `directory`; compose when nothing is recorded."""
    try:
        data = json.loads((directory / TARGET_FILE).read_text())
        return Target(data["target"]), dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return Target.COMPOSE, {}


def write_target(directory: Path, target: Target, **details: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"target": target.value, **details}, indent=2) + "\n"
    write_atomic(directory / TARGET_FILE, text, 0o644)


def clear_target(directory: Path) -> None:
    (directory / TARGET_FILE).unlink(missing_ok=True)

"""Write a rendered Kubernetes directory: atomically, secrets.env with mode 0600 from the start,
and without manifests that an earlier render wrote for objects the plan no longer has."""

from __future__ import annotations

from pathlib import Path

from deployer.deployment import write_atomic
from deployer.targets.kubernetes import GENERATED_MARK, SECRETS_ENV, KubernetesRender


def _ours(path: Path) -> bool:
    try:
        with path.open() as handle:
            return handle.readline().startswith(GENERATED_MARK)
    except OSError:
        return False


def write_kubernetes(result: KubernetesRender, directory: Path) -> list[Path]:
    """Write the files; remove stale manifests qwen-deploy wrote there before. Returns the
    paths written, secrets.env last."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in result.files.items():
        write_atomic(directory / name, text, 0o644)
        written.append(directory / name)
    secrets = directory / SECRETS_ENV
    if result.secrets_env is not None:
        write_atomic(secrets, result.secrets_env, 0o600)
        written.append(secrets)
    else:
        secrets.unlink(missing_ok=True)
    for stale in directory.glob("*.yaml"):
        if stale.name not in result.files and _ours(stale):
            stale.unlink()
    return written

"""D1: containers and networks of another docker-compose project that happens to have the
deployment's name are someone else's. `status` shows them as foreign, `down` and `up` never stop
or remove them, and `up` refuses the name unless `--share-name`. Real engine, real containers
made the way `docker compose` labels them (no io.qwen-deploy.* label)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from deployer.errors import ExitCode
from deployer.vllm_pin import STANDIN_IMAGE

if TYPE_CHECKING:
    from tests.helpers.deployments import Deployment

pytestmark = pytest.mark.integration


def _foreign(deployment: Deployment, service: str = "db") -> tuple[Any, Any]:
    """A compose project's network and container named like the deployment's, as `docker
    compose up` of someone else's compose file would make them."""
    engine, name = deployment.engine, deployment.name
    project = {"com.docker.compose.project": name}
    network = engine.networks.create(
        f"{name}_default",
        driver="bridge",
        labels={**project, "com.docker.compose.network": "default"},
    )
    container = engine.containers.run(
        STANDIN_IMAGE,  # always built for these tests; any image would do
        ["600"],
        entrypoint=["sleep"],
        name=f"{name}-{service}-1",
        labels={
            **project,
            "com.docker.compose.service": service,
            "com.docker.compose.oneoff": "False",
        },
        network=network.name,
        detach=True,
    )
    return network, container


def _alive(engine: Any, container: Any) -> str:
    return str(engine.containers.get(container.id).status)


def test_down_leaves_a_foreign_container_and_its_network(deployment: Deployment) -> None:
    network, container = _foreign(deployment)
    result = deployment.cli("down")
    assert result.exit_code == 0, result.output
    assert "removed" not in result.stdout
    assert f"left container {container.name} (another compose project's) alone" in result.stdout
    assert f"left network {network.name}" in result.stdout
    assert _alive(deployment.engine, container) == "running"
    assert deployment.engine.networks.get(network.id).name == network.name


def test_status_lists_a_foreign_container_as_foreign(deployment: Deployment) -> None:
    _, container = _foreign(deployment)
    table = deployment.cli("status")
    assert table.exit_code == 0, table.output
    assert "db (foreign)" in table.stdout
    assert "foreign: db (another compose project's, left alone)" in table.stdout
    assert "not in the plan" not in table.stdout
    data = deployment.cli("status", "--json")
    rows = {r["service"]: r for r in json.loads(data.stdout)["services"]}
    assert rows["db"]["foreign"] is True
    assert rows["db"]["container"] == container.name


def test_up_refuses_the_name_and_changes_nothing(deployment: Deployment) -> None:
    _, container = _foreign(deployment)
    for extra in (("--dry-run",), ()):
        result = deployment.up(*extra)
        assert result.exit_code == ExitCode.NAME_TAKEN, result.output
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"error: deployment name {deployment.name!r} is taken by another")
        assert container.name in line and "--share-name" in line
    assert set(deployment.containers()) == {"db"}  # nothing of ours was created
    assert not (deployment.home / deployment.name / "plan.json").exists()
    assert _alive(deployment.engine, container) == "running"


def test_share_name_deploys_beside_them_and_up_and_down_leave_them(
    deployment: Deployment,
) -> None:
    network, container = _foreign(deployment)
    first = deployment.up("--share-name", "--no-verify")
    assert first.exit_code == 0, first.output
    assert set(deployment.containers()) == {"db", "medium", "mini", "micro"}
    again = deployment.up("--share-name", "--no-verify")
    assert again.exit_code == 0, again.output
    assert "db" not in again.stdout  # not "removed as not in the plan any more"
    assert _alive(deployment.engine, container) == "running"
    down = deployment.cli("down")
    assert down.exit_code == 0, down.output
    assert set(deployment.containers()) == {"db"}
    assert f"removed container {container.name}" not in down.stdout
    assert _alive(deployment.engine, container) == "running"
    # Their network holds their container: it stays, ours or not.
    assert deployment.engine.networks.get(network.id).name == network.name

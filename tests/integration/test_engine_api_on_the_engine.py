"""The stdlib Engine API client that `status` reads containers through, against the real engine:
it finds and describes the same containers as the Docker SDK, and its failures are the same
DeployErrors."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import DeployFailed, DockerUnavailable, StateError
from deployer.runtime.engine_api import (
    EngineAddress,
    EngineApi,
    connect,
    engine_address,
    engine_api_errors,
)
from deployer.runtime.observed import foreign, observe, project_filter
from deployer.spec import LABEL_ENGINE, LABEL_ONEOFF, LABEL_PROJECT, LABEL_SERVICE
from deployer.vllm_pin import STANDIN_IMAGE

pytestmark = pytest.mark.integration
GPUS_FILE = Path(__file__).parents[1] / "fixtures" / "gpus" / "3x-rtx4090.json"


@pytest.fixture
def project(engine: Any) -> Iterator[str]:
    """A compose project with one container of qwen-deploy's (running), one stopped, and one of
    someone else's; all removed afterwards with the SDK."""
    name = f"api-{uuid.uuid4().hex[:8]}"
    common = {LABEL_PROJECT: name, LABEL_ONEOFF: "False"}
    made = []
    try:
        for service, labels, command in (
            ("mini", {LABEL_ENGINE: "stand-in"}, ["600"]),
            ("micro", {LABEL_ENGINE: "stand-in"}, ["0"]),
            ("db", {}, ["600"]),
        ):
            made.append(
                engine.containers.run(
                    STANDIN_IMAGE,  # always built for these tests; any image would do
                    command,
                    entrypoint=["sleep"],
                    name=f"{name}-{service}-1",
                    labels={**common, LABEL_SERVICE: service, **labels},
                    detach=True,
                )
            )
        made[1].wait(timeout=60)
        yield name
    finally:
        for container in made:
            with contextlib.suppress(Exception):
                container.remove(force=True)


def api() -> EngineApi:
    address = engine_address(os.environ)
    assert address is not None, "the tests' engine is one the client speaks to"
    return connect(address)


def test_it_observes_what_the_sdk_observes(engine: Any, project: str) -> None:
    client = api()
    ours = observe(client, project)
    assert ours == observe(engine, project)
    assert {o.service: o.state for o in ours} == {"mini": "running", "micro": "exited"}
    assert {o.service for o in ours if o.exit_code == 0} == {"mini", "micro"}
    strangers = foreign(client, project)
    assert strangers == foreign(engine, project)
    assert [o.service for o in strangers] == ["db"]


def test_listing_and_inspecting_are_the_engines_own_documents(engine: Any, project: str) -> None:
    client = api()
    listed = client.list_containers(project_filter(project))
    assert sorted(c["Names"][0] for c in listed) == [f"/{project}-micro-1", f"/{project}-mini-1"]
    attrs = client.inspect_container(listed[0]["Id"])
    assert attrs == engine.containers.get(listed[0]["Id"]).attrs
    assert client.list_containers({"label": [f"{LABEL_PROJECT}=no-such-{project}"]}) == []


def test_its_errors_are_the_sdks_deploy_errors(tmp_path: Any) -> None:
    client = api()
    with pytest.raises(StateError, match="gone: No such container"), engine_api_errors("gone"):
        client.inspect_container("no-such-container-" + uuid.uuid4().hex)
    with pytest.raises(DeployFailed, match=r"Docker refused: .*filter"), engine_api_errors("bad"):
        client.list_containers({"not-a-filter": ["x"]})
    with pytest.raises(DockerUnavailable, match="cannot reach the Docker engine"):
        connect(EngineAddress(unix_socket=str(tmp_path / "no-engine.sock")))
    gone = EngineApi(EngineAddress(unix_socket=str(tmp_path / "no-engine.sock")))
    with (
        pytest.raises(DockerUnavailable, match="lost the connection to the Docker engine"),
        engine_api_errors("listing"),
    ):
        gone.list_containers({})


def status_json(home: Any, deployment: str) -> tuple[dict[str, Any], set[str]]:
    """`status --json` in a fresh interpreter: its document and the modules it imported."""
    script = (
        "import json, sys\nfrom deployer.cli.main import cli\n"
        f"args = ['--home', {str(home)!r}, '-d', {deployment!r}, 'status', '--json']\n"
        "try:\n    cli(args, prog_name='qwen-deploy')\nexcept SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print('\\x00' + json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    text, _, modules = done.stdout.rpartition("\x00")
    return json.loads(text), set(json.loads(modules))


def test_status_on_the_engine_imports_no_docker_sdk(project: str, tmp_path: Any) -> None:
    document, modules = status_json(tmp_path, project)
    rows = {r["service"]: r for r in document["services"]}
    assert {s: (r["state"], r["foreign"]) for s, r in rows.items()} == {
        "db": ("running", True), "micro": ("exited", False), "mini": ("running", False),
    }  # fmt: skip
    assert not {m for m in modules if m.split(".")[0] in ("docker", "requests")}
    # A rendered deployment: the plan's specs hashed with the containers' environment.
    render = ["--home", str(tmp_path), "-d", project, "render", "-p", "tri-tier",
              "--gpus-file", str(GPUS_FILE)]  # fmt: skip
    subprocess.run([sys.executable, "-m", "deployer.cli.main", *render], check=True)
    document, modules = status_json(tmp_path, project)
    rows = {r["service"]: r for r in document["services"]}
    assert rows["mini"]["in_plan"] and rows["mini"]["up_to_date"] is False
    assert rows["medium"]["state"] == "missing"
    assert not {m for m in modules if m.split(".")[0] in ("docker", "requests")}

"""Bad input next to a healthy running deployment, on the real Docker engine: every case of
tests/bad_input_cases.py (those that need the engine and those that do not) must fail with its
one line and exit code and leave the running deployment exactly as it was: the same containers
(id, start time, state, restart count and policy), the same files, nothing created beside it."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from deployer.cli.main import cli
from tests.bad_input_cases import (
    CASES,
    Case,
    Workspace,
    check_outcome,
    restored,
    run_case,
    snapshot,
)
from tests.helpers.deployments import free_ports, write_inventory

pytestmark = pytest.mark.integration


def _remove(client: Any, project: str) -> None:
    label = {"label": f"com.docker.compose.project={project}"}
    for container in client.containers.list(all=True, filters=label):
        with contextlib.suppress(Exception):
            container.remove(force=True)
    for network in client.networks.list(names=[f"{project}_default"]):
        with contextlib.suppress(Exception):
            network.remove()


@pytest.fixture(scope="module")
def healthy(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """Tri-tier on the stand-in, started once for the module and verified."""
    tmp = tmp_path_factory.mktemp("bad-input")
    name = f"bad-{uuid.uuid4().hex[:8]}"
    first_gpu = random.randrange(100, 1000, 3)
    ws = Workspace(
        tmp=tmp,
        home=tmp / "home",
        deployment=name,
        first_gpu=first_gpu,
        ports=dict(zip(("medium", "mini", "micro"), free_ports(3), strict=True)),
        gpus_file=write_inventory(tmp / "gpus.json", first_gpu),
        other=f"{name}-beside",
    )
    good = tmp / "good-profile.yaml"
    ws.write_profile(ws.good_profile())
    ws.profile.rename(good)
    try:
        result = CliRunner().invoke(
            cli,
            [
                "--home",
                str(ws.home),
                "--deployment",
                name,
                "up",
                "-p",
                str(good),
                "--gpus-file",
                str(ws.gpus_file),
                "--engine",
                "stand-in",
            ],
            env={"NO_COLOR": "1", "HF_TOKEN": None},
        )
        assert result.exit_code == 0, result.output
        yield ws
    finally:
        _remove(engine, name)
        _remove(engine, ws.other)


def _containers(client: Any, project: str) -> dict[str, tuple[Any, ...]]:
    found = client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    return {
        c.name: (
            c.id,
            c.attrs["State"]["Status"],
            c.attrs["State"]["StartedAt"],
            c.attrs["RestartCount"],
            c.attrs["HostConfig"]["RestartPolicy"]["Name"],
        )
        for c in found
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_leaves_the_running_deployment_alone(
    case: Case, healthy: Workspace, engine: Any
) -> None:
    ws = healthy
    running = _containers(engine, ws.deployment)
    assert len(running) == 3 and all(s[1] == "running" for s in running.values()), running
    with restored(ws.dir):
        cleanup = case.setup(ws) if case.setup else None
        files = snapshot(ws.home)
        try:
            outcome = run_case(case, ws, {})
            after = snapshot(ws.home)  # before the setup is undone (a mode, a link)
        finally:
            if cleanup:
                cleanup()
        check_outcome(case, outcome)
        assert after == files
    assert _containers(engine, ws.deployment) == running
    assert _containers(engine, ws.other) == {}
    assert not engine.networks.list(names=[f"{ws.other}_default"])


def test_the_deployment_still_verifies_after_all_of_them(healthy: Workspace) -> None:
    result = CliRunner().invoke(
        cli,
        ["--home", str(healthy.home), "--deployment", healthy.deployment, "verify"],
        env={"NO_COLOR": "1"},
    )
    assert result.exit_code == 0, result.output
    assert Path(healthy.dir / "state.json").is_file()


def test_status_watch_json_is_json_lines(healthy: Workspace) -> None:
    """D28: `status --json --watch` prints one compact document per refresh (JSON Lines), so
    `| jq -c` or a line reader can follow it."""
    import json
    import signal
    import subprocess
    import time

    from tests.bad_input_cases import entry_point

    args = ["--home", str(healthy.home), "-d", healthy.deployment, "status", "--json"]
    watch = subprocess.Popen(
        [*entry_point(), *args, "--watch", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    watch.send_signal(signal.SIGINT)
    out, err = watch.communicate(timeout=30)
    lines = out.splitlines()
    assert len(lines) >= 2, (out, err)
    for line in lines:
        document = json.loads(line)
        assert document["kind"] == "status" and len(document["services"]) == 3

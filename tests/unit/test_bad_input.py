"""Bad input without a Docker engine: every case of tests/bad_input_cases.py that needs none,
through the real entry point, against a rendered deployment that must stay as it was. DOCKER_HOST
points at a socket that does not exist, so a case that got past its check fails loudly instead
of reaching an engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from deployer.cli.main import cli
from deployer.errors import ExitCode
from tests.bad_input_cases import (
    CASES,
    DOC_TABLE,
    GATEWAY_CASES,
    ROOT,
    Case,
    Workspace,
    check_outcome,
    markdown_table,
    restored,
    run_case,
    snapshot,
)
from tests.helpers.deployments import write_inventory

PORTS = {"medium": 15002, "mini": 15001, "micro": 15000}  # rendered only: nothing binds them


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A rendered tri-tier deployment (compose.yaml, .env, plan.json) on a 3-GPU inventory."""
    workspace = Workspace(
        tmp=tmp_path,
        home=tmp_path / "home",
        deployment="healthy",
        first_gpu=0,
        ports=PORTS,
        gpus_file=write_inventory(tmp_path / "gpus.json", 0),
        other="beside",
    )
    workspace.write_profile(workspace.good_profile())
    args = ["render", "-p", str(workspace.profile), "--gpus-file", str(workspace.gpus_file)]
    result = CliRunner().invoke(
        cli,
        ["--home", str(workspace.home), "--deployment", "healthy", *args, "--engine", "stand-in"],
    )
    assert result.exit_code == 0, result.output
    assert {".env", "compose.yaml", "plan.json"} <= {p.name for p in workspace.dir.iterdir()}
    workspace.profile.unlink()
    return workspace


@pytest.mark.parametrize("case", [c for c in CASES if not c.engine], ids=lambda c: c.id)
def test_bad_input_is_one_line_a_distinct_code_and_changes_nothing(
    case: Case, ws: Workspace
) -> None:
    with restored(ws.dir):
        cleanup = case.setup(ws) if case.setup else None
        before = snapshot(ws.home)
        try:
            outcome = run_case(
                case, ws, {"DOCKER_HOST": f"unix://{ws.tmp}/no-engine-in-unit-tests.sock"}
            )
            after = snapshot(ws.home)  # before the setup is undone (a mode, a link)
        finally:
            if cleanup:
                cleanup()
        check_outcome(case, outcome)
        assert after == before


def test_the_table_covers_the_issue() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 25
    # Every concern a user can cause has its own code, and each is exercised.
    assert {c.code for c in CASES} == {
        ExitCode.USAGE,
        ExitCode.PROFILE,
        ExitCode.INVENTORY,
        ExitCode.PLAN,
        ExitCode.DOCKER,
        ExitCode.DEPLOY,
        ExitCode.STATE,
        ExitCode.LOCKED,
        ExitCode.NAME_TAKEN,
    }
    assert len({int(code) for code in ExitCode}) == len(ExitCode)


def test_docs_table_is_the_case_table() -> None:
    """docs/troubleshooting-table.md is generated: `python -m tests.bad_input_cases`."""
    assert DOC_TABLE.read_text() == markdown_table()


def test_readme_troubleshooting_lists_every_case() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[-1].split("\n## ", 1)[0]
    missing = [c.id for c in (*CASES, *GATEWAY_CASES) if f"`{c.id}`" not in section]
    assert not missing, f"README.md's Troubleshooting section lacks {missing}"
    assert markdown_table() in section, "paste `python -m tests.bad_input_cases` into it"


def test_gateway_rows_are_well_formed() -> None:
    """Each request row can be sent as written: a method, a path, bytes, an error status."""
    ids = [c.id for c in GATEWAY_CASES]
    assert len(ids) == len(set(ids)) and not set(ids) & {c.id for c in CASES}
    for case in GATEWAY_CASES:
        assert case.method in ("GET", "POST") and case.path.startswith("/"), case.id
        assert isinstance(case.body, bytes) and 400 <= case.status < 500, case.id
        assert case.fragment and "\n" not in case.fragment, case.id

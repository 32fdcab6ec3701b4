"""The CLI starts fast: the group imports no command module, and a command imports only what it
uses (the timings themselves are in benchmarks/bench_cli.py)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from deployer.cli import main

ROOT = Path(__file__).resolve().parents[2]
GPUS_FILE = ROOT / "tests" / "fixtures" / "gpus" / "3x-rtx4090.json"
HEAVY = ("docker", "requests", "jinja2", "matplotlib", "fastapi", "uvicorn", "httpx")


def imported_after(code: str) -> set[str]:
    """The top-level module names imported by a fresh interpreter that runs `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def run_cli(*args: str) -> str:
    return (
        "import sys\nfrom deployer.cli.main import cli\n"
        f"try:\n    cli({list(args)!r}, prog_name='qwen-deploy')\n"
        "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
    )


def test_importing_the_cli_imports_no_command_and_no_heavy_library() -> None:
    modules = imported_after("import deployer.cli.main")
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    assert not {m for m in modules if m.startswith("deployer.cli.cmd_")}
    assert "yaml" not in modules


def test_help_imports_no_command_module() -> None:
    modules = imported_after(run_cli("--help"))
    assert not {m for m in modules if m.startswith("deployer.cli.cmd_")}
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_plan_and_the_inventory_commands_import_no_docker_jinja_or_matplotlib() -> None:
    for args in (
        ("plan", "-p", "tri-tier", "--gpus-file", str(GPUS_FILE)),
        ("gpus", "--gpus-file", str(GPUS_FILE)),
        ("profiles",),
        ("models",),
    ):
        modules = imported_after(run_cli(*args))
        assert not {m for m in modules if m.split(".")[0] in HEAVY}, args
        assert "deployer.plan" in modules or args[0] != "plan"
        # The shipped profiles and catalog are read from their parsed copy (shipped_yaml.json).
        assert "yaml" not in modules, args
        # Imported where used (issue 9): key generation, --debug tracebacks, HTTP clients.
        assert not {"secrets", "hmac", "traceback", "http.client", "ssl"} & modules, args


def test_render_imports_jinja_but_not_docker_or_matplotlib(tmp_path: Path) -> None:
    args = ("--home", str(tmp_path), "render", "-p", "tri-tier", "--gpus-file", str(GPUS_FILE))
    modules = imported_after(run_cli(*args))
    assert "jinja2" in modules and (tmp_path / "qwen3" / "compose.yaml").is_file()
    assert not {m for m in modules if m.split(".")[0] in set(HEAVY) - {"jinja2"}}


def test_the_lazy_table_lists_every_command_with_its_own_summary() -> None:
    found: dict[str, click.Command] = {}
    for module_name in main.COMMAND_MODULES:
        for command in importlib.import_module(module_name).COMMANDS:
            assert command.name in main.LAZY_COMMANDS, f"add {command.name} to LAZY_COMMANDS"
            lazy = main.LAZY_COMMANDS[command.name]
            assert f"deployer.cli.{lazy.module}" == module_name, command.name
            assert lazy.summary == command.get_short_help_str(10**6), command.name
            found[command.name] = command
    assert set(found) == set(main.LAZY_COMMANDS)


def test_the_group_help_is_what_click_prints_with_every_command_loaded() -> None:
    plain = click.Group(name="qwen-deploy", params=main.cli.params, help=main.cli.help)
    lazy = main.DeployGroup(name="qwen-deploy", params=main.cli.params, help=main.cli.help)
    loaded = main.DeployGroup(name="qwen-deploy", params=main.cli.params, help=main.cli.help)
    for module_name in main.COMMAND_MODULES:
        loaded._load(module_name)
        for command in importlib.import_module(module_name).COMMANDS:
            plain.add_command(command)
    for width in (60, 80, 120):
        texts = []
        for group in (lazy, loaded, plain):
            with click.Context(group, info_name="qwen-deploy", terminal_width=width) as ctx:
                texts.append(group.get_help(ctx))
        assert texts[0] == texts[1] == texts[2], width
        assert "  plan " in texts[0]


def test_an_unknown_command_is_still_a_usage_error() -> None:
    result = CliRunner().invoke(main.cli, ["plann"])
    assert result.exit_code == 2
    assert "No such command 'plann'" in result.output


def run_entry(*args: str, columns: str) -> tuple[str, set[str]]:
    """`qwen-deploy ARGS` through the console script's function: its output and its imports."""
    script = (
        "import json, sys\n"
        f"sys.argv = ['qwen-deploy', *{list(args)!r}]\n"
        "from deployer.cli.entry import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('\\x00' + json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "COLUMNS": columns}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=env
    ).stdout
    text, _, modules = out.rpartition("\x00")
    return text, set(json.loads(modules))


def clicks_help(columns: str) -> str:
    env = {**os.environ, "COLUMNS": columns}
    return subprocess.run(
        [sys.executable, "-m", "deployer.cli.main", "--help"],
        cwd=ROOT, capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip


def test_the_stored_help_is_what_click_prints() -> None:
    """Regenerate: COLUMNS=80 python -m deployer.cli.main --help > deployer/cli/help.txt"""
    stored = (ROOT / "deployer" / "cli" / "help.txt").read_text()
    regenerate = "COLUMNS=80 python -m deployer.cli.main --help > deployer/cli/help.txt"
    assert stored == clicks_help("80") == clicks_help("200"), f"regenerate it: {regenerate}"
    assert "Commands:" in stored and "  plan " in stored


def test_help_on_a_wide_terminal_imports_neither_click_nor_any_command() -> None:
    stored = (ROOT / "deployer" / "cli" / "help.txt").read_text()
    for flag in ("--help", "-h"):
        text, modules = run_entry(flag, columns="120")
        assert text == stored
        assert "click" not in modules and "deployer.cli.main" not in modules


def test_a_narrow_terminal_and_every_other_command_go_to_click() -> None:
    text, modules = run_entry("--help", columns="60")
    assert text == clicks_help("60") != clicks_help("80")
    assert "click" in modules
    text, modules = run_entry("profiles", columns="120")
    assert "tri-tier" in text and "deployer.cli.cmd_inventory" in modules


def test_the_console_script_is_the_entry_function() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'qwen-deploy = "deployer.cli.entry:main"' in pyproject


def status_modules(home: Path) -> list[str]:
    """The modules `status` imported, where no engine listens: it fails as before, exit 6."""
    script = (
        "import json, sys\nfrom deployer.cli.main import cli\n"
        f"try:\n    cli(['--home', {str(home)!r}, 'status'], prog_name='qwen-deploy')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps([code, sorted(sys.modules)]))"
    )
    env = {**os.environ, "DOCKER_HOST": f"unix://{home}/no-engine.sock"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=env
    )
    code, modules = json.loads(done.stdout.splitlines()[-1])
    assert code == 6 and "cannot reach the Docker engine" in done.stderr
    return list(modules)


def test_status_builds_no_docker_sdk_client(tmp_path: Path) -> None:
    """`status` reads containers through deployer.runtime.engine_api (the SDK, requests and
    urllib3 were most of its start-up), with a deployment directory or without one."""
    render = ("--home", str(tmp_path), "render", "-p", "tri-tier", "--gpus-file", str(GPUS_FILE))
    for rendered in (False, True):
        if rendered:
            subprocess.run([sys.executable, "-c", run_cli(*render)], cwd=ROOT, check=True)
        modules = status_modules(tmp_path)
        assert "deployer.runtime.engine_api" in modules
        assert (tmp_path / "qwen3" / "plan.json").is_file() == rendered
        assert not {m for m in modules if m.split(".")[0] in (*HEAVY, "urllib3")}, rendered
        assert not {"http.client", "ssl"} & set(modules)  # what a stdlib HTTP client costs


def test_the_runtime_package_loads_each_name_from_its_module() -> None:
    """deployer.runtime's names load lazily (PEP 562): importing the package or one submodule
    imports no other, and each name is its module's, even where a module shares its name."""
    modules = imported_after("import deployer.runtime, deployer.runtime.engine_api")
    assert {m for m in modules if m.startswith("deployer.runtime.")} == {
        "deployer.runtime.engine_api"
    }
    assert "docker" not in modules
    script = (
        "import importlib, deployer.runtime.down, deployer.runtime.logs\n"
        "from deployer import runtime\n"
        "for name, module in runtime._EXPORTS.items():\n"
        "    home = importlib.import_module(f'deployer.runtime.{module}')\n"
        "    assert getattr(runtime, name) is getattr(home, name), name\n"
        "assert set(runtime.__all__) == set(runtime._EXPORTS) <= set(dir(runtime))\n"
        "print(callable(runtime.down) and callable(runtime.logs))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "True"

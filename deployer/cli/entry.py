"""The `qwen-deploy` console script. `qwen-deploy --help` on a terminal 80 columns wide or more
(or not a terminal) prints help.txt, the text click prints there, without importing click or
anything else; every other command line goes to the click group in deployer.cli.main.

help.txt is generated (a unit test fails when it differs from click's own output):
    COLUMNS=80 python -m deployer.cli.main --help > deployer/cli/help.txt
"""

from __future__ import annotations

import os
import sys

HELP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "help.txt")
HELP_ARGS = (["--help"], ["-h"])
# click wraps help to min(terminal columns, 80) - 2: from 80 columns on, the text is the same.
MIN_COLUMNS = 80


def columns() -> int:
    """The terminal width as click reads it (shutil.get_terminal_size, without importing it)."""
    try:
        value = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        value = 0
    if value > 0:
        return value
    stdout = sys.__stdout__
    try:
        return (os.get_terminal_size(stdout.fileno()).columns if stdout else 0) or 80
    except (AttributeError, ValueError, OSError):
        return 80  # not a terminal: shutil's fallback


def stored_help() -> str | None:
    """The group's help, when it is what click would print here."""
    if sys.argv[1:] not in HELP_ARGS or columns() < MIN_COLUMNS:
        return None
    try:
        with open(HELP_FILE, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def main() -> None:
    """Console-script entry point."""
    text = stored_help()
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from deployer.cli.main import main as click_main

    click_main()

"""The table of every `vllm serve` option of the pinned vLLM, read from data/vllm_serve_options.txt.

The table was extracted from vLLM's make_arg_parser() (every option string argparse registers,
hidden aliases included). deployer code reads the same file to check profiles' extra_args, so
its path and format are stable. Format, one option per line:

    KIND[NARGS] FLAG[,ALIAS...] [!NEGATIVE-FLAG,...] [{CHOICE,...}] [=DEFAULT-AS-JSON]

KIND: str int float json/loads (JSON; two error wordings) hri (1k/1K) hria (hri, -1, auto)
uds (JSON or str) dc (JSON for a config dataclass) rp (reasoning parser) lower (lower-cased)
devids (device ids) bool (--x / --no-x style pair) true (store_true) append; an "o" prefix
means the value may also be "" or "None". NARGS is "+" or "?". No default means None (or a
config object the stand-in does not model). Fields are separated by single spaces; a line
starting with a space continues the line above (appended without a space); blank lines are ignored.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any

# Relative to this file, not importlib.resources: the image copies the stand-in's files to
# /opt/standin and runs them from there.
OPTIONS_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "data", "vllm_serve_options.txt"
)


def read_option_table(path: str = OPTIONS_FILE) -> str:
    """The option table's text (format above)."""
    with open(path, encoding="utf-8") as f:
        return f.read()


@dataclass(frozen=True)
class OptionSpec:
    """One `vllm serve` option of the table."""

    kind: str
    nargs: str | None
    flags: tuple[str, ...]
    negatives: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    default: Any = None

    @property
    def dest(self) -> str:
        long = next(f for f in self.flags if f.startswith("--"))
        return long[2:].replace("-", "_")


def load_option_specs(table: str | None = None) -> list[OptionSpec]:
    """Parse the option table (the data file by default) into specs."""
    if table is None:
        table = read_option_table()
    lines: list[str] = []
    for raw in table.splitlines():
        if not raw.strip():
            continue
        if raw.startswith(" "):
            lines[-1] += raw.strip()
        else:
            lines.append(raw.strip())
    specs = []
    for line in lines:
        parts = line.split(" ")
        kind, flags = parts[0], tuple(parts[1].split(","))
        nargs = None
        if kind[-1] in "+?":
            kind, nargs = kind[:-1], kind[-1]
        negatives: tuple[str, ...] = ()
        choices = None
        default = None
        for extra in parts[2:]:
            if extra.startswith("!"):
                negatives = tuple(extra[1:].split(","))
            elif extra.startswith("{"):
                choices = tuple(extra.strip("{}").split(","))
            elif extra.startswith("="):
                default = json.loads(extra[1:])
                if default == argparse.SUPPRESS:
                    default = argparse.SUPPRESS  # argparse compares by identity
        specs.append(OptionSpec(kind, nargs, flags, negatives, choices, default))
    return specs

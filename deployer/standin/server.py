#!/usr/bin/env python3
"""Stand-in for `vllm serve`: same CLI, HTTP API, logs and failures, no GPU.

Standard library only: it runs on a bare Debian python3. The image runs this file as a script
(`python3 /opt/standin/server.py serve MODEL ...`); in a checkout `python -m
deployer.standin.server serve ...` works too. See README.md beside this file for the flags, the
environment knobs and the fault modes; the modules follow vLLM's own layout (cli_args,
api_server, engine, gpu_worker, protocol, serving).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence


def _load_main() -> Callable[[Sequence[str] | None], None]:
    if __package__:
        return importlib.import_module(".api_server", __package__).main  # type: ignore[no-any-return]
    # Run as a file: import this directory as a package so that the modules' relative imports
    # work, with the directory itself off sys.path (its module names must not shadow stdlib).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[0] = os.path.dirname(here)
    return importlib.import_module(os.path.basename(here) + ".api_server").main  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: `server.py serve [MODEL] [options]`."""
    _load_main()(argv)


if __name__ == "__main__":
    main()

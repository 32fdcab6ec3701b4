"""How the process ends when something fails, with what vLLM prints then."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from .ledger import Ledger
from .logger import ENGINE, log, log_raw, log_uvicorn

# This instance's GPU claims, released on every exit (a crash leaves them stale instead).
ledger: Ledger | None = None


def die_after_requests(served: int) -> NoReturn:
    log(
        "ERROR",
        "core.py:1321",
        f"EngineCore encountered a fatal error (after {served} "
        "chat requests: STANDIN_FAULT die_after).",
        ENGINE,
    )
    log(
        "ERROR",
        "async_llm.py:612",
        "AsyncLLM output_handler failed.\nvllm.v1.engine."
        "exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) "
        "for the root cause.",
    )
    log_uvicorn("info", "Shutting down")
    os._exit(1)  # like a crash: ledger entries stay behind, unlocked (stale)


def fail_engine(exc_line: str, where: str) -> NoReturn:
    """Print what vLLM prints when the engine core dies during start-up, then exit 1."""
    pid = os.getpid()
    lines = [
        "EngineCore failed to start.",
        "Traceback (most recent call last):",
        '  File "vllm/v1/engine/core.py", line 1479, in run_engine_core',
        "    engine_core = EngineCoreProc(*args, engine_index=dp_rank, **kwargs)",
        f'  File "vllm/{where.split(":")[0]}", line {where.split(":")[-1]}, in <module>',
        exc_line,
    ]
    log("ERROR", "core.py:1488", "\n".join(lines), ENGINE)
    log_raw(f"Process EngineCore_DP0:\nTraceback (most recent call last):\n{exc_line}")
    log_raw(
        "Traceback (most recent call last):\n"
        '  File "vllm/entrypoints/cli/main.py", line 79, in main\n'
        "    args.dispatch_function(args)\n"
        "RuntimeError: Engine core initialization failed. See root cause above. "
        f"Failed core proc(s): {{'EngineCore_DP0': {pid + 1}}}"
    )
    release_and_exit(1)


def fail_api_server(exc_line: str) -> NoReturn:
    """An uncaught exception in the API server process (before the engine starts)."""
    log_raw(
        "Traceback (most recent call last):\n"
        '  File "vllm/entrypoints/cli/main.py", line 79, in main\n'
        "    args.dispatch_function(args)\n"
        f"{exc_line}"
    )
    release_and_exit(1)


def release_and_exit(code: int) -> NoReturn:
    if ledger is not None:
        ledger.release()
    sys.stdout.flush()
    os._exit(code)

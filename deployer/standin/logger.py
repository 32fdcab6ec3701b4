"""Log lines in vLLM's format: "(APIServer pid=1) INFO 11-25 03:49:00 [file.py:123] message"."""

from __future__ import annotations

import os
import sys
import threading
import time

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


_UVICORN_LEVELS = {"trace": 5, "debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


ENGINE = "EngineCore_DP0"


_log_lock = threading.Lock()


_uvicorn_level = 20


def _vllm_level() -> int:
    return _LEVELS.get(os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper(), 20)


def log(level: str, where: str, message: str, process: str = "APIServer") -> None:
    """Print one vLLM-style log line (each line of a multi-line message gets the prefix)."""
    if _LEVELS[level] < _vllm_level():
        return
    stamp = time.strftime("%m-%d %H:%M:%S")
    prefix = f"({process} pid={os.getpid()}) {level} {stamp} [{where}]"
    with _log_lock:
        for line in message.split("\n"):
            sys.stdout.write(f"{prefix} {line}\n")
        sys.stdout.flush()


def log_raw(text: str) -> None:
    """Print text as-is (uncaught tracebacks, uvicorn lines)."""
    with _log_lock:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def log_uvicorn(level: str, message: str) -> None:
    if _UVICORN_LEVELS[level.lower()] < _uvicorn_level:
        return
    log_raw(f"(APIServer pid={os.getpid()}) {(level.upper() + ':'):<9} {message}")


def set_uvicorn_level(name: str) -> None:
    """--uvicorn-log-level: which uvicorn lines are printed."""
    global _uvicorn_level
    _uvicorn_level = _UVICORN_LEVELS[name]

"""`vllm serve`'s process: start-up, then the HTTP server, the routes log and the stats loop."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from http.server import ThreadingHTTPServer
from typing import Any

from . import process
from .cli_args import build_parser
from .engine import Engine
from .handler import Handler
from .logger import log, log_uvicorn
from .process import fail_api_server, release_and_exit
from .settings import env_float
from .startup import startup


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: `server.py serve [MODEL] [options]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "serve":
        # Only the serve subcommand exists here; let argparse explain.
        build_parser().parse_args(argv or ["--help"])
        sys.exit(2)

    def on_signal(signum: int, _frame: Any) -> None:
        log_uvicorn("info", "Shutting down")
        log("INFO", "launcher.py:112", "Shutting down FastAPI HTTP server.")
        log_uvicorn("info", "Waiting for application shutdown.")
        log_uvicorn("info", "Application shutdown complete.")
        release_and_exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    env = dict(os.environ)
    settings, host, port = startup(argv[1:], env)

    engine = Engine(settings)
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server_class = type(
        "StandinHTTPServer",
        (ThreadingHTTPServer,),
        {
            "allow_reuse_address": True,
            "request_queue_size": 2048,  # uvicorn's --backlog; socketserver's 5 resets bursts
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
        },
    )
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        fail_api_server(
            f"OSError: [Errno {exc.errno}] error while attempting to bind on address "
            f"('{host}', {port}): {exc.strerror}"
        )
    server.daemon_threads = True
    if process.ledger is not None:
        process.ledger.set_state("ready")
    log("INFO", "api_server.py:139", f"Starting vLLM server on http://{host}:{port}")
    log("INFO", "launcher.py:188", "Available routes are:")
    for route, methods in (
        ("/health", "GET"),
        ("/metrics", "GET"),
        ("/ping", "GET, POST"),
        ("/version", "GET"),
        ("/v1/models", "GET"),
        ("/v1/chat/completions", "POST"),
        ("/v1/completions", "POST"),
        ("/tokenize", "POST"),
        ("/detokenize", "POST"),
    ):
        log("INFO", "launcher.py:197", f"Route: {route}, Methods: {methods}")
    log_uvicorn("info", f"Started server process [{os.getpid()}]")
    log_uvicorn("info", "Waiting for application startup.")
    log_uvicorn("info", "Application startup complete.")
    if not settings.args.disable_log_stats:
        interval = env_float(env, "VLLM_LOG_STATS_INTERVAL", 10.0)

        def stats() -> None:
            while True:
                time.sleep(interval)
                line = engine.stats_line(interval)
                if line:
                    log("INFO", "loggers.py:278", line)

        threading.Thread(target=stats, daemon=True).start()
    server.serve_forever(poll_interval=0.2)

"""`python -m deployer.gateway --plan plan.json`: the gateway as its container runs it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deployer.errors import DeployError
from deployer.gateway.server import config_for_files, serve, with_listen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployer.gateway")
    parser.add_argument("--plan", type=Path, required=True, help="the deployment's plan.json")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--upstream", choices=("network", "host"), default="network")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        config = config_for_files(args.plan, os.environ, args.upstream)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
    serve(with_listen(config, args.host, args.port), args.log_level)


if __name__ == "__main__":
    main()

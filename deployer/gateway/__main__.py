"""`python -m deployer.gateway --plan plan.json`: the gateway as its container runs it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deployer.errors import DeployError
from deployer.gateway.server import (
    config_for_files,
    config_from_environment,
    serve,
    with_listen,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployer.gateway")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", type=Path, help="the deployment's plan.json")
    source.add_argument(
        "--config-env", metavar="VAR", help="read the config (public_config's JSON) from $VAR"
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--upstream", choices=("network", "host"), default="network")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        if args.plan:
            config = config_for_files(args.plan, os.environ, args.upstream)
        else:
            config = config_from_environment(os.environ, args.config_env)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
    serve(with_listen(config, args.host, args.port), args.log_level)


if __name__ == "__main__":
    main()

"""What containers get besides their spec: the .env keys and HF_TOKEN. Its own module, so that
`status` (which hashes a plan's specs with it) imports no Docker SDK through operations.py."""

from __future__ import annotations

import os
from collections.abc import Mapping


def runtime_env(keys: Mapping[str, str], hf_token: str | None = None) -> dict[str, str]:
    """What containers get besides their spec: the .env keys and HF_TOKEN (from --hf-token-file,
    else the environment). The token goes to the containers only, never into a file."""
    env = dict(keys)
    token = hf_token or os.environ.get("HF_TOKEN")
    if token:
        env["HF_TOKEN"] = token
    return env

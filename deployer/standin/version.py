"""The vLLM release the stand-in imitates, from the project's one pin (deployer/vllm_pin.py).

The stand-in imports nothing from deployer (it is the independent oracle), so it reads the pin
as data: in the image, from data/vllm_version written by the build (scripts/build-images.sh
passes vllm_pin's version as a build argument); in a checkout or an installed package, from the
literal `VLLM_VERSION = "..."` in ../vllm_pin.py.
"""

from __future__ import annotations

import ast
import os

HERE = os.path.dirname(os.path.abspath(__file__))
BAKED_VERSION_FILE = os.path.join(HERE, "data", "vllm_version")  # only inside the image
PIN_FILE = os.path.join(os.path.dirname(HERE), "vllm_pin.py")


def pinned_version(baked: str = BAKED_VERSION_FILE, pin: str = PIN_FILE) -> str:
    """The pinned vLLM version ("0.33.0"); RuntimeError when neither source is there."""
    if os.path.exists(baked):
        with open(baked, encoding="utf-8") as f:
            return f.read().strip()
    try:
        with open(pin, encoding="utf-8") as f:
            tree = ast.parse(f.read(), pin)
    except FileNotFoundError:
        raise RuntimeError(f"no vLLM version: neither {baked} nor {pin} exists") from None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["VLLM_VERSION"]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise RuntimeError(f"{pin} has no VLLM_VERSION = '...' line")


VLLM_VERSION = pinned_version()

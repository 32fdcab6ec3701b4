"""The gateway's container image: built locally, never pulled. For vLLM, FROM the pinned
vllm/vllm-openai image adding only the gateway's code; for the stand-in, on the debootstrapped
base image with the dependencies copied from this environment. The tag carries a digest of the
code, so a changed gateway gets a new image (and `up` recreates its container)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from deployer.vllm_pin import VLLM_IMAGE

GATEWAY_REPO = "qwen-deploy/gateway"
BASE_IMAGE = "qwen-deploy/base:bookworm"
PACKAGE = Path(__file__).resolve().parent.parent  # deployer/
DOCKER_DIR = Path(__file__).resolve().parent / "docker"
# What `python -m deployer.gateway` imports beyond the standard library (and deployer itself).
SITE_MODULES = (
    "fastapi", "starlette", "pydantic", "pydantic_core", "annotated_types", "annotated_doc",
    "typing_inspection", "typing_extensions", "anyio", "sniffio", "idna", "httpx", "httpcore",
    "h11", "certifi", "prometheus_client", "uvicorn", "click", "httptools", "uvloop", "yaml",
    "opentelemetry",  # fastapi >= 0.16x imports it
)  # fmt: skip
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def source_digest() -> str:
    """12 hex digits over the package's Python files and the gateway's Dockerfiles: the same
    in a checkout and in an installed wheel (which also carries profiles and templates)."""
    digest = hashlib.sha256()
    files = [*PACKAGE.rglob("*.py"), *DOCKER_DIR.glob("Dockerfile.*")]
    for path in sorted(p for p in files if "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def image_tag(engine: str) -> str:
    flavour = "standin" if engine == "stand-in" else "vllm"
    return f"{GATEWAY_REPO}:{flavour}-{source_digest()}"


def build_context(dest: Path, engine: str) -> Path:
    """Lay out the docker build context in `dest`; returns its Dockerfile."""
    shutil.copytree(PACKAGE, dest / "deployer", ignore=_IGNORE)
    dockerfile = dest / "Dockerfile"
    if engine == "stand-in":
        site = dest / "site"
        site.mkdir()
        for name in SITE_MODULES:
            spec = importlib.util.find_spec(name)
            if spec is None:
                continue  # optional accelerators (uvloop, httptools) may be missing
            if spec.origin is None:  # a namespace package: merge its portions
                for location in spec.submodule_search_locations or ():
                    shutil.copytree(location, site / name, ignore=_IGNORE, dirs_exist_ok=True)
                continue
            origin = Path(spec.origin)
            if origin.name == "__init__.py":
                shutil.copytree(origin.parent, site / name, ignore=_IGNORE)
            else:
                shutil.copy2(origin, site / origin.name)
        shutil.copy2(DOCKER_DIR / "Dockerfile.standin", dockerfile)
    else:
        shutil.copy2(DOCKER_DIR / "Dockerfile.vllm", dockerfile)
    return dockerfile


def build(client: Any, engine: str, base_image: str | None = None) -> str:
    """Build the image with the Docker SDK unless its tag is there already; returns the tag.
    `base_image`: the vLLM image the deployment runs (or the stand-in's base)."""
    import docker

    tag = image_tag(engine)
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    arg = "BASE_IMAGE" if engine == "stand-in" else "VLLM_IMAGE"
    base = base_image or (BASE_IMAGE if engine == "stand-in" else VLLM_IMAGE)
    with tempfile.TemporaryDirectory(prefix="qwen-deploy-gateway-") as tmp:
        build_context(Path(tmp), engine)
        client.images.build(
            path=tmp, tag=tag, buildargs={arg: base}, rm=True, forcerm=True, pull=False
        )
    return tag


def main(argv: list[str] | None = None) -> None:
    """`python -m deployer.gateway.images --engine stand-in`: build the image, print its tag."""
    import docker

    parser = argparse.ArgumentParser(prog="python -m deployer.gateway.images")
    parser.add_argument("--engine", choices=("stand-in", "vllm"), default="stand-in")
    parser.add_argument("--base", help="base image (stand-in) or vLLM image to build FROM")
    args = parser.parse_args(argv)
    try:
        print(build(docker.from_env(), args.engine, args.base))
    except docker.errors.DockerException as exc:
        print(f"error: cannot build the gateway image: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

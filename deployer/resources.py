"""Where the shipped files are: profiles/, compose_templates/ and the stand-in's build context.

The repository keeps profiles/ and compose_templates/ at its top level. A wheel carries them
inside the package as deployer/data/<name>/ (setup.py maps them there), so an installed
qwen-deploy finds them as package resources; a checkout or an editable install finds them
beside the package instead.
"""

from __future__ import annotations

from pathlib import Path

# The package's own directory. A wheel is installed unpacked, so its resources are plain files
# here (what importlib.resources.files("deployer") returns, without importing it at start-up).
PACKAGE = Path(__file__).resolve().parent

# The shipped directories that live at the top of the repository.
SHIPPED = ("profiles", "compose_templates")


def shipped_dir(name: str) -> Path:
    """The shipped directory `name` (one of SHIPPED): the package's copy, else the checkout's."""
    if name not in SHIPPED:
        raise ValueError(f"{name!r} is not one of {', '.join(SHIPPED)}")
    packaged = PACKAGE / "data" / name
    if packaged.is_dir():
        return packaged
    checkout = PACKAGE.parent / name
    return checkout if checkout.is_dir() else packaged


def profiles_dir() -> Path:
    """The shipped profiles (`qwen-deploy profiles`)."""
    return shipped_dir("profiles")


def templates_dir() -> Path:
    """The compose file templates `render` applies."""
    return shipped_dir("compose_templates")


def standin_dir() -> Path:
    """The stand-in's Docker build context (its Dockerfile and the files it copies)."""
    return PACKAGE / "standin"


def default_home() -> Path:
    """Where deployment directories live unless --home says otherwise (user state, not shipped)."""
    return Path.home() / ".local" / "share" / "qwen-deploy"

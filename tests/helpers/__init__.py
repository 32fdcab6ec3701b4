"""What tests share, imported by name (never from a conftest file): fixture files and the
reference deployment. pytest fixtures stay in the conftest files; plain helpers live here."""

from tests.helpers.fixtures import (
    BOX_FILE,
    FIXTURES,
    GPU_FILES,
    ROOT,
    inventory,
    tri_tier_plan,
)

__all__ = [
    "BOX_FILE",
    "FIXTURES",
    "GPU_FILES",
    "ROOT",
    "inventory",
    "tri_tier_plan",
]

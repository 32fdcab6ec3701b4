"""Shared fixtures: GPU inventories and profiles are files under tests/fixtures/."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.catalog import Catalog, load_catalog
from deployer.gpus import GpuInventory, load_inventory_file

FIXTURES = Path(__file__).parent / "fixtures"
GPU_FILES = FIXTURES / "gpus"


def inventory(name: str) -> GpuInventory:
    return load_inventory_file(GPU_FILES / f"{name}.json")


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()

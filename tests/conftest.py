"""Shared pytest fixtures. Plain helpers (fixture files, the reference deployment) are in
tests/helpers, which test modules import; nothing imports from a conftest file."""

from __future__ import annotations

import pytest

from deployer.catalog import Catalog, load_catalog
from tests.helpers import FIXTURES, GPU_FILES, inventory  # noqa: F401 - for imports not yet moved


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()

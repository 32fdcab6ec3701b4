"""The fixture files (tests/fixtures/) and the reference deployment built from them."""

from __future__ import annotations

from pathlib import Path

from deployer.catalog import Catalog, load_catalog
from deployer.gpus import GpuInventory, load_inventory_file
from deployer.plan import DeploymentPlan
from deployer.planner import PlanOptions, plan
from deployer.profiles import load_profile

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GPU_FILES = FIXTURES / "gpus"
BOX_FILE = GPU_FILES / "3x-rtx4090.json"  # the reference box: three RTX 4090s


def inventory(name: str) -> GpuInventory:
    """A GPU inventory from tests/fixtures/gpus/NAME.json."""
    return load_inventory_file(GPU_FILES / f"{name}.json")


def tri_tier_plan(
    catalog: Catalog | None = None, engine: str = "vllm", deployment: str = "qwen3"
) -> DeploymentPlan:
    """The reference deployment: the shipped tri-tier profile planned on three RTX 4090s."""
    options = PlanOptions(deployment=deployment, engine=engine)
    return plan(
        inventory("3x-rtx4090"), load_profile("tri-tier"), catalog or load_catalog(), options
    )

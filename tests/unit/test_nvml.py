"""The NVML reader's reserved-memory query. NVML cannot run here (no driver), so these use a
stand-in module with pynvml's shape: only the v2 call and its fallbacks are under test."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from deployer.gpus import MIB
from deployer.nvml import _reserved_mib


class _NVMLError(Exception):
    pass


def _pynvml(**overrides: Any) -> Any:
    def memory_info(handle: Any, version: int | None = None) -> Any:
        assert version == 33554472  # pynvml.nvmlMemory_v2
        return SimpleNamespace(total=24564 * MIB, reserved=358 * MIB, free=0, used=0)

    fields = {"nvmlMemory_v2": 33554472, "NVMLError": _NVMLError,
              "nvmlDeviceGetMemoryInfo": memory_info, **overrides}  # fmt: skip
    return SimpleNamespace(**fields)


def test_reserved_memory_comes_from_the_v2_call() -> None:
    assert _reserved_mib(_pynvml(), object()) == 358


def test_old_drivers_and_old_bindings_fall_back_to_the_default() -> None:
    def missing(handle: Any, version: int | None = None) -> Any:
        raise _NVMLError("Function Not Found")

    assert _reserved_mib(_pynvml(nvmlDeviceGetMemoryInfo=missing), object()) is None
    no_v2 = _pynvml()
    del no_v2.nvmlMemory_v2
    assert _reserved_mib(no_v2, object()) is None

"""Read the GPU inventory through NVML (nvidia-ml-py). The only module that loads libnvidia-ml."""

from __future__ import annotations

from typing import Any

from deployer.errors import InventoryError
from deployer.gpus import MIB, Gpu, GpuInventory, GpuProcess, printable

NO_GPU_HINT = "pass --gpus-file FILE to plan for another box (see `qwen-deploy gpus --help`)"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_inventory() -> GpuInventory:
    """Query every GPU, its memory, capability, MIG mode and compute processes."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        raise InventoryError("nvidia-ml-py is not installed", hint=NO_GPU_HINT) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise InventoryError(
            f"cannot talk to the NVIDIA driver: {exc} (is the driver installed and loaded?)",
            hint=NO_GPU_HINT,
        ) from None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        gpus = tuple(_read_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as exc:
        raise InventoryError(f"NVML query failed: {exc}", hint=NO_GPU_HINT) from None
    finally:
        pynvml.nvmlShutdown()
    if not gpus:
        raise InventoryError("the NVIDIA driver reports no GPUs", hint=NO_GPU_HINT)
    return GpuInventory(
        driver_version=driver,
        cuda_version=f"{cuda // 1000}.{(cuda % 1000) // 10}",
        gpus=gpus,
    )


def _read_gpu(pynvml: Any, index: int) -> Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    reserved = _reserved_mib(pynvml, handle)
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    try:
        mig_enabled = pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
    except pynvml.NVMLError:  # NotSupported on consumer cards
        mig_enabled = False
    processes = []
    try:
        running = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError:  # NoPermission in some containers
        running = []
    for proc in running:
        try:
            # Any local user names their own process: escape what a terminal would obey.
            name = printable(_text(pynvml.nvmlSystemGetProcessName(proc.pid)))
        except pynvml.NVMLError:
            name = "?"
        used = proc.usedGpuMemory or 0  # None when the driver cannot tell
        processes.append(GpuProcess(pid=proc.pid, name=name, used_memory_mib=used // MIB))
    return Gpu(
        index=index,
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        name=printable(_text(pynvml.nvmlDeviceGetName(handle))),
        memory_total_mib=memory.total // MIB,
        memory_used_mib=memory.used // MIB,
        compute_capability=f"{major}.{minor}",
        mig_enabled=mig_enabled,
        processes=tuple(processes),
        memory_reserved_mib=reserved,
    )


def _reserved_mib(pynvml: Any, handle: Any) -> int | None:
    """NVML's reserved memory (v2 call, driver R510+): what cudaMemGetInfo's total leaves out.
    None where the driver or nvidia-ml-py lacks the v2 call: the planner's default applies."""
    version = getattr(pynvml, "nvmlMemory_v2", None)
    if version is None:
        return None
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(handle, version=version)
    except (pynvml.NVMLError, TypeError):  # FunctionNotFound on old drivers
        return None
    reserved = getattr(info, "reserved", None)
    return int(reserved) // MIB if isinstance(reserved, int) else None

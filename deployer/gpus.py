"""GPU inventory: domain types and the JSON that `gpus --json` prints and `--gpus-file` reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deployer.errors import InventoryError

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    used_memory_mib: int


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    compute_capability: str  # "8.9"
    mig_enabled: bool = False
    processes: tuple[GpuProcess, ...] = ()
    # NVML's reserved memory (nvmlDeviceGetMemoryInfo_v2): not in cudaMemGetInfo's total, which
    # vLLM multiplies gpu_memory_utilization by. None: the planner uses its per-model default.
    memory_reserved_mib: int | None = None

    @property
    def memory_free_mib(self) -> int:
        return max(0, self.memory_total_mib - self.memory_used_mib)

    @property
    def capability(self) -> int:
        """Compute capability as vLLM compares it: major * 10 + minor (8.9 -> 89)."""
        major, _, minor = self.compute_capability.partition(".")
        return int(major) * 10 + int(minor or 0)

    @property
    def total_bytes(self) -> int:
        return self.memory_total_mib * MIB

    @property
    def free_bytes(self) -> int:
        return self.memory_free_mib * MIB


@dataclass(frozen=True)
class GpuInventory:
    driver_version: str
    cuda_version: str
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    source: str = "nvml"  # "nvml" or the --gpus-file path

    def by_index(self, index: int) -> Gpu:
        for gpu in self.gpus:
            if gpu.index == index:
                return gpu
        raise InventoryError(f"GPU {index} does not exist; this box has GPUs {self.indices_text()}")

    def indices_text(self) -> str:
        return ", ".join(str(g.index) for g in self.gpus) or "none"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        for gpu, raw in zip(self.gpus, data["gpus"], strict=True):
            raw["memory_free_mib"] = gpu.memory_free_mib
        return data


_REQUIRED_GPU_KEYS = ("index", "name", "memory_total_mib", "compute_capability")


def inventory_from_dict(data: Any, source: str = "<dict>") -> GpuInventory:
    """Validate the `gpus --json` document; every problem names the file and the field."""
    if not isinstance(data, dict):
        raise InventoryError(f"{source}: expected a JSON object with a 'gpus' list")
    raw_gpus = data.get("gpus")
    if not isinstance(raw_gpus, list):
        raise InventoryError(f"{source}: missing 'gpus' (expected a list of GPU objects)")
    gpus: list[Gpu] = []
    seen: set[int] = set()
    for position, raw in enumerate(raw_gpus):
        where = f"{source}: gpus[{position}]"
        if not isinstance(raw, dict):
            raise InventoryError(f"{where}: expected an object")
        missing = [k for k in _REQUIRED_GPU_KEYS if k not in raw]
        if missing:
            raise InventoryError(f"{where}: missing {', '.join(missing)}")
        try:
            index = int(raw["index"])
            total = int(raw["memory_total_mib"])
            used = int(raw.get("memory_used_mib", 0))
            capability = str(raw["compute_capability"])
            major, _, minor = capability.partition(".")
            int(major), int(minor or 0)
            processes = tuple(
                GpuProcess(
                    pid=int(p.get("pid", 0)),
                    name=str(p.get("name", "?")),
                    used_memory_mib=int(p.get("used_memory_mib", 0)),
                )
                for p in raw.get("processes", [])
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise InventoryError(f"{where}: bad value ({exc})") from None
        if index in seen:
            raise InventoryError(f"{where}: index {index} appears twice")
        if total <= 0 or used < 0 or used > total:
            raise InventoryError(
                f"{where}: memory_used_mib {used} must be between 0 and memory_total_mib {total}"
            )
        reserved = raw.get("memory_reserved_mib")
        if reserved is not None and (
            isinstance(reserved, bool) or not isinstance(reserved, int) or not 0 <= reserved < total
        ):
            raise InventoryError(
                f"{where}: memory_reserved_mib {reserved!r} must be a whole number of MiB between "
                f"0 and memory_total_mib {total} (or absent: a default for the GPU model is used)"
            )
        seen.add(index)
        gpus.append(
            Gpu(
                index=index,
                uuid=str(raw.get("uuid", f"GPU-{index}")),
                name=str(raw["name"]),
                memory_total_mib=total,
                memory_used_mib=used,
                compute_capability=capability,
                mig_enabled=bool(raw.get("mig_enabled", False)),
                processes=processes,
                memory_reserved_mib=reserved,
            )
        )
    return GpuInventory(
        driver_version=str(data.get("driver_version", "unknown")),
        cuda_version=str(data.get("cuda_version", "unknown")),
        gpus=tuple(sorted(gpus, key=lambda g: g.index)),
        source=source,
    )


def load_inventory_file(path: str | Path) -> GpuInventory:
    """Read a `--gpus-file`."""
    from deployer.safeload import load_json, read_text  # bounded, UTF-8, finite numbers

    path = Path(path)
    text = read_text(path, "GPU file", InventoryError)
    data = load_json(
        text, str(path), InventoryError, hint="write it with `qwen-deploy gpus --json`"
    )
    return inventory_from_dict(data, source=str(path))

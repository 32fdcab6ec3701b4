"""GPU inventory: domain types and the JSON that `gpus --json` prints and `--gpus-file` reads."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deployer.errors import InventoryError

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class GpuProcess:
    """A process NVML lists on a GPU, with the memory it holds."""

    pid: int
    name: str
    used_memory_mib: int


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML (or a --gpus-file) describes it."""

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
    """The GPUs of one box and where the description came from."""

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
MAX_GPU_INDEX = 1023  # the profile side's limit too (profiles.py)
MAX_MEMORY_MIB = 1 << 30  # 1 PiB: far above any GPU, far below where float arithmetic overflows
MAX_TEXT = 256
_CAPABILITY = re.compile(r"^(\d{1,2})(?:\.(\d{1,2}))?$")


def printable(text: str) -> str:
    """`text` with control and format characters escaped (\\n, \\x1b, \\u202e): safe to print
    on a terminal, whatever a process or a file named itself."""
    return "".join(
        c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def _shown(value: Any) -> str:
    """A value as the file wrote it, escaped and short, for an error message."""
    text = json.dumps(value)  # escapes control characters; never raises on parsed JSON
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(raw: dict[str, Any], key: str, where: str, low: int, high: int, unit: str) -> int:
    """A JSON integer from low to high; booleans, strings and floats are refused, as a
    profile refuses them (`true` is not GPU 1, 1e308 is not a memory size)."""
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InventoryError(
            f"{where}: bad value for {key}: expected {unit} from {low} to "
            f"{high if high < 10_000 else f'{high:,}'}, "
            f"got {_shown(value)}"
        )
    return value


def _text(raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    """A string of printable characters (names are shown on terminals: no escape sequences)."""
    value = raw.get(key, default)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise InventoryError(
            f"{where}: bad value for {key}: expected a string of 1 to {MAX_TEXT} characters, "
            f"got {_shown(value)}"
        )
    if printable(value) != value:
        raise InventoryError(
            f"{where}: bad value for {key}: {_shown(value)} has control characters",
            hint="write the file with `qwen-deploy gpus --json`",
        )
    return value


def _capability(raw: dict[str, Any], where: str) -> str:
    value = raw["compute_capability"]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        value = str(value)  # 8.9 written as a number
    match = _CAPABILITY.match(value) if isinstance(value, str) else None
    if match is None:
        raise InventoryError(
            f"{where}: bad value for compute_capability: {_shown(value)} is not MAJOR.MINOR "
            '(e.g. "8.9", as NVML reports it)'
        )
    return f"{int(match.group(1))}.{int(match.group(2) or 0)}"


def _processes(raw: dict[str, Any], where: str, total: int) -> tuple[GpuProcess, ...]:
    value = raw.get("processes", [])
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise InventoryError(
            f"{where}: bad value for processes: expected a list of objects like "
            '{"pid": 4242, "name": "python", "used_memory_mib": 12288}'
        )
    processes = []
    for number, proc in enumerate(value):
        at = f"{where}.processes[{number}]"
        proc = {"pid": 0, "name": "?", "used_memory_mib": 0, **proc}
        processes.append(
            GpuProcess(
                pid=_integer(proc, "pid", at, 0, 2**31 - 1, "a process id"),
                name=_text(proc, "name", at),
                used_memory_mib=_integer(
                    proc, "used_memory_mib", at, 0, total, "a whole number of MiB"
                ),
            )
        )
    return tuple(processes)


def _mig(raw: dict[str, Any], where: str) -> bool:
    value = raw.get("mig_enabled", False)
    if not isinstance(value, bool):  # "false" is a non-empty string: bool() would say True
        raise InventoryError(
            f"{where}: bad value for mig_enabled: expected true or false (a JSON boolean), "
            f"got {_shown(value)}"
        )
    return value


def _version(data: dict[str, Any], key: str, source: str) -> str:
    value = data.get(key, "unknown")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # "cuda_version": 12.4 written as a number
    return _text({key: value}, key, source)


def _gpu(raw: Any, where: str) -> Gpu:
    if not isinstance(raw, dict):
        raise InventoryError(f"{where}: expected an object")
    missing = [k for k in _REQUIRED_GPU_KEYS if k not in raw]
    if missing:
        raise InventoryError(f"{where}: missing {', '.join(missing)}")
    index = _integer(raw, "index", where, 0, MAX_GPU_INDEX, "a GPU index")
    total = _integer(raw, "memory_total_mib", where, 1, MAX_MEMORY_MIB, "a whole number of MiB")
    used = _integer(
        {"memory_used_mib": 0, **raw},
        "memory_used_mib",
        where,
        0,
        MAX_MEMORY_MIB,
        "a whole number of MiB",
    )
    if used > total:
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
    return Gpu(
        index=index,
        uuid=_text(raw, "uuid", where, default=f"GPU-{index}"),
        name=_text(raw, "name", where),
        memory_total_mib=total,
        memory_used_mib=used,
        compute_capability=_capability(raw, where),
        mig_enabled=_mig(raw, where),
        processes=_processes(raw, where, total),
        memory_reserved_mib=reserved,
    )


def inventory_from_dict(data: Any, source: str = "<dict>") -> GpuInventory:
    """Validate the `gpus --json` document strictly (no type is coerced into another); every
    problem names the file and the field."""
    if not isinstance(data, dict):
        raise InventoryError(f"{source}: expected a JSON object with a 'gpus' list")
    raw_gpus = data.get("gpus")
    if not isinstance(raw_gpus, list):
        raise InventoryError(f"{source}: missing 'gpus' (expected a list of GPU objects)")
    gpus: list[Gpu] = []
    seen: set[int] = set()
    for position, raw in enumerate(raw_gpus):
        where = f"{source}: gpus[{position}]"
        gpu = _gpu(raw, where)
        if gpu.index in seen:
            raise InventoryError(f"{where}: index {gpu.index} appears twice")
        seen.add(gpu.index)
        gpus.append(gpu)
    return GpuInventory(
        driver_version=_version(data, "driver_version", source),
        cuda_version=_version(data, "cuda_version", source),
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

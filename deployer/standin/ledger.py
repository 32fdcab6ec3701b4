"""The GPU-memory ledger that stands in for CUDA: every stand-in on a host records what it holds.

One file per instance per GPU under a shared directory (a Docker volume), each held under an
exclusive flock for the owner's lifetime, so a crashed instance's claim goes stale by itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass

DEFAULT_LEDGER_DIR = "/var/lib/standin-ledger"


def parse_gpu_map(text: str | None) -> dict[str, int]:
    """'0:24564,1:24564' -> {'0': 24564, '1': 24564} (MiB per GPU id)."""
    result: dict[str, int] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.rpartition(":")
        if not sep or not key:
            raise ValueError(f"bad GPU memory entry {item!r}; expected ID:MIB")
        result[key.strip()] = int(value)
    return result


def visible_gpus(env: dict[str, str], totals: dict[str, int]) -> list[str]:
    """GPU ids from NVIDIA_VISIBLE_DEVICES (what Docker's --gpus sets); [] without GPUs."""
    raw = env.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if raw in ("", "void", "none"):
        return []
    if raw == "all":
        return sorted(totals, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    return [g.strip() for g in raw.split(",") if g.strip()]


@dataclass(frozen=True)
class LedgerEntry:
    """A live instance's claim on one GPU."""

    name: str
    gpu: str
    requested: int  # bytes
    state: str  # "loading" | "ready"
    model: str


_ENTRY_SIZE = 512  # fixed-size records: updates are one pwrite, never a truncate


class Ledger:
    """Per-GPU claims in LEDGER_DIR/gpu-<id>/<instance>.json, each held under an exclusive
    flock for the owner's lifetime; an entry whose lock can be taken belongs to a dead
    instance and is removed."""

    def __init__(self, root: str, instance: str) -> None:
        self.root = root
        self.instance = instance
        self._fds: dict[str, int] = {}
        self._claims: dict[str, tuple[int, str]] = {}

    def _dir(self, gpu: str) -> str:
        return os.path.join(self.root, "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", gpu))

    def entries(self, gpu: str) -> list[LedgerEntry]:
        """Live entries of other instances on this GPU (stale ones are deleted)."""
        directory = self._dir(gpu)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        live = []
        for fname in names:
            if not fname.endswith(".json") or fname == self.instance + ".json":
                continue
            path = os.path.join(directory, fname)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    entry = self._read(fd, fname[:-5], gpu)
                    if entry is not None:
                        live.append(entry)
                    continue
                # We got the lock: its owner is gone. Remove it while we still hold it.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            finally:
                os.close(fd)
        return live

    @staticmethod
    def _read(fd: int, name: str, gpu: str) -> LedgerEntry | None:
        for _ in range(5):
            raw = os.pread(fd, _ENTRY_SIZE, 0).decode("utf-8", "replace").strip("\0 \n")
            if not raw:  # created but not written yet: a starting instance
                return LedgerEntry(name, gpu, 0, "loading", "")
            try:
                data = json.loads(raw)
            except ValueError:
                time.sleep(0.01)
                continue
            return LedgerEntry(
                name, gpu, int(data["requested"]), str(data["state"]), str(data["model"])
            )
        return None

    def register(self, gpu: str, requested: int, model: str) -> None:
        """Claim `requested` bytes on `gpu` in state loading (held until release())."""
        directory = self._dir(gpu)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, self.instance + ".json"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fds[gpu] = fd
        self._claims[gpu] = (requested, model)
        self._write(gpu, "loading")

    def _write(self, gpu: str, state: str) -> None:
        requested, model = self._claims[gpu]
        record = json.dumps({"requested": requested, "state": state, "model": model})
        os.pwrite(self._fds[gpu], record.encode()[: _ENTRY_SIZE - 1].ljust(_ENTRY_SIZE, b" "), 0)

    def set_state(self, state: str) -> None:
        """Mark all of this instance's entries (loading -> ready)."""
        for gpu in self._fds:
            self._write(gpu, state)

    def release(self) -> None:
        """Remove this instance's entries (a crash leaves them behind, unlocked: stale)."""
        for gpu, fd in list(self._fds.items()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._dir(gpu), self.instance + ".json"))
            os.close(fd)
        self._fds.clear()

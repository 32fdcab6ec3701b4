"""Read-only commands: gpus, models, profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from deployer.cli.common import (
    gpus_file_option,
    json_option,
    load_catalog,
    load_inventory,
    models_file_option,
    print_json,
    profiles_dir,
    table,
)


@click.command()
@gpus_file_option
@json_option
def gpus(gpus_file: Path | None, as_json: bool) -> None:
    """Show what NVML sees: name, memory, compute capability, processes.

    `--json` prints the inventory in the format `--gpus-file` reads, so a plan can be
    made for a box you are not on.

    Example: qwen-deploy gpus --json > my-box.json
    """
    inventory = load_inventory(gpus_file)
    if as_json:
        print_json("gpu-inventory", inventory.to_dict())
        return
    click.echo(f"driver {inventory.driver_version}, CUDA {inventory.cuda_version}")
    rows = []
    for gpu in inventory.gpus:
        procs = ", ".join(f"{p.name}[{p.pid}] {p.used_memory_mib} MiB" for p in gpu.processes)
        rows.append(
            [
                str(gpu.index),
                gpu.name,
                f"{gpu.memory_total_mib / 1024:.1f} GiB",
                f"{gpu.memory_used_mib / 1024:.1f} GiB",
                f"{gpu.memory_free_mib / 1024:.1f} GiB",
                gpu.compute_capability,
                "on" if gpu.mig_enabled else "off",
                procs or "-",
            ]
        )
    click.echo(table(["GPU", "NAME", "TOTAL", "USED", "FREE", "CC", "MIG", "PROCESSES"], rows))


@click.command()
@models_file_option
@json_option
def models(models_files: tuple[Path, ...], as_json: bool) -> None:
    """List the model catalog: Qwen3 checkpoints, quantization, weight size, KV cost.

    Example: qwen-deploy models --models-file my-models.yaml
    """
    from deployer.vllm_pin import QUANTIZATIONS

    catalog = load_catalog(models_files)
    entries: list[dict[str, Any]] = []
    for ckpt in catalog.checkpoints.values():
        fam = ckpt.family
        support = QUANTIZATIONS[ckpt.quantization]
        entries.append(
            {
                "id": ckpt.id,
                "family": fam.name,
                "quantization": ckpt.quantization,
                "weights_gb": ckpt.weights_gb,
                "kv_kib_per_token": fam.kv_bytes_per_token(1, 2) // 1024,
                "native_context": fam.native_context,
                "yarn_context": fam.yarn_context,
                "min_compute_capability": support.min_capability / 10,
                "native_compute_capability": support.native_capability / 10,
            }
        )
    if as_json:
        print_json("model-catalog", {"models": entries})
        return
    rows = [
        [
            e["id"],
            str(e["quantization"]).upper(),
            f"{e['weights_gb']:.1f} GB",
            f"{e['kv_kib_per_token']} KiB",
            f"{e['native_context']}/{e['yarn_context']}",
            f">={e['min_compute_capability']} (native >={e['native_compute_capability']})",
        ]
        for e in entries
    ]
    click.echo(table(["MODEL", "QUANT", "WEIGHTS", "KV/TOKEN", "CONTEXT", "GPU"], rows))


@click.command()
@json_option
def profiles(as_json: bool) -> None:
    """List the deployment profiles and how many GPUs each needs.

    Example: qwen-deploy profiles
    """
    from deployer.profiles import load_all_profiles

    directory = profiles_dir()
    loaded = load_all_profiles(directory)
    if as_json:
        print_json(
            "profiles",
            {
                "profiles": [
                    {
                        "name": p.name,
                        "description": p.description.strip(),
                        "gpus_needed": p.gpus_needed,
                        "services": {
                            s.name: {"model": s.model, "port": s.port} for s in p.services
                        },
                        "source": p.source,
                    }
                    for p in loaded
                ]
            },
        )
        return
    rows = [
        [
            p.name,
            str(p.gpus_needed),
            ", ".join(f"{s.name}={s.model}:{s.port}" for s in p.services),
        ]
        for p in loaded
    ]
    click.echo(table(["PROFILE", "GPUS", "SERVICES"], rows))
    click.echo(f"\n{len(loaded)} profiles in {directory}; `--profile auto` picks the best fit.")


COMMANDS = [gpus, models, profiles]

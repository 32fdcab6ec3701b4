"""GPU inventory files: the --gpus-file format and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployer.catalog import load_catalog, parse_catalog
from deployer.errors import InventoryError, ProfileError
from deployer.gpus import inventory_from_dict, load_inventory_file, printable
from tests.helpers import GPU_FILES


@pytest.mark.parametrize("path", sorted(GPU_FILES.glob("*.json")), ids=lambda p: p.stem)
def test_fixture_inventories_round_trip(path: Path) -> None:
    inventory = load_inventory_file(path)
    again = inventory_from_dict(json.loads(json.dumps(inventory.to_dict())), str(path))
    assert again == inventory
    for gpu in inventory.gpus:
        assert gpu.memory_free_mib == gpu.memory_total_mib - gpu.memory_used_mib


def test_capability_is_compared_like_vllm() -> None:
    inv = load_inventory_file(GPU_FILES / "1x-rtx5090.json")
    assert inv.gpus[0].capability == 120
    assert load_inventory_file(GPU_FILES / "1x-v100.json").gpus[0].capability == 70


@pytest.mark.parametrize(
    "content, expected",
    [
        ("not json", "not valid JSON (line 1"),
        ("[]", "expected a JSON object"),
        ("{}", "missing 'gpus'"),
        ('{"gpus": [{"index": 0}]}', "gpus[0]: missing name, memory_total_mib, compute_capability"),
        (
            '{"gpus": [{"index": 0, "name": "x", "memory_total_mib": 100, "memory_used_mib": 200,'
            ' "compute_capability": "8.0"}]}',
            "memory_used_mib 200 must be between 0 and memory_total_mib 100",
        ),
        (
            '{"gpus": [{"index": 0, "name": "x", "memory_total_mib": 100,'
            ' "compute_capability": "eight"}]}',
            "gpus[0]: bad value",
        ),
        (
            '{"gpus": [{"index": 0, "name": "x", "memory_total_mib": 100, "compute_capability": "8.0"},'
            ' {"index": 0, "name": "y", "memory_total_mib": 100, "compute_capability": "8.0"}]}',
            "index 0 appears twice",
        ),
    ],
)
def test_bad_gpu_files_name_the_problem(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "box.json"
    path.write_text(content)
    with pytest.raises(InventoryError) as err:
        load_inventory_file(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


GOOD_GPU = {"index": 0, "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564,
            "compute_capability": "8.9"}  # fmt: skip


@pytest.mark.parametrize(
    "fields, expected",
    [
        # D17: sizes no GPU has, which overflow float arithmetic later
        ({"memory_total_mib": 1e308}, "bad value for memory_total_mib: expected a whole number of MiB from 1 to 1,073,741,824, got 1e+308"),
        ({"memory_total_mib": 10**30}, "bad value for memory_total_mib"),
        # D19: a boolean written as text is not true
        ({"mig_enabled": "false"}, 'bad value for mig_enabled: expected true or false (a JSON boolean), got "false"'),
        ({"mig_enabled": 0}, "bad value for mig_enabled"),
        # D22: the index range the profile side enforces
        ({"index": -1}, "bad value for index: expected a GPU index from 0 to 1023, got -1"),
        ({"index": 10**20}, "bad value for index"),
        # D31: what is wrong, named as such
        ({"memory_total_mib": 0, "memory_used_mib": 0}, "bad value for memory_total_mib: expected a whole number of MiB from 1"),
        ({"memory_total_mib": -24564}, "bad value for memory_total_mib"),
        ({"processes": "python"}, "gpus[0]: bad value for processes: expected a list of objects"),
        ({"processes": {"pid": 1}}, "gpus[0]: bad value for processes"),
        ({"processes": [{"pid": "x"}]}, "gpus[0].processes[0]: bad value for pid"),
        ({"processes": [{"pid": 1, "used_memory_mib": 10**9}]}, "processes[0]: bad value for used_memory_mib"),
        ({"compute_capability": "8.9.1"}, 'bad value for compute_capability: "8.9.1" is not MAJOR.MINOR'),
        # D34: names reach terminals
        ({"name": "RTX\n4090\u001b[31mRED"}, 'bad value for name: "RTX\\n4090\\u001b[31mRED" has control characters'),
        ({"name": "x\u202eevil"}, "has control characters"),
        ({"processes": [{"pid": 1, "name": "\u001b]0;owned\u0007"}]}, "processes[0]: bad value for name"),
        ({"name": ""}, "bad value for name: expected a string"),
        # D35: no type is coerced into another
        ({"index": True}, "bad value for index: expected a GPU index from 0 to 1023, got true"),
        ({"index": "0"}, 'got "0"'),
        ({"memory_total_mib": "24564"}, "bad value for memory_total_mib"),
        ({"memory_total_mib": 24564.9}, "bad value for memory_total_mib"),
        ({"compute_capability": "-1.0"}, 'bad value for compute_capability: "-1.0" is not MAJOR.MINOR'),
        ({"compute_capability": True}, "bad value for compute_capability"),
    ],
)  # fmt: skip
def test_inventory_fields_are_checked_strictly(
    tmp_path: Path, fields: dict[str, object], expected: str
) -> None:
    path = tmp_path / "box.json"
    path.write_text(json.dumps({"gpus": [{**GOOD_GPU, **fields}]}))
    with pytest.raises(InventoryError) as err:
        load_inventory_file(path)
    message = str(err.value)
    assert expected in message
    assert message.startswith(f"{path}: gpus[0]")
    assert "\n" not in message and "\x1b" not in message  # one line, nothing a terminal obeys


def test_values_in_their_own_type_are_read() -> None:
    inv = inventory_from_dict(
        {"driver_version": 550, "cuda_version": 12.4,
         "gpus": [{**GOOD_GPU, "compute_capability": 8.9, "mig_enabled": True, "processes": [
             {"pid": 7, "name": "python", "used_memory_mib": 100}]}]}
    )  # fmt: skip
    gpu = inv.gpus[0]
    assert (inv.driver_version, inv.cuda_version) == ("550", "12.4")
    assert (gpu.compute_capability, gpu.capability, gpu.mig_enabled) == ("8.9", 89, True)
    assert gpu.processes[0].name == "python" and gpu.processes[0].used_memory_mib == 100
    major_only = inventory_from_dict({"gpus": [{**GOOD_GPU, "compute_capability": "12"}]})
    assert major_only.gpus[0].compute_capability == "12.0"


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("RTX\n4090\x1b[31mRED") == "RTX\\n4090\\x1b[31mRED"
    assert printable("x\u202ey") == "x\\u202ey"
    assert printable("NVIDIA H100 80GB HBM3 · µ") == "NVIDIA H100 80GB HBM3 · µ"


def test_missing_gpu_file() -> None:
    with pytest.raises(InventoryError, match="cannot read GPU file"):
        load_inventory_file("does/not/exist.json")


def test_catalog_has_the_qwen3_family_with_published_checkpoints() -> None:
    catalog = load_catalog()
    families = {c.family.name for c in catalog.checkpoints.values()}
    assert families >= {
        "Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B", "Qwen3-14B", "Qwen3-32B",
        "Qwen3-30B-A3B", "Qwen3-235B-A22B",
    }  # fmt: skip
    for model in (
        "Qwen/Qwen3-32B-AWQ",
        "Qwen/Qwen3-8B-AWQ",
        "Qwen/Qwen3-1.7B-FP8",
        "RedHatAI/Qwen3-8B-NVFP4",
    ):
        assert model in catalog.checkpoints
    qwen32 = catalog.get("Qwen/Qwen3-32B-AWQ").family
    assert (qwen32.layers, qwen32.kv_heads, qwen32.head_dim) == (64, 8, 128)
    assert qwen32.kv_bytes_per_token(1, 2) == 262144  # 256 KiB/token in BF16
    # 30B-A3B has only 4 KV heads: TP 8 replicates them rather than splitting below one.
    moe = catalog.get("Qwen/Qwen3-30B-A3B-FP8").family
    assert moe.kv_bytes_per_token(8, 2) == moe.kv_bytes_per_token(4, 2)


def test_catalog_errors_name_the_key() -> None:
    with pytest.raises(ProfileError, match=r"families.X: unknown key 'layer'"):
        parse_catalog({"families": {"X": {"layer": 3}}}, "m.yaml")
    with pytest.raises(ProfileError, match=r"quantization: 'gguf' is not one of"):
        parse_catalog(
            {
                "families": {
                    "X": {
                        "layers": 2, "attention_heads": 2, "kv_heads": 1, "head_dim": 8,
                        "hidden_size": 16, "intermediate_size": 32, "params_b": 0.1,
                        "checkpoints": [{"id": "a/b", "quantization": "gguf", "weights_gb": 1}],
                    }
                }
            },
            "m.yaml",
        )  # fmt: skip


def test_unknown_model_suggests_the_closest() -> None:
    with pytest.raises(ProfileError, match="did you mean Qwen/Qwen3-8B-AWQ"):
        load_catalog().get("Qwen/Qwen3-8B-AWK")

"""The stand-in's start-up arithmetic follows vLLM 0.33's accounting (issue 11): the CUDA total
(NVML's minus reserved), the free-memory check after its own context, the non-KV terms of Model
Runner V2's profile run, the null block, and vLLM's own start-up lines."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployer.standin import gpu_worker, model_info, process, startup
from deployer.standin.gpu_worker import GiB, MiB

# vLLM's calibration line as public logs quote it (a T4-sized boot, values aside).
PUBLIC_CALIBRATION = (
    "Free memory on device (15.28/15.51 GiB) on startup. Desired GPU memory utilization is "
    "(0.92, 14.27 GiB). Actual usage is 10.47 GiB for consumed memory (weights + non-torch), "
    "0.79 GiB for peak activation, and 0.04 GiB for CUDAGraph memory. Replace "
    "gpu_memory_utilization config with `--kv-cache-memory=3031561913` (2.82 GiB) to fit into "
    "requested memory, or `--kv-cache-memory=4121221120` (3.84 GiB) to fully utilize gpu "
    "memory. Current kv cache memory in use is 3.01 GiB."
)


def _shape_of(line: str) -> str:
    """The line with every number replaced, to compare wording and punctuation only."""
    return re.sub(r"-?\d[\d,]*(?:\.\d+)?", "N", line)


def test_capture_sizes_follow_vllms_list() -> None:
    assert gpu_worker.capture_sizes(256, 2048) == (51, 35)
    assert gpu_worker.capture_sizes(64, 2048) == (19, 11)
    assert gpu_worker.capture_sizes(1024, 8192) == (51, 51)
    assert gpu_worker.capture_sizes(256, 128) == (19, 19)  # capped at max_num_batched_tokens


def test_profile_terms_for_qwen3_8b() -> None:
    info = model_info.model_info("Qwen/Qwen3-8B", {})
    prof = gpu_worker.memory_profile(info, 16_400_000_000, 1, 256, 2048, False)
    vocab = 151936
    assert prof.activation_peak == 14 * 256 * vocab  # the sampler warm-up beats the forward
    assert prof.sampler_state == 256 * vocab * 4 + 256 * (vocab // 32) * 4
    assert prof.cuda_graphs == 86 * 36 * 176 * 1024  # 0.52 GiB: the public Qwen3-8B figure
    assert prof.consumed == 16_400_000_000 + 150 * MiB + prof.sampler_state
    eager = gpu_worker.memory_profile(info, 0, 1, 256, 2048, True)
    assert eager.cuda_graphs == 0
    # a long batch makes the forward pass the larger of the two phases, not their sum
    wide = gpu_worker.memory_profile(info, 0, 1, 16, 16384, True)
    assert wide.activation_peak == 16384 * (3 * 12288 + 4 * 4096) * 2


def test_moe_models_have_their_own_terms() -> None:
    moe = model_info.model_info("Qwen/Qwen3-30B-A3B", {})
    dense = model_info.model_info("Qwen/Qwen3-32B", {})
    assert (moe.experts_per_token, moe.moe_intermediate_size) == (8, 768)
    moe_prof = gpu_worker.memory_profile(moe, 0, 1, 256, 2048, False)
    assert moe_prof.cuda_graphs == 86 * 48 * 574 * 1024
    assert (
        moe_prof.cuda_graphs > gpu_worker.memory_profile(dense, 0, 1, 256, 2048, False).cuda_graphs
    )


def test_cuda_total_and_free_memory() -> None:
    card = gpu_worker.GpuMemory(24564 * MiB, 358 * MiB, 200 * MiB)
    assert gpu_worker.format_gib(card.total) == "23.64"  # what vLLM prints for a 4090
    assert card.free(0, 0) == card.total  # NVML's `used` here leaves the reserved part out
    assert card.free(1000 * MiB, 460 * MiB) == card.total - 1460 * MiB
    assert gpu_worker.GpuMemory(24564 * MiB, 358 * MiB, 500 * MiB).free(0, 0) == 24064 * MiB


def test_the_null_block_is_kept_back() -> None:
    per_token = 147456
    block = 16 * per_token
    need = 2048 * block  # max_model_len 32768
    assert gpu_worker.plan_kv_cache(need + block, per_token, 32768).error is None
    short = gpu_worker.plan_kv_cache(need + block - 1, per_token, 32768)
    assert short.error is not None and "estimated maximum model length is 32752" in short.error
    ok = gpu_worker.plan_kv_cache(need + block, per_token, 32768)
    assert ok.capacity() == (2049 * 16, 2049 / 2048)
    odd = gpu_worker.plan_kv_cache(need + block, per_token, 32760)
    assert odd.capacity()[0] == int(2049 / 2048 * 32760)


def test_calibration_line_has_vllms_wording() -> None:
    prof = gpu_worker.MemoryProfile(10 * GiB, GiB // 4, GiB // 8, GiB // 2, GiB // 3)
    line = gpu_worker.calibration_line(15 * GiB, 16 * GiB, 0.92, 14 * GiB, prof, 3 * GiB)
    assert _shape_of(line) == _shape_of(PUBLIC_CALIBRATION)
    fit = 14 * GiB - prof.non_kv - 150 * MiB
    assert f"`--kv-cache-memory={fit}`" in line
    assert "Actual usage is 10.38 GiB for consumed memory" in line


@pytest.fixture
def boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, str]]]:
    """Run the stand-in's start-up in this process: (exit status or 0, its log)."""

    class Exited(Exception):
        pass

    def end(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(process, "release_and_exit", end)

    def run(*argv: str, **env: str) -> tuple[int, str]:
        base = {"STANDIN_LOAD_SECONDS": "0", "STANDIN_LEDGER_DIR": str(tmp_path)}
        try:
            startup.startup(list(argv), {**base, "NVIDIA_VISIBLE_DEVICES": "0", **env})
            code = 0
        except Exited as exc:
            code = int(exc.args[0])
        finally:
            if process.ledger is not None:
                process.ledger.release()
                process.ledger = None
        return code, capsys.readouterr().out

    yield run


def _figure(log: str, pattern: str) -> str:
    match = re.search(pattern, log)
    assert match, log
    return match.group(1)


def test_startup_lines_match_a_public_vllm_boot(boot: Callable[..., tuple[int, str]]) -> None:
    # Qwen3-14B, defaults, 0.9 on an L40S (vLLM printed: Model loading took 27.52 GiB,
    # Available KV cache memory: 11.57 GiB, GPU KV cache size: 75,824 tokens; vLLM 0.28).
    code, log = boot(
        "Qwen/Qwen3-14B",
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "32768",
        STANDIN_GPU_TOTAL_MIB="0:46068",
        STANDIN_GPU_RESERVED_MIB="0:582",
    )
    assert code == 0, log
    loaded = float(_figure(log, r"Model loading took ([\d.]+) GiB memory and [\d.]+ seconds"))
    available = float(_figure(log, r"Available KV cache memory: ([\d.]+) GiB"))
    tokens = int(_figure(log, r"GPU KV cache size: ([\d,]+) tokens").replace(",", ""))
    concurrency = _figure(log, r"Maximum concurrency for 32,768 tokens per request: ([\d.]+)x")
    assert loaded == pytest.approx(27.52, rel=0.01)
    assert available == pytest.approx(11.57, rel=0.05)
    assert tokens == pytest.approx(75824, rel=0.05)
    assert float(concurrency) == pytest.approx(tokens / 32768, abs=0.01)
    assert "Free memory on device (44.42/44.42 GiB) on startup." in log
    assert "Desired GPU memory utilization is (0.9, 39.98 GiB)." in log


def test_an_oversized_fraction_fails_with_vllms_message(
    boot: Callable[..., tuple[int, str]],
) -> None:
    card = {
        "STANDIN_GPU_TOTAL_MIB": "0:24564",
        "STANDIN_GPU_RESERVED_MIB": "0:448",
        "STANDIN_CONTEXT_MIB": "460",
    }
    # Qwen3-8B at 0.9764 on an idle RTX A5000 started in vLLM: it starts here too
    code, log = boot("Qwen/Qwen3-8B-AWQ", "--gpu-memory-utilization", "0.9764", **card)
    assert code == 0, log
    code, log = boot("Qwen/Qwen3-8B-AWQ", "--gpu-memory-utilization", "0.99", **card)
    assert code == 1
    assert (
        "ValueError: Free memory on device cuda:0 (23.1/23.55 GiB) on startup is less than "
        "desired GPU memory utilization (0.99, 23.32 GiB). Decrease GPU memory utilization or "
        "reduce GPU memory used by other processes."
    ) in log

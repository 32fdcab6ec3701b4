"""deployer.diagnose against vLLM's own failure messages (vLLM 0.33 wording, older where noted)."""

from __future__ import annotations

from deployer.diagnose import clean, diagnose, excerpt

FREE_MEMORY = (
    "(EngineCore_DP0 pid=87) ValueError: Free memory on device cuda:0 (7.34/15.49 GiB) on "
    "startup is less than desired GPU memory utilization (0.8, 12.39 GiB). Decrease GPU memory "
    "utilization or reduce GPU memory used by other processes."
)
FREE_MEMORY_011 = (
    "ValueError: Free memory on device (3.27/15.98 GiB) on startup is less than desired GPU "
    "memory utilization (0.9, 14.39 GiB). Decrease GPU memory utilization or reduce GPU memory "
    "used by other processes."
)
NO_BLOCKS = (
    "ValueError: No available memory for the cache blocks. Try increasing "
    "`gpu_memory_utilization` when initializing the engine."
)
MAX_LEN_V1 = (
    "ValueError: To serve at least one request with the model's max seq len (32768), (4.50 GiB "
    "KV cache is needed, which is larger than the available KV cache memory (2.91 GiB). Based on "
    "the available memory, the estimated maximum model length is 21184. Try increasing "
    "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
)
MAX_LEN_V0 = (
    "ValueError: The model's max seq len (40960) is larger than the maximum number of tokens "
    "that can be stored in KV cache (20000). Try increasing `gpu_memory_utilization` or "
    "decreasing `max_model_len` when initializing the engine."
)
DERIVED = (
    "ValueError: User-specified max_model_len (65536) is greater than the derived max_model_len "
    "(max_position_embeddings=40960 or model_max_length=None in model's config.json). To allow "
    "overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."
)
UNSUPPORTED = (
    "ValueError: The quantization method fp8 is not supported for the current GPU. Minimum "
    "capability: 80. Current capability: 75."
)
SCHEME = (
    "RuntimeError: Quantization scheme is not supported for the current GPU. Required "
    "capability: 100. Current capability: 89."
)
OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 23.64 GiB of which 1.12 GiB is free."
)


def test_free_memory_numbers_in_summary() -> None:
    [finding] = diagnose(["INFO starting", FREE_MEMORY, "Traceback ..."])
    assert finding.kind == "free-memory"
    assert finding.line == FREE_MEMORY
    assert "7.34 of 15.49 GiB" in finding.summary
    assert "0.8" in finding.summary and "12.39 GiB" in finding.summary
    assert "nvidia-smi" in finding.advice


def test_free_memory_older_wording() -> None:
    [finding] = diagnose([FREE_MEMORY_011])
    assert finding.kind == "free-memory"
    assert "3.27 of 15.98 GiB" in finding.summary


def test_no_cache_blocks_points_at_start_order() -> None:
    [finding] = diagnose([NO_BLOCKS])
    assert finding.kind == "kv-cache"
    assert "one after another" in finding.advice


def test_max_seq_len_suggests_a_context_that_fits() -> None:
    [finding] = diagnose([MAX_LEN_V1])
    assert finding.kind == "max-model-len"
    assert "32768 tokens" in finding.summary
    assert "context: 20480" in finding.advice  # 21184 rounded down to 1024


def test_max_seq_len_v0_wording() -> None:
    [finding] = diagnose([MAX_LEN_V0])
    assert finding.kind == "max-model-len"
    assert "40960" in finding.summary
    assert "context" in finding.advice


def test_derived_max_model_len() -> None:
    [finding] = diagnose([DERIVED])
    assert finding.kind == "max-model-len"
    assert "65536" in finding.summary
    assert "YaRN" in finding.advice


def test_quantization_not_supported_names_capabilities() -> None:
    [finding] = diagnose([UNSUPPORTED])
    assert finding.kind == "gpu-unsupported"
    assert "fp8" in finding.summary
    assert "8.0" in finding.summary and "7.5" in finding.summary


def test_compressed_tensors_scheme_not_supported() -> None:
    [finding] = diagnose([SCHEME])
    assert finding.kind == "gpu-unsupported"
    assert "10.0" in finding.summary and "8.9" in finding.summary


def test_cuda_oom() -> None:
    [finding] = diagnose([OOM])
    assert finding.kind == "cuda-oom"
    assert "max_num_seqs" in finding.advice


def test_one_finding_per_kind_in_order_of_appearance() -> None:
    lines = [NO_BLOCKS, FREE_MEMORY, NO_BLOCKS, "noise"]
    assert [f.kind for f in diagnose(lines)] == ["kv-cache", "free-memory"]


def test_unknown_failure_gives_nothing() -> None:
    assert diagnose(["Traceback (most recent call last):", "KeyError: 'x'"]) == []


def test_ansi_colours_are_removed() -> None:
    coloured = "\x1b[1;31mERROR\x1b[0m " + NO_BLOCKS + "   "
    assert clean(coloured) == "ERROR " + NO_BLOCKS
    assert diagnose([coloured])[0].line == "ERROR " + NO_BLOCKS


def test_excerpt_is_the_tail_when_it_explains() -> None:
    lines = [f"line {i}" for i in range(30)] + [NO_BLOCKS, "", "exiting"]
    assert excerpt(lines, limit=3) == [f"line {29}", NO_BLOCKS, "exiting"]


def test_excerpt_pulls_in_an_earlier_explaining_line() -> None:
    lines = ["boot", FREE_MEMORY, *[f"traceback frame {i}" for i in range(20)]]
    out = excerpt(lines, limit=4)
    assert out[0] == FREE_MEMORY
    assert out[1] == "…"
    assert out[2:] == [f"traceback frame {i}" for i in range(16, 20)]


def test_excerpt_shows_only_the_latest_repeat_of_a_crash_loop() -> None:
    lines = [NO_BLOCKS, "a", NO_BLOCKS, "b", *[f"frame {i}" for i in range(10)]]
    out = excerpt(lines, limit=2)
    assert out == [NO_BLOCKS, "…", "frame 8", "frame 9"]


def test_excerpt_of_empty_log() -> None:
    assert excerpt([], limit=5) == []
    assert excerpt(["", "  "], limit=5) == []

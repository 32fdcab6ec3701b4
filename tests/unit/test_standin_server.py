"""The stand-in's pure parts: vLLM 0.33.0's argument parsing, the GPU-memory arithmetic and
ledger, the thinking/answer split, request validation, and the JSON fields of its responses
(a local process, no Docker)."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from deployer.standin import (
    cli_args,
    generation,
    gpu_worker,
    ledger,
    model_info,
    protocol,
    server,
    settings,
)

SERVER = Path(server.__file__)
ROOT = SERVER.parents[2]
MiB, GiB = gpu_worker.MiB, gpu_worker.GiB


def parse(*argv: str) -> tuple[int, str]:
    """Exit status and last stderr line of parsing `vllm serve ARGV` (0 and "" when it parses)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli_args.parse_serve_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0), err.getvalue().strip().splitlines()[-1]
    return 0, ""


# -- command line ------------------------------------------------------------------------------

# Outcomes recorded from vLLM 0.33.0's own parser (`vllm serve ...` with the wheel's
# make_arg_parser / FlexibleArgumentParser): exit status 2 and argparse's message.
VLLM_PARSE_ERRORS = [
    (["Qwen/Qwen3-8B", "--bogus-flag", "1"], "vllm: error: unrecognized arguments: --bogus-flag 1"),
    (["Qwen/Qwen3-8B", "--enable-reasoning"], "vllm: error: unrecognized arguments: --enable-reasoning"),
    (["Qwen/Qwen3-8B", "--rope-scaling", "{}"], "vllm: error: unrecognized arguments: --rope-scaling {}"),
    (["Qwen/Qwen3-8B", "--swap-space", "4"], "vllm: error: unrecognized arguments: --swap-space 4"),
    (["Qwen/Qwen3-8B", "extra-positional"], "vllm: error: unrecognized arguments: extra-positional"),
    (["Qwen/Qwen3-8B", "--model", "Qwen/Qwen3-4B"], "vllm: error: unrecognized arguments: Qwen/Qwen3-8B"),
    (["Qwen/Qwen3-8B", "--enable-prefix-caching", "true"], "vllm: error: unrecognized arguments: true"),
    (["Qwen/Qwen3-8B", "--rope-theta", "1000000"], "vllm: error: unrecognized arguments: --rope-theta 1000000"),
    (["Qwen/Qwen3-8B", "--device", "cuda"], "vllm serve: error: ambiguous option: --device could match --device-ids, --device-memory-utilization"),
    (["Qwen/Qwen3-8B", "--port", "abc"], "vllm serve: error: argument --port: invalid int value: 'abc'"),
    (["Qwen/Qwen3-8B", "--port"], "vllm serve: error: argument --port: expected one argument"),
    (["Qwen/Qwen3-8B", "--api-key"], "vllm serve: error: argument --api-key: expected at least one argument"),
    (["Qwen/Qwen3-8B", "--gpu-memory-utilization", "x"], "vllm serve: error: argument --gpu-memory-utilization/--device-memory-utilization: invalid float value: 'x'"),
    (["Qwen/Qwen3-8B", "--dtype", "bf16"], "vllm serve: error: argument --dtype: invalid choice: 'bf16' (choose from 'auto', 'bfloat16', 'float', 'float16', 'float32', 'half')"),
    (["Qwen/Qwen3-8B", "--max-model-len", "abc"], "vllm serve: error: argument --max-model-len: invalid human_readable_int_or_auto value: 'abc'"),
    (["Qwen/Qwen3-8B", "--max-model-len", "1.5K"], "vllm serve: error: argument --max-model-len: Decimals are not allowed with binary suffixes like K. Did you mean to use 1.5k instead?"),
    (["Qwen/Qwen3-8B", "--max-num-seqs", "1.5"], "vllm serve: error: argument --max-num-seqs: invalid int value: '1.5'"),
    (["Qwen/Qwen3-8B", "--tensor-parallel-size", "two"], "vllm serve: error: argument --tensor-parallel-size/-tp: invalid int value: 'two'"),
    (["Qwen/Qwen3-8B", "--max-log-len", "x"], "vllm serve: error: argument --max-log-len: Value x cannot be converted to <class 'int'>."),
    (["Qwen/Qwen3-8B", "--uvicorn-log-level", "loud"], "vllm serve: error: argument --uvicorn-log-level: invalid choice: 'loud' (choose from 'critical', 'debug', 'error', 'info', 'trace', 'warning')"),
    (["Qwen/Qwen3-8B", "--default-chat-template-kwargs", "{bad"], "vllm serve: error: argument --default-chat-template-kwargs: invalid loads value: '{bad'"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), VLLM_PARSE_ERRORS)
def test_rejects_what_vllm_rejects(argv: list[str], message: str) -> None:
    assert parse(*argv) == (2, message)


def test_task_gets_vllms_hint() -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        cli_args.parse_serve_args(["Qwen/Qwen3-8B", "--task", "generate"])
    assert "vllm: error: unrecognized arguments: --task generate" in err.getvalue()
    assert "Hint: --task is not a vllm serve option." in err.getvalue()


def test_json_flag_errors_name_the_parser() -> None:
    code, message = parse("Qwen/Qwen3-8B", "--override-generation-config", "nope")
    assert code == 2
    assert message.startswith(
        "vllm serve: error: argument --override-generation-config: Value nope cannot be "
        "converted to <function loads at 0x"
    )


def test_accepts_every_flag_the_planner_renders() -> None:
    args, warnings = cli_args.parse_serve_args(
        [
            "Qwen/Qwen3-32B-AWQ",
            "--served-model-name", "medium", "MEDIUM",
            "--host", "0.0.0.0",
            "--port", "8000",
            "--api-key", "k1", "k2",
            "--tensor-parallel-size", "2",
            "--gpu-memory-utilization", "0.87",
            "--max-model-len", "32768",
            "--max-num-seqs", "64",
            "--max-num-batched-tokens", "8k",
            "--kv-cache-dtype", "fp8",
            "--quantization", "awq_marlin",
            "--reasoning-parser", "qwen3",
            "--generation-config", "auto",
            "--override-generation-config", '{"temperature": 0.6}',
            "--hf-overrides", '{"max_position_embeddings": 131072}',
            "--enforce-eager",
            "--no-enable-prefix-caching",
            "--dtype", "auto",
            "--trust-remote-code",
            "--download-dir", "/models",
            "--seed", "0",
            "--enable-auto-tool-choice",
            "--tool-call-parser", "hermes",
            "--default-chat-template-kwargs", '{"enable_thinking": false}',
            "--kv-cache-memory-bytes", "4G",
            "--uvicorn-log-level", "warning",
            "--disable-log-stats",
        ]
    )  # fmt: skip
    assert warnings == []
    assert args.model == "Qwen/Qwen3-32B-AWQ"
    assert args.served_model_name == ["medium", "MEDIUM"]
    assert args.api_key == ["k1", "k2"]
    assert (args.tensor_parallel_size, args.gpu_memory_utilization) == (2, 0.87)
    assert (args.max_model_len, args.max_num_batched_tokens) == (32768, 8000)
    assert args.kv_cache_memory_bytes == 4 * GiB
    assert args.override_generation_config == {"temperature": 0.6}
    assert args.hf_overrides == {"max_position_embeddings": 131072}
    assert args.default_chat_template_kwargs == {"enable_thinking": False}
    assert args.enable_prefix_caching is False
    assert args.enforce_eager is True and args.disable_log_stats is True


def test_defaults_match_vllm() -> None:
    args, _ = cli_args.parse_serve_args(["Qwen/Qwen3-8B"])
    assert args.port == 8000
    assert args.host is None
    assert args.gpu_memory_utilization == 0.92
    assert args.kv_cache_dtype == "auto"
    assert args.generation_config == "auto"
    assert args.reasoning_parser == ""
    assert args.enable_prefix_caching is None  # on by default in V1
    assert args.max_model_len is None


def test_option_table_is_vllm_033s() -> None:
    options = cli_args.serve_option_strings()
    # make_arg_parser() of vLLM 0.33.0 registers 485 option strings (aliases and -h included)
    assert len(options) == 485
    for flag in ("--disable-prefix-caching", "--no-enable-prefix-caching", "-tp", "-q", "-asc"):
        assert flag in options
    for gone in ("--enable-reasoning", "--rope-scaling", "--swap-space", "--kv-cache-memory"):
        assert gone not in options


def test_model_positional_flag_and_default() -> None:
    assert cli_args.parse_serve_args(["Qwen/Qwen3-8B"])[0].model == "Qwen/Qwen3-8B"
    args, warnings = cli_args.parse_serve_args(["--port", "1", "--model=Qwen/Qwen3-4B"])
    assert (args.model, args.model_tag, args.port) == ("Qwen/Qwen3-4B", "Qwen/Qwen3-4B", 1)
    assert "The `--model` option will be removed in a future version." in warnings[0]
    assert cli_args.parse_serve_args([])[0].model == "Qwen/Qwen3-0.6B"
    with pytest.raises(cli_args.StartupError, match="should be provided as the first positional"):
        cli_args.parse_serve_args(["--served-model-name", "x"])


def test_flexible_spelling() -> None:
    args, _ = cli_args.parse_serve_args(
        ["m", "--max_model_len", "4096", "--tensor_parallel_size=2", "--gpu-memory-util", "0.5"]
    )
    assert (args.max_model_len, args.tensor_parallel_size) == (4096, 2)
    assert args.gpu_memory_utilization == 0.5  # argparse accepts unambiguous prefixes
    dotted, _ = cli_args.parse_serve_args(
        ["m", "--hf-overrides.rope_parameters.factor", "4.0", "--hf-overrides.max_position_embeddings", "131072"]
    )  # fmt: skip
    assert dotted.hf_overrides == {
        "rope_parameters": {"factor": 4.0},
        "max_position_embeddings": 131072,
    }
    assert cli_args.parse_serve_args(["m", "-O3"])[0].optimization_level == "3"


def test_human_readable_ints() -> None:
    assert cli_args.human_readable_int("1k") == 1000
    assert cli_args.human_readable_int("1K") == 1024
    assert cli_args.human_readable_int("25.6k") == 25600
    assert cli_args.human_readable_int("2G") == 2 * GiB
    assert cli_args.human_readable_int_or_auto("auto") == -1
    assert cli_args.human_readable_int_or_auto("-1") == -1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["m", "--enable-auto-tool-choice"], "TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser"),
        (["m", "--gpu-memory-utilization", "1.5"], "Input should be less than or equal to 1 [type=less_than_equal, input_value=1.5"),
        (["m", "--gpu-memory-utilization", "0"], "Input should be greater than 0 [type=greater_than"),
        (["m", "--kv-cache-dtype", "fp7"], "Value error, Invalid kv_cache_dtype: 'fp7'. Valid values are: ['auto', 'float16'"),
        (["m", "--reasoning-parser", "qwen9"], "KeyError: 'invalid reasoning parser: qwen9 (chose from {"),
        (["m", "-q", "nonsense"], "ValueError: Unknown quantization method: nonsense. Must be one of ["),
        (["Qwen/Qwen3-8B-AWQ", "-q", "fp8"], "ValueError: Quantization method specified in the model config (awq) does not match the quantization method specified in the `quantization` argument (fp8)."),
        (["Qwen/Qwen3-14B", "-tp", "3"], "ValueError: Total number of attention heads (40) must be divisible by tensor parallel size (3)."),
        (["Qwen/Qwen3-8B", "--max-model-len", "65536"], "User-specified max_model_len (65536) is greater than the derived max_model_len (max_position_embeddings=40960 or model_max_length=None in model's config.json)."),
    ],
)  # fmt: skip
def test_startup_validation_exits_1(argv: list[str], message: str) -> None:
    """Errors vLLM raises after parsing (config validation): a traceback and status 1."""
    done = subprocess.run(
        [sys.executable, str(SERVER), "serve", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env={"STANDIN_LOAD_SECONDS": "0", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert message in done.stdout


def test_unknown_flag_exits_2_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, str(SERVER), "serve", "Qwen/Qwen3-8B", "--enable-reasoning"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "vllm: error: unrecognized arguments: --enable-reasoning"


# -- quantization and model knowledge ------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "flag", "resolved"),
    [
        ("Qwen/Qwen3-8B-AWQ", None, "auto_awq"),
        ("Qwen/Qwen3-8B-AWQ", "awq", "auto_awq"),
        ("Qwen/Qwen3-8B-AWQ", "awq_marlin", "auto_awq"),
        ("Qwen/Qwen3-8B-FP8", None, "fp8"),
        ("Qwen/Qwen3-8B-FP8", "fp8", "fp8"),
        ("RedHatAI/Qwen3-8B-NVFP4", None, "compressed-tensors"),
        ("RedHatAI/Qwen3-8B-NVFP4", "compressed-tensors", "compressed-tensors"),
        ("Qwen/Qwen3-8B", None, None),
        ("Qwen/Qwen3-8B", "fp8", "fp8"),  # online FP8 of a BF16 checkpoint
    ],
)
def test_quantization_resolution(model: str, flag: str | None, resolved: str | None) -> None:
    assert model_info.resolve_quantization(model_info.model_info(model, {}), flag) == resolved


def test_quantization_mismatch() -> None:
    with pytest.raises(
        cli_args.StartupError, match=r"config \(compressed-tensors\) does not match"
    ):
        model_info.resolve_quantization(
            model_info.model_info("RedHatAI/Qwen3-8B-NVFP4", {}), "nvfp4"
        )


def test_model_shapes() -> None:
    info = model_info.model_info("Qwen/Qwen3-32B-AWQ", {})
    assert (info.layers, info.q_heads, info.kv_heads, info.max_position_embeddings) == (
        64, 64, 8, 40960,
    )  # fmt: skip
    assert (
        model_info.model_info("Qwen/Qwen3-4B-Instruct-2507", {}).max_position_embeddings == 262144
    )
    moe = model_info.model_info("Qwen/Qwen3-30B-A3B", {})
    assert (moe.architecture, moe.kv_heads) == ("Qwen3MoeForCausalLM", 4)
    # KV per token: 2 x 36 layers x 8 heads x 128 x 2 bytes; fp8 halves it; TP splits heads
    qwen8b = model_info.model_info("Qwen/Qwen3-8B", {})
    assert model_info.kv_bytes_per_token(qwen8b, 1, "auto") == 147456
    assert model_info.kv_bytes_per_token(qwen8b, 1, "fp8") == 73728
    assert model_info.kv_bytes_per_token(qwen8b, 2, "auto") == 73728
    assert model_info.kv_bytes_per_token(moe, 8, "auto") == 2 * 48 * 1 * 128 * 2  # replicated


# -- GPU memory arithmetic -----------------------------------------------------------------


def test_free_memory_message_is_vllms() -> None:
    total = 24564 * MiB
    free = total - 410 * MiB - gpu_worker.requested_bytes(total, 0.5)
    assert gpu_worker.requested_bytes(total, 0.5) == 12282 * MiB
    assert gpu_worker.free_memory_error(0, total, free, 0.6) == (
        "ValueError: Free memory on device cuda:0 (11.59/23.99 GiB) on startup is less than "
        "desired GPU memory utilization (0.6, 14.39 GiB). Decrease GPU memory utilization or "
        "reduce GPU memory used by other processes."
    )
    assert gpu_worker.free_memory_error(1, total, free, 0.45) is None
    assert gpu_worker.format_gib(24 * GiB) == "24.0"  # str(round(x, 2)), as vLLM prints it


def test_requested_memory_is_a_ceiling_of_the_total() -> None:
    assert gpu_worker.requested_bytes(1000, 0.9) == 900
    assert gpu_worker.requested_bytes(1001, 0.9) == 901  # ceil(900.9)


def test_gpu_maps_and_visible_devices() -> None:
    totals = ledger.parse_gpu_map("0:24564, 1:24564,GPU-abc:81559")
    assert totals == {"0": 24564, "1": 24564, "GPU-abc": 81559}
    assert ledger.visible_gpus({"NVIDIA_VISIBLE_DEVICES": "1,0"}, totals) == ["1", "0"]
    assert ledger.visible_gpus({"NVIDIA_VISIBLE_DEVICES": "void"}, totals) == []
    assert ledger.visible_gpus({}, totals) == []
    assert ledger.visible_gpus({"NVIDIA_VISIBLE_DEVICES": "all"}, totals) == ["0", "1", "GPU-abc"]
    with pytest.raises(ValueError, match="expected ID:MIB"):
        ledger.parse_gpu_map("0=1")


def test_kv_cache_plan() -> None:
    per_token = 147456  # Qwen3-8B, BF16 KV
    ok = gpu_worker.plan_kv_cache(6 * GiB, per_token, 32768)
    assert ok.error is None
    assert ok.tokens == 6 * GiB // per_token // 16 * 16
    short = gpu_worker.plan_kv_cache(1 * GiB, per_token, 40960)
    assert short.error is not None
    # 455 blocks, one of them vLLM's null block (issue 11): 454 x 16 = 7264 tokens fit, not
    # the 455 x 16 = 7280 the stand-in said before it counted the null block.
    assert short.error.startswith(
        "ValueError: To serve at least one request with the model's max seq len (40960), "
        "(5.62 GiB KV cache is needed, which is larger than the available KV cache memory "
        "(1.0 GiB). Based on the available memory, the estimated maximum model length is 7264."
    )
    assert gpu_worker.plan_kv_cache(-5, per_token, 4096).error == gpu_worker.NO_CACHE_MEMORY
    fitted = gpu_worker.plan_kv_cache(1 * GiB, per_token, 40960, auto_len=True)
    assert (fitted.error, fitted.max_model_len) == (None, 7264)  # the null block again
    fixed = gpu_worker.plan_kv_cache(-5, per_token, 4096, kv_cache_memory_bytes=GiB)
    assert fixed.error is None and fixed.available == GiB


# -- the ledger (real files, real flock, a real second process) ------------------------------


def test_ledger_counts_live_entries_only(tmp_path: Path) -> None:
    a = ledger.Ledger(str(tmp_path), "a")
    b = ledger.Ledger(str(tmp_path), "b")
    a.register("0", 10 * GiB, "Qwen/Qwen3-8B")
    [entry] = b.entries("0")
    assert (entry.name, entry.requested, entry.state, entry.model) == (
        "a", 10 * GiB, "loading", "Qwen/Qwen3-8B",
    )  # fmt: skip
    assert a.entries("0") == []  # its own entry is not "another instance"
    assert b.entries("1") == []
    a.set_state("ready")
    assert b.entries("0")[0].state == "ready"
    a.release()
    assert b.entries("0") == []


def test_ledger_drops_entries_of_dead_processes(tmp_path: Path) -> None:
    # A process that registers and dies without releasing (like SIGKILL): file stays, lock goes.
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); "
        "from deployer.standin import ledger; "
        "ledger.Ledger(sys.argv[2], 'dead').register('0', 5, 'm'); os._exit(1)"
    )
    subprocess.run([sys.executable, "-c", code, str(ROOT), str(tmp_path)], check=False)
    assert (tmp_path / "gpu-0" / "dead.json").exists()
    assert ledger.Ledger(str(tmp_path), "b").entries("0") == []
    assert not (tmp_path / "gpu-0" / "dead.json").exists()


def test_ledger_sees_a_live_process(tmp_path: Path) -> None:
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); "
        "from deployer.standin import ledger; "
        "ledger.Ledger(sys.argv[2], 'live').register('0', 7, 'm'); print('ok', flush=True); "
        "time.sleep(30)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
        [entry] = ledger.Ledger(str(tmp_path), "b").entries("0")
        assert (entry.name, entry.requested) == ("live", 7)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while ledger.Ledger(str(tmp_path), "b").entries("0") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ledger.Ledger(str(tmp_path), "b").entries("0") == []


# -- tokens, thinking and max_tokens --------------------------------------------------------


def test_prompt_tokens_are_words_plus_template() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "two words"}]},
    ]
    assert generation.chat_prompt_tokens(messages) == 4 + 2 * 4 + 3


def test_reasoning_split_with_parser() -> None:
    g = generation.generate_chat(
        "hello there", max_tokens=100, thinking=True, reasoning_parser=True, thinking_tokens=5
    )
    assert g.finish_reason == "stop"
    assert g.text("reasoning") == "\nOkay, the user wrote: hello"
    assert g.text("content") == "\n\nStand-in reply to: hello there"
    assert g.completion_tokens == 1 + 5 + 1 + 5


def test_thinking_inline_without_parser() -> None:
    g = generation.generate_chat(
        "hi", max_tokens=100, thinking=True, reasoning_parser=False, thinking_tokens=2
    )
    assert g.text("reasoning") is None
    assert g.text("content") == "<think>\nOkay, the\n</think>\n\nStand-in reply to: hi"


def test_thinking_off() -> None:
    g = generation.generate_chat(
        "hi", max_tokens=100, thinking=False, reasoning_parser=True, thinking_tokens=50
    )
    assert (g.text("reasoning"), g.text("content")) == (None, "Stand-in reply to: hi")
    assert g.completion_tokens == 4


@pytest.mark.parametrize(
    ("max_tokens", "reasoning_words", "content", "finish"),
    [
        (1, 0, None, "length"),  # only <think>
        (4, 3, None, "length"),  # inside the thinking
        (7, 6, None, "length"),  # thinking done, </think> not yet
        (8, 6, None, "length"),  # </think> emitted, no answer yet
        (9, 6, "\n\nStand-in", "length"),
        (12, 6, "\n\nStand-in reply to: hi", "stop"),
    ],
)
def test_thinking_counts_against_max_tokens(
    max_tokens: int, reasoning_words: int, content: str | None, finish: str
) -> None:
    g = generation.generate_chat(
        "hi", max_tokens=max_tokens, thinking=True, reasoning_parser=True, thinking_tokens=6
    )
    assert len((g.text("reasoning") or "").split()) == reasoning_words
    assert g.reasoning_tokens() == reasoning_words  # the tags are not reasoning tokens
    assert (g.text("content"), g.finish_reason) == (content, finish)
    assert g.completion_tokens == min(max_tokens, 12)


def test_reasoning_tokens_so_far_and_inline() -> None:
    g = generation.generate_chat(
        "hi", max_tokens=100, thinking=True, reasoning_parser=False, thinking_tokens=3
    )
    assert [g.reasoning_tokens(n) for n in (0, 1, 2, 4, 5, 100)] == [0, 0, 1, 3, 3, 3]
    off = generation.generate_chat(
        "hi", max_tokens=100, thinking=False, reasoning_parser=True, thinking_tokens=3
    )
    assert off.reasoning_tokens() == 0
    assert (
        generation.generate_completion("a", max_tokens=5, answer_tokens=None).reasoning_tokens()
        == 0
    )


def test_prompt_text_is_qwen3s_template() -> None:
    # Recorded from vLLM 0.33.0 (`return_prompt_text: true`) with Qwen3's chat template.
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi x"}]
    assert generation.chat_prompt_text(messages, enable_thinking=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi x<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert generation.chat_prompt_text(messages[1:], enable_thinking=False) == (
        "<|im_start|>user\nHi x<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_huge_thinking_is_built_lazily() -> None:
    g = generation.generate_chat(
        "x", max_tokens=3, thinking=True, reasoning_parser=True, thinking_tokens=10**9
    )
    assert (g.completion_tokens, g.finish_reason, g.text("content")) == (3, "length", None)


def test_completion_generation() -> None:
    g = generation.generate_completion("one two", max_tokens=3, answer_tokens=None)
    assert (g.text("content"), g.finish_reason) == (" Stand-in reply to:", "length")
    assert generation.answer_words("a b", answer_tokens=7) == ["Stand-in", "reply", "to:", "a", "b",
                                                           "Stand-in", "reply"]  # fmt: skip


def test_faults_parse() -> None:
    assert settings.parse_faults("slow:2, no_auth,wrong_model:x") == {
        "slow": "2", "no_auth": "", "wrong_model": "x",
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown STANDIN_FAULT 'explode'"):
        settings.parse_faults("explode")


# -- request validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("x", "x"),
        ("y" * 201, "y" * 200 + "...[truncated]"),
        (5.5, "5.5"),
        (None, "None"),
        ({"a": 1}, "<dict of 1 items>"),
        ([1, 2], "<list of 2 items>"),
        ({}, "<dict of 0 items>"),
    ],
)
def test_validation_errors_show_inputs_as_vllm_does(value: Any, shown: str) -> None:
    error = protocol.field_error("messages", "list_type", "Input should be a valid list", value)
    assert (error.status, error.body["error"]["param"]) == (400, "body.messages")
    assert error.body["error"]["message"] == (
        "1 validation error:\n  {'type': 'list_type', 'loc': 'body.messages', "
        f"'msg': 'Input should be a valid list', 'input': {shown!r}}}"
    )


def test_validation_messages_hide_paths() -> None:
    error = protocol.field_error("prompt", "string_type", "m", "/home/me/secret.txt")
    assert "'input': '<path>'" in str(error.body["error"]["message"])


@pytest.mark.parametrize(
    ("value", "parsed"), [(5, 5), (True, 1), (5.0, 5), ("5", 5), (" +5 ", 5), ("5.0", 5)]
)
def test_int_fields_coerce_like_pydantic(value: Any, parsed: int) -> None:
    assert protocol._int_field({"n": value}, "n") == parsed


@pytest.mark.parametrize(
    ("value", "kind"),
    [(5.5, "int_from_float"), ("x", "int_parsing"), ("1e2", "int_parsing"), ([1], "int_type")],
)
def test_int_fields_reject_like_pydantic(value: Any, kind: str) -> None:
    with pytest.raises(protocol.RequestError) as caught:
        protocol._int_field({"n": value}, "n")
    assert f"'type': '{kind}', 'loc': 'body.n'" in str(caught.value.body["error"]["message"])


def test_float_fields_coerce_like_pydantic() -> None:
    assert [protocol._float_field({"t": v}, "t") for v in (1, True, "0.5", " 1e-1 ")] == [
        1.0, 1.0, 0.5, 0.1,
    ]  # fmt: skip
    for value, kind in (("x", "float_parsing"), ({}, "float_type")):
        with pytest.raises(protocol.RequestError) as caught:
            protocol._float_field({"t": value}, "t")
        assert f"'type': '{kind}'" in str(caught.value.body["error"]["message"])


def test_usage_options() -> None:
    assert protocol.include_usage(None, force=False) == (False, False)
    assert protocol.include_usage({"include_usage": True}, force=False) == (True, False)
    assert protocol.include_usage({"continuous_usage_stats": True}, force=False) == (False, False)
    both = {"include_usage": True, "continuous_usage_stats": True}
    assert protocol.include_usage(both, force=False) == (True, True)
    assert protocol.include_usage(None, force=True) == (True, True)  # --enable-force-include-usage


# -- response fields ---------------------------------------------------------------------------
# The keys of vLLM 0.33.0's responses, recorded from its serving code (the pinned wheel's
# Python over a CPU build) with `--reasoning-parser qwen3`. The order is pydantic's.

CHAT_KEYS = (
    "id object created model choices service_tier system_fingerprint usage prompt_logprobs "
    "prompt_token_ids prompt_text kv_transfer_params ec_transfer_params metrics"
)
CHAT_CHOICE_KEYS = (
    "index message logprobs finish_reason stop_reason token_ids routed_experts weight_versions"
)
COMPLETION_KEYS = (
    "id object created model choices service_tier system_fingerprint usage kv_transfer_params "
    "ec_transfer_params metrics"
)
COMPLETION_CHOICE_KEYS = (
    "index text logprobs finish_reason stop_reason token_ids prompt_logprobs prompt_token_ids "
    "routed_experts weight_versions"
)
USAGE_KEYS = "prompt_tokens total_tokens completion_tokens prompt_tokens_details " + (
    "completion_tokens_details"
)
CHUNK = "id object created model choices"
STREAM_CHOICE = "index delta logprobs finish_reason"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def standin_url() -> Iterator[str]:
    """A stand-in process on loopback: qwen3 reasoning parser, 4 thinking words, no delays."""
    port = _free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "STANDIN_LOAD_SECONDS": "0",
        "STANDIN_TTFT_MS": "0",
        "STANDIN_TOKENS_PER_SECOND": "0",
        "STANDIN_THINKING_TOKENS": "4",
    }
    argv = ["Qwen/Qwen3-8B", "--reasoning-parser", "qwen3", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "serve", *argv, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "stand-in did not start"
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _post(url: str, path: str, **body: Any) -> requests.Response:
    return requests.post(url + path, json=body, timeout=10)


def _stream(url: str, path: str, **body: Any) -> list[dict[str, Any]]:
    response = _post(url, path, stream=True, **body)
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def _keys(payload: dict[str, Any]) -> str:
    return " ".join(payload)


def test_chat_response_fields(standin_url: str) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    body = _post(standin_url, "/v1/chat/completions", messages=messages, max_tokens=4).json()
    assert _keys(body) == CHAT_KEYS
    assert _keys(body["choices"][0]) == CHAT_CHOICE_KEYS
    assert _keys(body["usage"]) == USAGE_KEYS
    nulls = "prompt_text kv_transfer_params ec_transfer_params metrics prompt_token_ids"
    assert {k: body[k] for k in nulls.split()} == dict.fromkeys(nulls.split())
    assert body["choices"][0]["routed_experts"] is None
    # <think> and 3 of the 4 thinking words
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    off = _post(
        standin_url,
        "/v1/chat/completions",
        messages=messages,
        n=2,
        return_prompt_text=True,
        chat_template_kwargs={"enable_thinking": False},
    ).json()
    assert off["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert off["prompt_text"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    full = _post(standin_url, "/v1/chat/completions", messages=messages, n=2).json()
    assert full["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2 * 4}


def test_completion_response_fields(standin_url: str) -> None:
    body = _post(standin_url, "/v1/completions", prompt="Hello", max_tokens=2).json()
    assert _keys(body) == COMPLETION_KEYS
    assert _keys(body["choices"][0]) == COMPLETION_CHOICE_KEYS
    assert _keys(body["usage"]) == USAGE_KEYS
    assert body["usage"]["completion_tokens_details"] is None


def test_chat_stream_fields(standin_url: str) -> None:
    chunks = _stream(
        standin_url,
        "/v1/chat/completions",
        messages=[{"role": "user", "content": "Hi"}],
        return_prompt_text=True,
    )
    first, middle, last = chunks[0], chunks[1], chunks[-1]
    assert _keys(first) == CHUNK + " prompt_token_ids prompt_text"
    assert first["prompt_text"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert _keys(first["choices"][0]) == STREAM_CHOICE
    assert _keys(middle) == CHUNK + " kv_transfer_params"
    assert _keys(middle["choices"][0]) == STREAM_CHOICE + " token_ids"
    assert _keys(last) == CHUNK + " system_fingerprint kv_transfer_params"
    assert _keys(last["choices"][0]) == STREAM_CHOICE + " stop_reason token_ids weight_versions"
    assert last["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_usage_fields(standin_url: str) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    chunks = _stream(
        standin_url,
        "/v1/chat/completions",
        messages=messages,
        stream_options={"include_usage": True},
    )
    last, usage = chunks[-2], chunks[-1]
    assert _keys(last) == CHUNK + " kv_transfer_params"  # the fingerprint moves to the usage
    assert _keys(usage) == CHUNK + " usage system_fingerprint"
    assert usage["usage"] == {
        "prompt_tokens": 1 + 4 + 3,
        "total_tokens": 8 + 1 + 4 + 1 + 4,
        "completion_tokens": 1 + 4 + 1 + 4,  # tags, thinking, answer
        "completion_tokens_details": {"reasoning_tokens": 4},
    }
    continuous = _stream(
        standin_url,
        "/v1/chat/completions",
        messages=messages,
        max_tokens=3,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    assert [_keys(c) for c in continuous] == [
        CHUNK + " usage prompt_token_ids prompt_text",
        CHUNK + " usage kv_transfer_params",  # <think> (token 1) sends no chunk
        CHUNK + " usage kv_transfer_params",
        CHUNK + " usage system_fingerprint",
    ]
    assert [c["usage"]["completion_tokens"] for c in continuous] == [0, 2, 3, 3]
    assert [c["usage"]["completion_tokens_details"] for c in continuous] == [
        {"reasoning_tokens": n} for n in (0, 1, 2, 2)
    ]
    assert "prompt_tokens_details" not in continuous[1]["usage"]


def test_completion_stream_fields(standin_url: str) -> None:
    choice = STREAM_CHOICE.replace("delta", "text")
    choice += " stop_reason prompt_token_ids token_ids weight_versions"
    chunks = _stream(standin_url, "/v1/completions", prompt="Hi", max_tokens=2)
    assert [_keys(c) for c in chunks] == [
        CHUNK + " kv_transfer_params",
        CHUNK + " system_fingerprint kv_transfer_params",
    ]
    assert {_keys(c["choices"][0]) for c in chunks} == {choice}
    chunks = _stream(
        standin_url,
        "/v1/completions",
        prompt="Hi",
        max_tokens=2,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    assert chunks[0]["usage"] == {"prompt_tokens": 1, "total_tokens": 2, "completion_tokens": 1}
    assert _keys(chunks[-1]) == CHUNK + " usage system_fingerprint"
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "total_tokens": 3, "completion_tokens": 2}


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        (
            "/v1/chat/completions",
            {"messages": "x"},
            ("1 validation error:\n  {'type': 'list_type', 'loc': 'body.messages', 'msg': "
             "'Input should be a valid list', 'input': 'x'}", "Bad Request", "body.messages"),
        ),
        (
            "/v1/chat/completions",
            {"messages": [], "max_tokens": 0},
            ("max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)",
             "BadRequestError", "max_tokens"),
        ),
        (
            "/v1/completions",
            {"max_tokens": 3},
            ("Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
             "BadRequestError", "prompt"),
        ),
    ],
)  # fmt: skip
def test_request_errors(
    standin_url: str, path: str, body: dict[str, Any], error: tuple[str, str, str]
) -> None:
    response = _post(standin_url, path, **body)
    assert response.status_code == 400
    message, kind, param = error
    assert response.json() == {
        "error": {"message": message, "type": kind, "param": param, "code": 400}
    }

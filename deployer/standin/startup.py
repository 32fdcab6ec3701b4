"""Everything `vllm serve` does before it listens: validation, the memory check, loading,
profiling and the KV cache, with vLLM's log lines and failures."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace

from . import process
from .cli_args import StartupError, build_parser, parse_serve_args
from .gpu_worker import (
    BLOCK_SIZE,
    DEFAULT_GPU_TOTAL_MIB,
    NO_CACHE_MEMORY,
    NO_GPU_TOTAL_MIB,
    GiB,
    GpuMemory,
    MiB,
    batch_defaults,
    calibration_line,
    format_gib,
    free_memory_error,
    memory_profile,
    plan_kv_cache,
    requested_bytes,
)
from .ledger import DEFAULT_LEDGER_DIR, Ledger, parse_gpu_map, visible_gpus
from .logger import ENGINE, log, set_uvicorn_level
from .model_info import (
    CHECKPOINT_ONLY_QUANTIZATION,
    KV_CACHE_DTYPES,
    kv_bytes_per_token,
    model_info,
    resolve_quantization,
    weights_bytes,
)
from .parsers import REASONING_PARSERS, TOOL_CALL_PARSERS
from .process import fail_api_server, fail_engine
from .settings import Settings, env_float, parse_faults
from .version import VLLM_VERSION


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Sampling keys vLLM takes from generation_config.json (config/model.py), in its order.
GENERATION_CONFIG_KEYS = _words(
    """
    repetition_penalty presence_penalty frequency_penalty temperature top_k top_p min_p
    max_new_tokens skip_special_tokens
    """
)


def _sleep_with_race_check(seconds: float, ledger: Ledger | None, gpus: Sequence[str]) -> bool:
    """Wait out the load window; True if another instance was loading on one of our GPUs."""
    deadline = time.monotonic() + seconds
    raced = False
    while True:
        if ledger is not None and not raced:
            raced = any(e.state == "loading" for g in gpus for e in ledger.entries(g))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return raced
        time.sleep(min(0.1, remaining))


def startup(argv: Sequence[str], env: dict[str, str]) -> tuple[Settings, str, int]:
    """Everything `vllm serve` does before it listens; returns (settings, host, port)."""
    try:
        args, warnings = parse_serve_args(argv)
    except StartupError as exc:
        fail_api_server(exc.exc_line)
    set_uvicorn_level(args.uvicorn_log_level)
    try:
        faults = parse_faults(env.get("STANDIN_FAULT"))
        totals = parse_gpu_map(env.get("STANDIN_GPU_TOTAL_MIB"))
        foreign = parse_gpu_map(env.get("STANDIN_GPU_FOREIGN_MIB"))
        reserved = parse_gpu_map(env.get("STANDIN_GPU_RESERVED_MIB"))
        context = int(env_float(env, "STANDIN_CONTEXT_MIB", 0) * MiB)
    except ValueError as exc:
        fail_api_server(f"ValueError: {exc}")
    for warning in warnings:
        log("WARNING", "argparse_utils.py:311", warning)
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        fail_api_server("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser")
    log("INFO", "utils.py:299", f"vLLM server version {VLLM_VERSION}, serving model {args.model}")
    defaults = vars(build_parser().parse_args(["serve"]))
    non_default = {
        k: v
        for k, v in vars(args).items()
        if k not in ("subparser", "model") and defaults.get(k) != v
    }
    for secret in ("api_key",):
        if secret in non_default:
            non_default[secret] = "[REDACTED]"
    log("INFO", "utils.py:233", f"non-default args: {non_default}")
    if args.enable_auto_tool_choice and args.tool_call_parser not in TOOL_CALL_PARSERS:
        fail_api_server(
            f"KeyError: 'invalid tool call parser: {args.tool_call_parser} (chose from "
            f"{{ {','.join(TOOL_CALL_PARSERS)} }})'"
        )
    if args.reasoning_parser and args.reasoning_parser not in REASONING_PARSERS:
        fail_api_server(
            f"KeyError: 'invalid reasoning parser: {args.reasoning_parser} (chose from "
            f"{{ {','.join(REASONING_PARSERS)} }})'"
        )

    # EngineArgs.create_engine_config: pydantic-validated configs
    util = args.gpu_memory_utilization if args.gpu_memory_utilization is not None else 0.92
    pyd = "pydantic_core._pydantic_core.ValidationError: 1 validation error for"
    if util > 1:
        fail_api_server(
            f"{pyd} CacheConfig\ngpu_memory_utilization\n  Input should be less than or equal "
            f"to 1 [type=less_than_equal, input_value={util}, input_type=float]"
        )
    if util <= 0:
        fail_api_server(
            f"{pyd} CacheConfig\ngpu_memory_utilization\n  Input should be greater than 0 "
            f"[type=greater_than, input_value={util}, input_type=float]"
        )
    kv_dtype = args.kv_cache_dtype or "auto"
    if kv_dtype not in KV_CACHE_DTYPES:
        fail_api_server(
            f"{pyd} CacheConfig\ncache_dtype\n  Value error, Invalid kv_cache_dtype: "
            f"'{kv_dtype}'. Valid values are: {list(KV_CACHE_DTYPES)} [type=value_error, "
            f"input_value='{kv_dtype}', input_type=str]"
        )
    info = model_info(args.model, env)
    try:
        quantization = resolve_quantization(info, args.quantization)
    except StartupError as exc:
        fail_api_server(exc.exc_line)
    tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
    if tp < 1 or pp < 1:
        fail_api_server(
            f"ValueError: tensor_parallel_size ({tp}) and pipeline_parallel_size ({pp}) must be "
            "positive integers"
        )
    if info.q_heads % tp:
        fail_api_server(
            f"ValueError: Total number of attention heads ({info.q_heads}) must be divisible "
            f"by tensor parallel size ({tp})."
        )
    hf_overrides = args.hf_overrides if isinstance(args.hf_overrides, dict) else {}
    derived = int(hf_overrides.get("max_position_embeddings", info.max_position_embeddings))
    rope = hf_overrides.get("rope_parameters") or hf_overrides.get("rope_scaling") or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) not in (
        None,
        "default",
        "su",
        "longrope",
        "llama3",
        "yarn",
        "deepseek_yarn",
        "deepseek_llama_scaling",
    ):
        derived = int(derived * float(rope.get("factor") or 1.0))
    max_model_len = args.max_model_len if args.max_model_len is not None else derived
    if max_model_len not in (-1,) and max_model_len > derived:
        allow = env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "").lower() in ("1", "true")
        msg = (
            f"User-specified max_model_len ({max_model_len}) is greater than the derived "
            f"max_model_len (max_position_embeddings={derived} or model_max_length=None in "
            "model's config.json)."
        )
        if not allow:
            fail_api_server(
                f"{pyd} ModelConfig\n  Value error, {msg} To allow overriding this maximum, "
                "set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN "
                "must be used with extreme caution. [type=value_error]"
            )
        log("WARNING", "model.py:2676", msg)
    auto_len = max_model_len == -1
    if auto_len:
        max_model_len = derived
    elif max_model_len < 1:
        fail_api_server(
            f"{pyd} ModelConfig\n  Value error, max_model_len must be a positive integer, got "
            f"int: {max_model_len}. Example: max_model_len=2048 [type=value_error]"
        )
    log("INFO", "model.py:578", f"Resolved architecture: {info.architecture}")
    log("INFO", "model.py:1802", f"Using max model len {max_model_len}")

    gpus_all = visible_gpus(env, totals)
    world = tp * pp
    if gpus_all and len(gpus_all) < world:
        fail_api_server(
            f"ValueError: World size ({world}) is larger than the number of available GPUs "
            f"({len(gpus_all)}) in this node. If this is intentional and you are using:\n"
            "- ray, set '--distributed-executor-backend ray'.\n"
            "- multiprocessing, set '--nnodes' appropriately."
        )
    gpus = gpus_all[:world]
    cards = {
        gpu: GpuMemory(
            totals.get(gpu, DEFAULT_GPU_TOTAL_MIB) * MiB,
            reserved.get(gpu, 0) * MiB,
            foreign.get(gpu, 0) * MiB,
        )
        for gpu in gpus
    }
    first_total = cards[gpus[0]].total if gpus else 0
    max_num_seqs, batched = batch_defaults(first_total)
    max_num_seqs = args.max_num_seqs or max_num_seqs
    batched = args.max_num_batched_tokens or batched
    log(
        "INFO",
        "scheduler.py:245",
        f"Chunked prefill is enabled with max_num_batched_tokens={batched}.",
    )

    served = args.served_model_name or [args.model]
    fingerprint_src = json.dumps(sorted((k, str(v)) for k, v in non_default.items()))
    fingerprint = f"vllm-{VLLM_VERSION}" + (f"-tp{tp}" if tp > 1 else "")
    fingerprint += "-" + hashlib.sha256(fingerprint_src.encode()).hexdigest()[:8]
    log(
        "INFO",
        "core.py:139",
        f"Initializing a V1 LLM engine (v{VLLM_VERSION}) with config: model='{args.model}', "
        f"tokenizer='{args.tokenizer or args.model}', trust_remote_code="
        f"{bool(args.trust_remote_code)}, dtype=torch.bfloat16, max_seq_len={max_model_len}, "
        f"download_dir={args.download_dir!r}, tensor_parallel_size={tp}, pipeline_parallel_size="
        f"{pp}, quantization={quantization}, enforce_eager={bool(args.enforce_eager)}, "
        f"kv_cache_dtype={kv_dtype}, device_config=cuda, seed={args.seed}, served_model_name="
        f"{served[0]}, enable_prefix_caching={args.enable_prefix_caching is not False}",
        ENGINE,
    )

    # Worker start: the free-memory check on every GPU this instance uses.
    instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ledger_dir = env.get("STANDIN_LEDGER_DIR") or DEFAULT_LEDGER_DIR
    ledger = Ledger(ledger_dir, instance) if gpus else None
    requested: dict[str, int] = {}
    free_at_start: dict[str, int] = {}
    if ledger is not None:
        process.ledger = ledger
        for local, gpu in enumerate(gpus):
            card = cards[gpu]
            # What the other live instances hold: their budgets and their own contexts.
            held = sum(e.requested for e in ledger.entries(gpu))
            free_at_start[gpu] = card.free(held, context)
            error = free_memory_error(local, card.total, free_at_start[gpu], util)
            if error:
                fail_engine(error, "v1/worker/utils.py:762")
            requested[gpu] = requested_bytes(card.total, util)
        for gpu in gpus:
            ledger.register(gpu, requested[gpu] + context, args.model)

    if "oom_on_start" in faults:
        total = first_total or DEFAULT_GPU_TOTAL_MIB * MiB
        fail_engine(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.16 GiB. GPU 0 has a "
            f"total capacity of {total / GiB:.2f} GiB of which 412.56 MiB is free. Including "
            f"non-PyTorch memory, this process has {(total / GiB) - 0.4:.2f} GiB memory in use. "
            "Of the allocated memory 20.14 GiB is allocated by PyTorch, and 1.02 GiB is reserved "
            "by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See "
            "documentation for Memory Management  (https://pytorch.org/docs/stable/notes/"
            "cuda.html#environment-variables)",
            "v1/worker/gpu_model_runner.py:4981",
        )
    log("INFO", "gpu_model_runner.py:4979", f"Starting to load model {args.model}...", ENGINE)
    load_seconds = env_float(env, "STANDIN_LOAD_SECONDS", 2.0)
    if "crash_on_start" in faults:
        _sleep_with_race_check(load_seconds / 2, None, gpus)
        fail_engine(
            "RuntimeError: CUDA error: an illegal memory access was encountered\nCUDA kernel "
            "errors might be asynchronously reported at some other API call, so the stacktrace "
            "below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1",
            "v1/worker/gpu_model_runner.py:4990",
        )
    raced = _sleep_with_race_check(load_seconds, ledger, gpus)
    weights = weights_bytes(info, quantization, env) // max(1, tp)
    if (
        quantization
        and quantization in CHECKPOINT_ONLY_QUANTIZATION
        and info.checkpoint_quant is None
    ):
        fail_engine(
            f"ValueError: Cannot find the config file for {quantization}",
            "model_executor/model_loader/weight_utils.py:380",
        )
    if quantization == "fp8" and info.checkpoint_quant is None:
        log(
            "WARNING",
            "weight_utils.py:357",
            "--quantization fp8 is deprecated for online "
            "quantization; use --quantization fp8_per_tensor instead.",
            ENGINE,
        )
    log(
        "INFO",
        "default_loader.py:507",
        f"Loading weights took {load_seconds * 0.6:.2f} seconds",
        ENGINE,
    )
    log(
        "INFO",
        "model_runner.py:431",
        f"Model loading took {format_gib(weights)} GiB memory and {load_seconds * 0.7:.6f} seconds",
        ENGINE,
    )

    # Profiling: KV cache = requested - consumed - activation peak - CUDA graphs.
    if raced:
        # vllm#55827: the other instance's allocations land inside this one's profiling window
        # and are counted as this instance's non-KV memory.
        fail_engine(NO_CACHE_MEMORY, "v1/core/kv_cache_planning.py:57")
    per_token = kv_bytes_per_token(info, tp, kv_dtype)
    budget = min(requested.values()) if requested else requested_bytes(NO_GPU_TOTAL_MIB * MiB, util)
    profile = memory_profile(info, weights, tp, max_num_seqs, batched, bool(args.enforce_eager))
    if env.get("STANDIN_OVERHEAD_GIB"):  # one flat figure for everything but weights and KV
        flat = int(env_float(env, "STANDIN_OVERHEAD_GIB", 0) * GiB)
        profile = replace(profile, non_torch=flat, sampler_state=0, activation_peak=0)
        profile = replace(profile, cuda_graphs=0)
    kv = plan_kv_cache(
        budget - profile.non_kv,
        per_token,
        max_model_len,
        auto_len=auto_len,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
    )
    if args.kv_cache_memory_bytes:
        log(
            "INFO",
            "gpu_worker.py:712",
            f"Reserved {format_gib(kv.available)} GiB memory for KV "
            "Cache as specified by kv_cache_memory_bytes config and skipped memory profiling. "
            "This does not respect the gpu_memory_utilization config. Only use "
            "kv_cache_memory_bytes config when you want manual control of KV cache memory "
            "size.",
            ENGINE,
        )
    else:
        log(
            "INFO",
            "gpu_worker.py:773",
            f"Available KV cache memory: {format_gib(kv.available)} GiB",
            ENGINE,
        )
    if kv.error and gpus:  # without GPUs there is nothing to run out of
        fail_engine(kv.error, "v1/core/kv_cache_planning.py:57")
    kv_tokens = max(kv.tokens, BLOCK_SIZE)
    max_model_len = kv.max_model_len
    capacity, concurrency = kv.capacity()
    log(
        "INFO",
        "kv_cache_utils.py:1147",
        f"GPU KV cache size: {capacity:,} tokens, Maximum "
        f"concurrency for {max_model_len:,} tokens per request: {concurrency:.2f}x",
        ENGINE,
    )
    if not args.kv_cache_memory_bytes:
        total = cards[gpus[0]].total if gpus else NO_GPU_TOTAL_MIB * MiB
        free = free_at_start[gpus[0]] if gpus else total
        line = calibration_line(free, total, util, budget, profile, kv.blocks * kv.block_bytes)
        log("INFO", "gpu_worker.py:1064", line, ENGINE)
    log(
        "INFO",
        "core.py:413",
        f"init engine (profile, create kv cache, warmup model) took {load_seconds * 0.3:.2f} s",
        ENGINE,
    )

    # Sampling defaults from generation_config.json (+ --override-generation-config).
    override = (
        args.override_generation_config if isinstance(args.override_generation_config, dict) else {}
    )
    source = args.generation_config or "auto"
    config = {} if source == "vllm" else dict(info.generation_config)
    config.update(override)
    diff = {k: config[k] for k in GENERATION_CONFIG_KEYS if config.get(k) is not None}
    if "max_new_tokens" in diff:
        diff["max_tokens"] = diff.pop("max_new_tokens")
    if diff and source != "vllm":
        origin = "the model's `generation_config.json`" if source == "auto" else source
        log(
            "WARNING",
            "model.py:1907",
            f"Default vLLM sampling parameters have been overridden by "
            f"{origin}: `{diff}`. If this is not intended, please relaunch vLLM instance with "
            "`--generation-config vllm`.",
        )
    if diff:
        log("INFO", "serving.py:191", f"Using default chat sampling params from model: {diff}")

    api_keys = list(args.api_key or [])
    if not api_keys and env.get("VLLM_API_KEY"):
        api_keys = [env["VLLM_API_KEY"]]
    answer = env.get("STANDIN_ANSWER_TOKENS")
    settings = Settings(
        args=args,
        info=info,
        served_names=list(served),
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        api_keys=api_keys,
        faults=faults,
        thinking_tokens=int(env_float(env, "STANDIN_THINKING_TOKENS", 16)),
        answer_tokens=int(answer) if answer else None,
        tokens_per_second=env_float(env, "STANDIN_TOKENS_PER_SECOND", 200),
        ttft_seconds=env_float(env, "STANDIN_TTFT_MS", 20) / 1000,
        prefill_tokens_per_second=env_float(env, "STANDIN_PREFILL_TOKENS_PER_SECOND", 10000),
        kv_tokens=kv_tokens,
        default_sampling=diff,
        fingerprint=fingerprint,
        default_chat_template_kwargs=(
            dict(args.default_chat_template_kwargs)
            if isinstance(args.default_chat_template_kwargs, dict)
            else {}
        ),
    )
    host = args.host if args.host else "0.0.0.0"
    return settings, host, args.port

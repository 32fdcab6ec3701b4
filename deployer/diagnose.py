"""Recognise why a vLLM container failed from its log lines and turn it into advice. Pure.

The patterns are vLLM 0.33's own messages (vllm/v1/worker/utils.py::request_memory,
vllm/v1/core/kv_cache_utils.py::check_enough_kv_cache_memory, vllm/config/model.py and the
quantization methods' capability check), plus torch's out-of-memory error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Finding:
    """One recognised cause: the log line that shows it and what to do about it."""

    kind: str
    line: str
    summary: str
    advice: str


def _free_memory(match: re.Match[str]) -> tuple[str, str]:
    free, total, util, wanted = (match.group(k) for k in ("free", "total", "util", "wanted"))
    summary = "the GPU did not have the memory this instance asks for free when it started"
    if free and total and util and wanted:
        summary = (
            f"only {free} of {total} GiB was free on the GPU; gpu_memory_utilization {util} "
            f"asks for {wanted} GiB"
        )
    return summary, (
        "another process (or a neighbour started out of order) holds GPU memory: check "
        "`nvidia-smi`, stop what should not be there, then `qwen-deploy up` again; or plan "
        "with the memory that is really free (`qwen-deploy plan`), or lower "
        "gpu_memory_utilization"
    )


def _no_cache_blocks(match: re.Match[str]) -> tuple[str, str]:
    return (
        "nothing was left for the KV cache after weights, activations and other memory",
        "two instances loading on one GPU at the same time mis-size each other (vllm#55827): "
        "start them one after another (`qwen-deploy up` does; containers started by hand or by "
        "`docker compose up` do not wait); otherwise raise gpu_memory_utilization, lower "
        "max_num_seqs or choose a smaller checkpoint",
    )


def _cuda_oom(match: re.Match[str]) -> tuple[str, str]:
    return (
        "CUDA ran out of memory",
        "something else took GPU memory while the model loaded, or the activation peak is "
        "larger than planned: lower max_num_seqs or context, set enforce_eager: true, or "
        "lower gpu_memory_utilization of the services sharing this GPU",
    )


def _unsupported(match: re.Match[str]) -> tuple[str, str]:
    method = match.group("method") or "this quantization"
    need = match.group("need")
    have = match.group("have")
    summary = f"{method} is not supported on this GPU"
    if need and have:
        summary += f" (needs compute capability {_capability(need)}, GPU has {_capability(have)})"
    return summary, (
        "choose a checkpoint this GPU runs (AWQ from compute capability 7.5, FP8 and NVFP4 "
        "need newer GPUs for full speed); `qwen-deploy plan` against this box's real "
        "inventory checks it"
    )


def _capability(value: str) -> str:
    return f"{int(value) // 10}.{int(value) % 10}" if value.isdigit() else value


def _max_len(match: re.Match[str]) -> tuple[str, str]:
    estimated = match.group("estimated")
    wanted = match.group("wanted")
    summary = "the KV cache cannot hold one request of max_model_len tokens"
    if wanted:
        summary = f"the KV cache cannot hold one request of {wanted} tokens"
    if estimated:
        fit = int(estimated) // 1024 * 1024
        summary += f"; about {estimated} would fit"
        return summary, (
            f"set context: {fit} (or less) for this service, raise gpu_memory_utilization, or "
            "use kv_cache_dtype: fp8"
        )
    return summary, (
        "lower context for this service, raise gpu_memory_utilization, or use kv_cache_dtype: fp8"
    )


def _derived_len(match: re.Match[str]) -> tuple[str, str]:
    return (
        f"max_model_len {match.group('wanted')} is more than the model supports natively",
        "lower context to the model's native window, or up to its YaRN limit (the planner "
        "adds --hf-overrides for YaRN when the profile's context needs it)",
    )


def _gated(match: re.Match[str]) -> tuple[str, str]:
    return (
        "the model could not be downloaded from the Hugging Face Hub",
        "export HF_TOKEN with access to the model (accept its licence on the Hub first), "
        "then `qwen-deploy up` again",
    )


def _disk(match: re.Match[str]) -> tuple[str, str]:
    return (
        "the disk is full",
        "free space where Docker keeps volumes (the qwen-deploy-hf-cache volume holds the "
        "weights), then `qwen-deploy up` again",
    )


_Explain = Callable[["re.Match[str]"], tuple[str, str]]

# Most specific first: a line is attributed to the first pattern that matches it.
_PATTERNS: tuple[tuple[str, re.Pattern[str], _Explain], ...] = (
    (
        "free-memory",
        re.compile(
            r"Free memory on device(?: (?!\()\S+)?(?: \((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\))?"
            r".*?less than desired GPU memory utilization"
            r"(?: \((?P<util>[\d.]+), (?P<wanted>[\d.]+) GiB\))?"
        ),
        _free_memory,
    ),
    ("kv-cache", re.compile(r"No available memory for the cache blocks"), _no_cache_blocks),
    ("cuda-oom", re.compile(r"CUDA out of memory|OutOfMemoryError"), _cuda_oom),
    (
        "gpu-unsupported",
        re.compile(
            r"(?:The quantization method (?P<method>\S+) )?is not supported for the current GPU"
            r"(?:.*?(?:Minimum|Required) capability: (?P<need>\d+))?"
            r"(?:.*?Current capability: (?P<have>\d+))?"
        ),
        _unsupported,
    ),
    (
        "max-model-len",
        re.compile(
            r"max seq len(?: \((?P<wanted>\d+)\))?.*?(?:larger than|KV cache)"
            r"(?:.*?estimated maximum model length is (?P<estimated>\d+))?"
        ),
        _max_len,
    ),
    (
        "max-model-len",
        re.compile(r"max_model_len \((?P<wanted>\d+)\) is greater than the derived max_model_len"),
        _derived_len,
    ),
    (
        "hub-access",
        re.compile(r"gated repo|401 Client Error|Repository Not Found|GatedRepoError"),
        _gated,
    ),
    ("disk-full", re.compile(r"No space left on device"), _disk),
)


def clean(line: str) -> str:
    """A log line without ANSI colours and trailing whitespace."""
    return _ANSI.sub("", line).rstrip()


def diagnose(lines: Iterable[str]) -> list[Finding]:
    """Every recognised cause in the log, once per kind, in the order they first appear."""
    findings: dict[str, Finding] = {}
    for raw in lines:
        line = clean(raw)
        for kind, pattern, explain in _PATTERNS:
            match = pattern.search(line)
            if match is None:
                continue
            if kind not in findings:
                summary, advice = explain(match)
                findings[kind] = Finding(kind, line.strip(), summary, advice)
            break
    return list(findings.values())


def excerpt(lines: Sequence[str], limit: int = 15) -> list[str]:
    """The last `limit` non-blank lines, with any earlier line a finding quotes put in front
    (an elided gap is shown as '…'), so what explains the failure is always visible."""
    cleaned = [clean(line) for line in lines]
    kept = [line for line in cleaned if line.strip()]  # positions below count kept lines
    start = max(0, len(kept) - limit) if limit > 0 else len(kept)
    in_tail = {line.strip() for line in kept[start:]}
    wanted = {f.line for f in diagnose(kept)} - in_tail
    latest: dict[str, int] = {}
    for position, line in enumerate(kept[:start]):
        if line.strip() in wanted:
            latest[line.strip()] = position  # a crash loop repeats it: show the latest only
    out: list[str] = []
    previous = -1
    for position in [*sorted(latest.values()), *range(start, len(kept))]:
        if out and position != previous + 1:
            out.append("…")
        out.append(kept[position])
        previous = position
    return out

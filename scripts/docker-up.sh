#!/usr/bin/env bash
# Make a Docker engine reachable on this machine (idempotent).
#
# A machine with a running engine is left alone. Otherwise, as root on Debian 12: install
# docker.io and debootstrap when missing, install a stand-in NVIDIA container hook (so that
# `--gpus` / DeviceRequest works on a machine without a GPU; see shared notes on Docker),
# then start dockerd in the background and wait until `docker info` answers.
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
WAIT_SECONDS="${DOCKER_WAIT_SECONDS:-60}"
HOOK=/usr/local/sbin/nvidia-container-runtime-hook

say() { printf 'docker-up: %s\n' "$*"; }
die() { printf 'docker-up: error: %s\n' "$*" >&2; exit 1; }

# docker-compose (Debian's v1) only checks the rendered compose files in the tests.
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" -eq 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update </dev/null
    apt-get install -y "${missing[@]}" </dev/null
fi

if docker info >/dev/null 2>&1; then
    say "engine already reachable; nothing to do"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "no reachable Docker engine and not root: start dockerd yourself or rerun as root"
command -v dockerd >/dev/null 2>&1 || die "dockerd not found after installing docker.io"

# The hook must exist before dockerd starts: the engine looks it up when it starts.
if [ ! -x "$HOOK" ]; then
    say "installing stand-in $HOOK (no GPU here)"
    mkdir -p "$(dirname "$HOOK")"
    cat > "$HOOK" <<'SH'
#!/bin/sh
# Stand-in for the NVIDIA container runtime hook on a machine without a GPU.
cat > /dev/null        # the OCI state arrives on stdin
exit 0
SH
    chmod 0755 "$HOOK"
fi

if pgrep -x dockerd >/dev/null 2>&1; then
    say "dockerd is running but not answering yet; waiting"
else
    say "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # In its own session, so that it outlives this script and the shell that ran it.
    setsid nohup dockerd </dev/null >>"$DOCKERD_LOG" 2>&1 &
fi

deadline=$((SECONDS + WAIT_SECONDS))
until docker info >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
        die "Docker engine did not answer within ${WAIT_SECONDS}s; see $DOCKERD_LOG"
    fi
    sleep 1
done
say "engine ready: $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown)"

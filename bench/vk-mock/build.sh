#!/usr/bin/env bash
# Build vk-mock (the virtual-kubelet peer of the node benchmark) into the cellet cache,
# keyed by the hash of go.mod, go.sum and main.go; prints the binary's path on stdout.
# Progress goes to stderr. A second call with nothing changed returns at once.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${CELLET_CACHE:-${HOME:-/root}/.cache/cellet}

log() { printf '[vk-mock] %s\n' "$*" >&2; }
die() { printf '[vk-mock] error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 ||
  die "'go' not found in PATH; install Go >= 1.26 (the Go module proxy must be reachable for a cold build)"

hash=$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/main.go" | sha256sum | cut -c1-16)
dir=$CACHE_ROOT/vk-mock-$hash
bin=$dir/vk-mock
if [[ -x "$bin" ]]; then
  log "up to date: $bin"
  printf '%s\n' "$bin"
  exit 0
fi
mkdir -p "$dir"
exec 9>"$dir/.build.lock"
flock 9
if [[ ! -x "$bin" ]]; then
  log "downloading modules (go.sum $hash)…"
  (cd "$HERE" && GOWORK=off GOFLAGS=-mod=readonly go mod download) || die "go mod download failed"
  log "building vk-mock (virtual-kubelet $(cd "$HERE" && GOWORK=off go list -m -f '{{.Version}}' github.com/virtual-kubelet/virtual-kubelet))…"
  t0=$SECONDS
  (cd "$HERE" && GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly \
    go build -trimpath -ldflags '-s -w' -o "$dir/.vk-mock.tmp" .) || { rm -f "$dir/.vk-mock.tmp"; die "go build failed"; }
  mv -f "$dir/.vk-mock.tmp" "$bin"
  log "built $bin in $((SECONDS - t0))s"
fi
printf '%s\n' "$bin"

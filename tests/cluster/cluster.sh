#!/usr/bin/env bash
# cellet test control plane: etcd + kube-apiserver + kube-scheduler +
# kube-controller-manager (+ kubectl), built from the Go modules pinned in
# tests/cluster/go.mod and run on 127.0.0.1 only.
#
#   cluster.sh build                    build the five binaries (cached)
#   cluster.sh up DIR                   start a control plane with state in DIR
#   cluster.sh down DIR                 stop it (idempotent)
#   cluster.sh restart-apiserver DIR    stop and start only kube-apiserver
#   cluster.sh kubectl DIR ARGS...      kubectl as cluster-admin
#   cluster.sh node-kubeconfig DIR NODE write DIR/nodes/NODE.kubeconfig
#                                       (client cert CN=system:node:NODE)
#   cluster.sh status DIR               show what runs
#   cluster.sh bin-dir                  print the binary directory
#
# See README.md beside this file for the files `up` writes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_VERSION=v1.37.2
K8S_MAJOR=1
K8S_MINOR=37
CACHE_ROOT=${CELLET_CACHE:-${HOME:-/root}/.cache/cellet}
BIN_DIR=${CELLET_CLUSTER_BIN:-$CACHE_ROOT/k8s-$K8S_VERSION/bin}

SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
CLUSTER_CIDR=10.244.0.0/16
NODE_CIDR_MASK=24
VERBOSITY=${CELLET_CLUSTER_VERBOSITY:-2}
STOP_TIMEOUT=${CELLET_CLUSTER_STOP_TIMEOUT:-15}
READY_TIMEOUT=${CELLET_CLUSTER_READY_TIMEOUT:-120}

# name:go-package, in build order.
COMPONENTS=(
  "etcd:go.etcd.io/etcd/server/v3"
  "kube-apiserver:k8s.io/kubernetes/cmd/kube-apiserver"
  "kube-controller-manager:k8s.io/kubernetes/cmd/kube-controller-manager"
  "kube-scheduler:k8s.io/kubernetes/cmd/kube-scheduler"
  "kubectl:k8s.io/kubernetes/cmd/kubectl"
)
# Started by `up`, in start order; `down` stops them in reverse.
SERVERS=(etcd kube-apiserver kube-controller-manager kube-scheduler)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- build ----

require_go() {
  command -v go >/dev/null 2>&1 ||
    die "'go' not found in PATH; install Go >= 1.26 (the Go module proxy must be reachable for a cold build)"
  local v
  v=$(go env GOVERSION 2>/dev/null || true)
  case "$v" in
    go1.2[6-9]*|go1.[3-9][0-9]*|go[2-9]*) ;;
    *) die "Go >= 1.26 is needed to build Kubernetes $K8S_VERSION (found '${v:-unknown}')" ;;
  esac
}

# Hash of everything that decides what the binaries contain.
build_hash() {
  {
    cat "$HERE/go.mod" "$HERE/go.sum"
    printf 'recipe=%s\n' "$(build_recipe)"
  } | sha256sum | cut -c1-16
}

build_recipe() {
  # Changing this string forces a rebuild.
  printf 'v2 CGO_ENABLED=0 -trimpath -ldflags=-s -w +version %s %s' "$K8S_VERSION" "$(go env GOVERSION 2>/dev/null || echo nogo)"
}

version_ldflags() {
  local date
  date=$(cd "$HERE" && GOWORK=off GOFLAGS=-mod=readonly go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes 2>/dev/null) ||
    date=1970-01-01T00:00:00Z
  local flags="-s -w" pkg kv
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for kv in "gitVersion=$K8S_VERSION" "gitMajor=$K8S_MAJOR" "gitMinor=$K8S_MINOR" \
              "gitTreeState=clean" "gitCommit=" "buildDate=$date"; do
      flags+=" -X $pkg.$kv"
    done
  done
  printf '%s' "$flags"
}

binaries_current() {
  local hash=$1 entry name
  for entry in "${COMPONENTS[@]}"; do
    name=${entry%%:*}
    [[ -x "$BIN_DIR/$name" && "$(cat "$BIN_DIR/.$name.stamp" 2>/dev/null)" == "$hash" ]] || return 1
  done
}

cmd_build() {
  require_go
  mkdir -p "$BIN_DIR"
  local hash ldflags entry name pkg i=0 n=${#COMPONENTS[@]} t0 t1 all0
  hash=$(build_hash)
  if binaries_current "$hash"; then
    log "binaries up to date in $BIN_DIR (build $hash)"
    return 0
  fi
  # Two builds into the same cache dir at once would race; serialise them.
  exec 9>"$BIN_DIR/.build.lock"
  flock 9
  ldflags=$(version_ldflags)
  all0=$SECONDS
  for entry in "${COMPONENTS[@]}"; do
    i=$((i + 1))
    name=${entry%%:*}
    pkg=${entry#*:}
    if [[ -x "$BIN_DIR/$name" && "$(cat "$BIN_DIR/.$name.stamp" 2>/dev/null)" == "$hash" ]]; then
      log "$name up to date ($i/$n)"
      continue
    fi
    log "building $name ($i/$n)…"
    t0=$SECONDS
    rm -f "$BIN_DIR/.$name.stamp"
    if ! (cd "$HERE" && GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=readonly \
          go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/.$name.tmp" "$pkg"); then
      rm -f "$BIN_DIR/.$name.tmp"
      die "building $name ($pkg) failed"
    fi
    mv -f "$BIN_DIR/.$name.tmp" "$BIN_DIR/$name"
    printf '%s\n' "$hash" >"$BIN_DIR/.$name.stamp"
    t1=$SECONDS
    log "built $name in $((t1 - t0))s"
  done
  log "all binaries in $BIN_DIR (build $hash, $((SECONDS - all0))s)"
  flock -u 9
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1; shift
  case "$cmd" in
    build) cmd_build ;;
    *) usage ;;
  esac
}

main "$@"

#!/usr/bin/env bash
# A real OCI registry on loopback for cellet's tests and demo: Debian's `docker-registry`
# (the CNCF distribution registry, v2 API), plain HTTP on 127.0.0.1, storage under DIR.
#
#   registry.sh up DIR     install if missing, start on a free port, wait for /v2/,
#                          write the port to DIR/port and the pid to DIR/pid
#   registry.sh down DIR   stop the registry started in DIR (idempotent)
#
# Installing needs root (apt-get); everything else runs as the caller. `up` on a DIR whose
# registry still answers is a no-op, so tests and scripts may call it freely.
set -euo pipefail

die() { echo "registry.sh: $*" >&2; exit 1; }

usage() { die "usage: registry.sh up|down DIR"; }

[[ $# -eq 2 ]] || usage
cmd=$1
dir=$2

REGISTRY_BIN=/usr/bin/docker-registry

install_registry() {
    [[ -x $REGISTRY_BIN ]] && return 0
    command -v apt-get >/dev/null || die "docker-registry is missing and apt-get is not available: install Debian's docker-registry package"
    # The package list may not know the package yet on a fresh machine.
    if ! apt-cache show docker-registry >/dev/null 2>&1; then
        apt-get update -qq || die "apt-get update failed"
    fi
    # The package's maintainer script would start a system-wide service; policy-rc.d keeps
    # it from doing so where that is supported. Our instance is the only one we want.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null \
        || die "apt-get install -y docker-registry failed"
    [[ -x $REGISTRY_BIN ]] || die "docker-registry installed but $REGISTRY_BIN is missing"
}

# A port nothing listens on right now (a refused connect), picked at random above the
# usual service ports. Another process could take it before the registry binds; the
# registry then exits, and `up` tries another port rather than use someone else's server.
free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "found no free port on 127.0.0.1"
}

answers() {
    local port=$1
    curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:${port}/v2/"
}

up() {
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ -f $dir/pid && -f $dir/port ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null \
        && answers "$(cat "$dir/port")"; then
        echo "registry already up on 127.0.0.1:$(cat "$dir/port")"
        return 0
    fi
    install_registry
    command -v curl >/dev/null || die "curl is missing: apt-get install -y curl"

    # The free port may be taken between the probe and the registry's bind (an outgoing
    # connection's ephemeral port, another test's server): a bind refusal, and only that,
    # is retried on another port.
    local attempt
    for attempt in 1 2 3 4 5; do
        start_on_free_port && return 0
        grep -q "address already in use" "$dir/registry.log" \
            || die "docker-registry exited during start; its log ($dir/registry.log):
$(cat "$dir/registry.log")"
        echo "registry: port taken before the bind (attempt $attempt), trying another" >&2
    done
    die "docker-registry found no free port in 5 attempts; last log ($dir/registry.log):
$(cat "$dir/registry.log")"
}

# Start the registry on a port free right now; false when it exits during the start (its
# log says why), dies when it does not answer in time.
start_on_free_port() {
    local port
    port=$(free_port)
    mkdir -p "$dir/storage"
    cat >"$dir/config.yml" <<CONF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
CONF
    # setsid: the registry must outlive this script and not get the caller's signals.
    setsid "$REGISTRY_BIN" serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$dir/pid"

    local deadline=$((SECONDS + 30))
    until answers "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$dir/pid"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            kill "$pid" 2>/dev/null || true
            die "docker-registry did not answer http://127.0.0.1:$port/v2/ within 30 s; log: $dir/registry.log"
        fi
        sleep 0.1
    done
    echo "$port" >"$dir/port"
    echo "registry up on 127.0.0.1:$port (pid $pid, storage $dir/storage)"
}

down() {
    [[ -f $dir/pid ]] || return 0
    local pid
    pid=$(cat "$dir/pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$dir/pid" "$dir/port"
}

case $cmd in
    up) up ;;
    down) down ;;
    *) usage ;;
esac

#!/usr/bin/env bash
# moto: an EC2-compatible API server for cellet's tests, on 127.0.0.1 only.
#
#   moto.sh install     install moto[server] (pinned) into a virtualenv in the cache
#   moto.sh up DIR      start moto_server on a free loopback port; writes DIR/port,
#                       DIR/pid and DIR/moto.log; prints the endpoint URL on stdout
#   moto.sh down DIR    stop the server started in DIR (idempotent)
#
# The virtualenv lives outside the repository, under $CELLET_CACHE (default
# ~/.cache/cellet), one per pinned version, so `install` is a no-op once done. moto only
# ever sees the dummy credentials below: nothing here talks to AWS.
set -euo pipefail

MOTO_VERSION=5.2.5
CACHE_ROOT=${CELLET_CACHE:-${HOME:-/root}/.cache/cellet}
VENV=${CELLET_MOTO_VENV:-$CACHE_ROOT/moto-$MOTO_VERSION/venv}
PYTHON=${CELLET_MOTO_PYTHON:-python3}
READY_TIMEOUT=${CELLET_MOTO_READY_TIMEOUT:-60}

log() { printf '[moto] %s\n' "$*" >&2; }
die() { printf '[moto] error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# The marker file is written last, so an interrupted install is never trusted: the next
# run removes the half-built virtualenv and starts again. (The venv is built at its final
# path because its scripts embed that path.)
install() {
  installed && return 0
  command -v "$PYTHON" >/dev/null 2>&1 ||
    die "'$PYTHON' not found in PATH; install Python >= 3.9 with the venv module (Debian: apt-get install python3-venv)"
  mkdir -p "$(dirname "$VENV")"
  # Tests may start several servers at once: one installs, the others wait for it. The
  # lock is released before a server starts, which would otherwise inherit it.
  exec 9>"$VENV.lock"
  flock 9
  if ! installed; then
    log "installing moto[server]==$MOTO_VERSION into $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" ||
      die "'$PYTHON -m venv' failed; install the venv module (Debian: apt-get install python3-venv)"
    if ! "$VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION" >&2; then
      rm -rf "$VENV"
      die "pip could not install moto[server]==$MOTO_VERSION (PyPI must be reachable for the first run)"
    fi
    "$VENV/bin/moto_server" --help >/dev/null ||
      { rm -rf "$VENV"; die "moto_server does not run after install"; }
    touch "$VENV/.cellet-installed"
  fi
  exec 9>&-
}

installed() {
  [[ -x "$VENV/bin/moto_server" && -f "$VENV/.cellet-installed" ]]
}

free_port() {
  "$VENV/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# An EC2 DescribeRegions must answer, not just the HTTP server. moto routes a request to a
# service by the credential scope of its Authorization header (it does not check the
# signature); without one it would answer as S3.
answers() {
  local port=$1
  curl --silent --fail --max-time 2 \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0' \
    --data 'Action=DescribeRegions&Version=2016-11-15' \
    "http://127.0.0.1:$port/" 2>/dev/null | grep -q '<DescribeRegionsResponse'
}

up() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [[ -f "$dir/pid" ]] && running "$(cat "$dir/pid")"; then
    die "moto already runs for $dir (pid $(cat "$dir/pid")); run 'moto.sh down $dir' first"
  fi
  command -v curl >/dev/null 2>&1 || die "'curl' not found in PATH; install curl"
  install

  # A free port can be taken between the probe and the bind: retry with another.
  local attempt port pid
  for attempt in 1 2 3; do
    port=$(free_port)
    (
      export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
      export AWS_DEFAULT_REGION=us-east-1
      exec "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port"
    ) >"$dir/moto.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/pid"
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
      running "$pid" || break
      if answers "$port"; then
        echo "$port" >"$dir/port"
        log "moto $MOTO_VERSION answers on 127.0.0.1:$port (pid $pid, log $dir/moto.log)"
        echo "http://127.0.0.1:$port"
        return 0
      fi
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    log "attempt $attempt: moto did not answer on port $port; log follows"
    tail -n 20 "$dir/moto.log" >&2 || true
  done
  rm -f "$dir/pid"
  die "moto_server did not come up; see $dir/moto.log"
}

# Whether a process runs. A killed server is reparented to init, which may take a while
# to reap it: a zombie counts as stopped.
running() {
  local state
  state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# moto keeps nothing worth saving, and on SIGTERM it takes seconds to exit (longer while
# a client holds a keep-alive connection open), so it is killed outright.
down() {
  local dir=$1
  [[ -f "$dir/pid" ]] || return 0
  local pid tick
  pid=$(cat "$dir/pid")
  kill -KILL "$pid" 2>/dev/null || true
  for ((tick = 0; tick < 50; tick++)); do
    running "$pid" || break
    sleep 0.1
  done
  rm -f "$dir/pid" "$dir/port"
}

case "${1:-}" in
  install) install ;;
  up) [[ $# -eq 2 ]] || usage; up "$2" ;;
  down) [[ $# -eq 2 ]] || usage; down "$2" ;;
  *) usage ;;
esac

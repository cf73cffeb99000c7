#!/usr/bin/env bash
# cellet test control plane: etcd + kube-apiserver + kube-scheduler +
# kube-controller-manager (+ kubectl), built from the Go modules pinned in
# tests/cluster/go.mod and run on 127.0.0.1 only.
#
#   cluster.sh build                    build the five binaries (cached)
#   cluster.sh up DIR                   start a control plane with state in DIR
#   cluster.sh down DIR                 stop it (idempotent)
#   cluster.sh restart-apiserver DIR [--kill]
#                                       stop (SIGTERM; --kill: SIGKILL) and start
#                                       only kube-apiserver, same flags and port
#   cluster.sh kubectl DIR ARGS...      kubectl as cluster-admin
#   cluster.sh node-kubeconfig DIR NODE write DIR/nodes/NODE.kubeconfig
#                                       (client cert CN=system:node:NODE)
#   cluster.sh status DIR               show what runs
#   cluster.sh bin-dir                  print the binary directory
#
# See README.md beside this file for the files `up` writes.
# shellcheck disable=SC2317  # (functions called indirectly, via launch/wait_for/trap)
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

# Leader election stays on, with a renew deadline long enough that the
# controller-manager and scheduler ride out `restart-apiserver` instead of
# exiting (as they do on a lost lease; no kubelet restarts them here).
LEADER_ELECTION=(
  --leader-elect-lease-duration=60s
  --leader-elect-renew-deadline=45s
  --leader-elect-retry-period=2s
)

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
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
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
  printf 'v2 CGO_ENABLED=0 -trimpath -ldflags=-s -w +version %s' "$K8S_VERSION"
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
  local hash ldflags entry name pkg i=0 n=${#COMPONENTS[@]} t0 t1 all0
  hash=$(build_hash)
  if binaries_current "$hash"; then
    log "binaries up to date in $BIN_DIR (build $hash)"
    return 0
  fi
  require_go
  mkdir -p "$BIN_DIR"
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
  exec 9>&-
}


# ------------------------------------------------------------ state dir ----

# Sets DIR (absolute) and the paths below it.
set_dir() {
  [[ -n "${1:-}" ]] || die "missing DIR argument"
  local d=$1
  [[ "$d" != *[[:space:]]* ]] || die "DIR may not contain whitespace: '$d'"
  mkdir -p "$d" 2>/dev/null || [[ -d "$d" ]] || die "cannot create $d"
  DIR=$(cd "$d" && pwd)
  PKI=$DIR/pki
  RUN=$DIR/run
  LOGS=$DIR/logs
}

# Like set_dir, but for commands that must not create DIR.
set_existing_dir() {
  [[ -n "${1:-}" ]] || die "missing DIR argument"
  [[ -d "$1" ]] || return 1
  DIR=$(cd "$1" && pwd)
  PKI=$DIR/pki
  RUN=$DIR/run
  LOGS=$DIR/logs
}

# ------------------------------------------------------------------ pki ----

write_openssl_cnf() {
  cat >"$PKI/openssl.cnf" <<CNF
# generated by cluster.sh; used only to issue this test cluster's certificates
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[apiserver_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @apiserver_san
[apiserver_san]
DNS.1 = localhost
DNS.2 = kubernetes
DNS.3 = kubernetes.default
DNS.4 = kubernetes.default.svc
DNS.5 = kubernetes.default.svc.cluster.local
IP.1 = 127.0.0.1
IP.2 = $SERVICE_IP
CNF
}

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

# new_ca NAME CN
new_ca() {
  new_key "$PKI/$1.key"
  openssl req -x509 -new -key "$PKI/$1.key" -subj "/CN=$2" -days 3650 \
    -config "$PKI/openssl.cnf" -extensions ca_ext -out "$PKI/$1.crt" 2>/dev/null
}

# new_cert CA NAME SUBJECT EXTENSION
new_cert() {
  local ca=$1 name=$2 subj=$3 ext=$4
  new_key "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -config "$PKI/openssl.cnf" \
    -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 \
    -extfile "$PKI/openssl.cnf" -extensions "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
}

ensure_pki() {
  if [[ -f "$PKI/.complete" ]]; then
    return 0
  fi
  command -v openssl >/dev/null 2>&1 || die "'openssl' not found in PATH"
  log "generating certificates in $PKI"
  rm -rf "$PKI"
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  write_openssl_cnf
  new_ca ca cellet-test-ca
  new_cert ca apiserver "/CN=kube-apiserver" apiserver_ext
  new_cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client_ext
  new_cert ca admin "/O=system:masters/CN=cellet-admin" client_ext
  new_cert ca kube-scheduler "/CN=system:kube-scheduler" client_ext
  new_cert ca kube-controller-manager "/CN=system:kube-controller-manager" client_ext
  new_ca front-proxy-ca cellet-test-front-proxy-ca
  new_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" client_ext
  new_key "$PKI/sa.key"
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  touch "$PKI/.complete"
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig FILE USER CERT KEY
write_kubeconfig() {
  local file=$1 user=$2 cert=$3 key=$4
  cat >"$file.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: cellet
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$cert")
    client-key-data: $(b64 "$key")
contexts:
- name: $user@cellet
  context:
    cluster: cellet
    user: $user
current-context: $user@cellet
KC
  chmod 600 "$file.tmp"
  mv -f "$file.tmp" "$file"
}

# ---------------------------------------------------------------- ports ----

declare -A TAKEN_PORTS=()

port_in_use() {
  [[ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]] && return 0
  # Fallback when ss cannot tell: try to connect.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pick_port VAR [PREFERRED]: sets VAR to a free TCP port on 127.0.0.1,
# PREFERRED if it is free, else one below the ephemeral range (so outgoing
# connections do not take it meanwhile). Not in a subshell: TAKEN_PORTS
# keeps one `up` from handing the same port out twice.
pick_port() {
  local var=$1 want=${2:-} p tries=0
  if [[ -n "$want" && -z "${TAKEN_PORTS[$want]:-}" ]] && ! port_in_use "$want"; then
    TAKEN_PORTS[$want]=1
    printf -v "$var" '%s' "$want"
    return 0
  fi
  while ((tries++ < 200)); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    if [[ -z "${TAKEN_PORTS[$p]:-}" ]] && ! port_in_use "$p"; then
      TAKEN_PORTS[$p]=1
      printf -v "$var" '%s' "$p"
      return 0
    fi
  done
  die "no free port found in 20000-31999"
}

# ------------------------------------------------------------ processes ----

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

# is_ours NAME PID: PID is alive and runs the binary we started as NAME.
is_ours() {
  local name=$1 pid=$2 exe want
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  want=$(cat "$RUN/$name.exe" 2>/dev/null) || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)}
  [[ "$exe" == "$want" ]] || return 1
  # Zombies count as gone.
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}

running() { is_ours "$1" "$(pid_of "$1")"; }

log_tail() {
  local name=$1
  printf '[cluster] ---- last lines of %s ----\n' "$LOGS/$name.log" >&2
  tail -n "${CELLET_CLUSTER_LOG_TAIL:-40}" "$LOGS/$name.log" >&2 2>/dev/null || true
  printf '[cluster] ----\n' >&2
}

# start NAME: runs BIN_DIR/NAME with the arguments in RUN/NAME.args.
start() {
  local name=$1 bin=$BIN_DIR/$1 args=()
  [[ -x "$bin" ]] || die "$bin missing; run '$0 build'"
  mapfile -t args <"$RUN/$name.args"
  printf '%s\n' "$bin" >"$RUN/$name.exe"
  printf '==== %s: starting %s\n' "$(date -u +%FT%TZ)" "$name" >>"$LOGS/$name.log"
  # setsid: the servers get a session of their own, so a Ctrl-C or SIGHUP
  # sent to the caller's process group does not hit them; `down` stops them.
  setsid "$bin" "${args[@]}" </dev/null >>"$LOGS/$name.log" 2>&1 &
  local pid=$! i exe
  printf '%s\n' "$pid" >"$RUN/$name.pid"
  # Until the forked shell has exec'd setsid and setsid the server,
  # /proc/PID/exe is not the server yet; wait for that (or for it to die).
  for ((i = 0; i < 100; i++)); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || break
    [[ "${exe% (deleted)}" != "$bin" ]] || break
    sleep 0.05
  done
}

# stop NAME: SIGTERM, wait STOP_TIMEOUT seconds, SIGKILL.
stop() {
  local name=$1 pid i
  pid=$(pid_of "$name")
  if is_ours "$name" "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      is_ours "$name" "$pid" || break
      sleep 0.1
    done
    if is_ours "$name" "$pid"; then
      log "$name (pid $pid) did not stop after ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        is_ours "$name" "$pid" || break
        sleep 0.1
      done
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}

# Processes started from this DIR whose pid file was lost (e.g. an `up`
# killed half-way): any process running one of our binaries with DIR in
# its command line.
strays() {
  local p exe cmd name
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    exe=${exe% (deleted)}
    name=${exe##*/}
    case " ${SERVERS[*]} " in *" $name "*) ;; *) continue ;; esac
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    [[ "$cmd" == *"$DIR/"* ]] || continue
    [[ "$(awk '{print $3}' "$p/stat" 2>/dev/null)" != Z ]] || continue
    printf '%s %s\n' "${p#/proc/}" "$name"
  done
}

stop_all() {
  local i pid name
  for ((i = ${#SERVERS[@]} - 1; i >= 0; i--)); do
    stop "${SERVERS[$i]}"
  done
  while read -r pid name; do
    [[ -n "$pid" ]] || continue
    log "stopping stray $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      [[ -d /proc/$pid ]] || break
      sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done < <(strays)
}

# ---------------------------------------------------------------- waits ----

CURL=(curl --silent --show-error --fail --max-time 5)

# wait_for NAME WHAT TIMEOUT CMD...: polls CMD until it succeeds; fails if
# NAME's process dies or TIMEOUT seconds pass. Returns 1 on failure, with
# WAIT_DIED=1 if the process died.
wait_for() {
  local name=$1 what=$2 timeout=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  WAIT_DIED=0
  while true; do
    if ! running "$name"; then
      WAIT_DIED=1
      log "$name exited while waiting for $what"
      return 1
    fi
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.25
  done
}

etcd_healthy() { "${CURL[@]}" "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() {
  "${CURL[@]}" --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$API_PORT/readyz" | grep -qx ok
}
component_healthy() { "${CURL[@]}" --insecure "https://127.0.0.1:$1/healthz" | grep -qx ok; }
kube() { "$BIN_DIR/kubectl" --kubeconfig "$DIR/admin.kubeconfig" --request-timeout=5s "$@"; }

# ------------------------------------------------------------------- args ----

write_args() {
  local name=$1
  shift
  printf '%s\n' "$@" >"$RUN/$name.args"
}

etcd_args() {
  write_args etcd \
    --name=cellet \
    --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="cellet=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --log-level=warn \
    --unsafe-no-fsync=true
}

apiserver_args() {
  local extra=()
  # Extra flags for special tests, whitespace-separated.
  read -r -a extra <<<"${CELLET_APISERVER_EXTRA_ARGS:-}"
  write_args kube-apiserver \
    --bind-address=127.0.0.1 \
    --advertise-address="$ADVERTISE_ADDRESS" \
    --secure-port="$API_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --endpoint-reconciler-type="$ENDPOINT_RECONCILER" \
    --shutdown-watch-termination-grace-period=5s \
    --profiling=false \
    --v="$VERBOSITY" \
    "${extra[@]}"
}

controller_manager_args() {
  write_args kube-controller-manager \
    --kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --controllers='*' \
    --leader-elect=true \
    "${LEADER_ELECTION[@]}" \
    --use-service-account-credentials=true \
    --allocate-node-cidrs=true \
    --cluster-cidr="$CLUSTER_CIDR" \
    --node-cidr-mask-size="$NODE_CIDR_MASK" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --cluster-name=cellet \
    --root-ca-file="$PKI/ca.crt" \
    --service-account-private-key-file="$PKI/sa.key" \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --client-ca-file="$PKI/ca.crt" \
    --flex-volume-plugin-dir="$DIR/flexvolume" \
    --profiling=false \
    --v="$VERBOSITY"
}

scheduler_args() {
  write_args kube-scheduler \
    --kubeconfig="$DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$SCHED_PORT" \
    --leader-elect=true \
    "${LEADER_ELECTION[@]}" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --client-ca-file="$PKI/ca.crt" \
    --profiling=false \
    --v="$VERBOSITY"
}

# -------------------------------------------------------------------- up ----

load_ports() {
  ETCD_PORT='' ETCD_PEER_PORT='' API_PORT='' KCM_PORT='' SCHED_PORT=''
  if [[ -f "$RUN/ports" ]]; then
    # shellcheck disable=SC1091
    source "$RUN/ports"
  fi
}

save_ports() {
  cat >"$RUN/ports" <<P
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
API_PORT=$API_PORT
KCM_PORT=$KCM_PORT
SCHED_PORT=$SCHED_PORT
P
}

write_env() {
  local q
  {
    printf '# written by tests/cluster/cluster.sh up; source it: . %s/env\n' "$DIR"
    for q in \
      "CELLET_CLUSTER_DIR=$DIR" \
      "KUBECONFIG=$DIR/admin.kubeconfig" \
      "CELLET_KUBECONFIG=$DIR/admin.kubeconfig" \
      "CELLET_K8S_VERSION=$K8S_VERSION" \
      "CELLET_APISERVER_URL=https://127.0.0.1:$API_PORT" \
      "CELLET_APISERVER_PORT=$API_PORT" \
      "CELLET_ETCD_URL=http://127.0.0.1:$ETCD_PORT" \
      "CELLET_ETCD_PORT=$ETCD_PORT" \
      "CELLET_ETCD_PEER_PORT=$ETCD_PEER_PORT" \
      "CELLET_CONTROLLER_MANAGER_PORT=$KCM_PORT" \
      "CELLET_SCHEDULER_PORT=$SCHED_PORT" \
      "CELLET_CA_CERT=$PKI/ca.crt" \
      "CELLET_CA_KEY=$PKI/ca.key" \
      "CELLET_ADMIN_CERT=$PKI/admin.crt" \
      "CELLET_ADMIN_KEY=$PKI/admin.key" \
      "CELLET_APISERVER_KUBELET_CLIENT_CN=kube-apiserver-kubelet-client" \
      "CELLET_FRONT_PROXY_CA_CERT=$PKI/front-proxy-ca.crt" \
      "CELLET_SERVICE_ACCOUNT_ISSUER=https://kubernetes.default.svc.cluster.local" \
      "CELLET_SERVICE_CIDR=$SERVICE_CIDR" \
      "CELLET_KUBERNETES_SERVICE_IP=$SERVICE_IP" \
      "CELLET_CLUSTER_CIDR=$CLUSTER_CIDR" \
      "CELLET_NODE_CIDR_MASK=$NODE_CIDR_MASK" \
      "CELLET_CLUSTER_BIN=$BIN_DIR" \
      "CELLET_KUBECTL=$BIN_DIR/kubectl" \
      "CELLET_CLUSTER_LOGS=$LOGS"; do
      printf 'export %s\n' "$q"
    done
  } >"$DIR/env.tmp"
  mv -f "$DIR/env.tmp" "$DIR/env"
}

UP_IN_PROGRESS=0
on_exit() {
  local rc=$?
  if ((rc != 0 && UP_IN_PROGRESS)); then
    if [[ "${CELLET_CLUSTER_KEEP_ON_FAILURE:-0}" == 1 ]]; then
      log "up failed; leaving processes running (CELLET_CLUSTER_KEEP_ON_FAILURE=1)"
    else
      log "up failed; stopping what was started"
      UP_IN_PROGRESS=0
      stop_all || true
    fi
  fi
}

# launch NAME ARGS_FN PORT_VARS... -- WHAT CHECK...: starts NAME, waits for
# CHECK, and retries with fresh ports if it lost a port race.
launch() {
  local name=$1 args_fn=$2
  shift 2
  local vars=() attempt v
  while [[ $1 != -- ]]; do vars+=("$1"); shift; done
  shift
  local what=$1
  shift
  for attempt in 1 2 3; do
    $args_fn
    start "$name"
    if wait_for "$name" "$what" "$READY_TIMEOUT" "$@"; then
      log "$name is up (pid $(pid_of "$name"))"
      return 0
    fi
    if ((WAIT_DIED)) && ((attempt < 3)) && grep -q 'address already in use' "$LOGS/$name.log" 2>/dev/null; then
      log "$name lost a port race; retrying with new ports"
      rm -f "$RUN/$name.pid"
      for v in "${vars[@]}"; do
        pick_port "$v"
      done
      continue
    fi
    stop "$name"
    log_tail "$name"
    die "$name did not become ready"
  done
}

cmd_up() {
  set_dir "$1"
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  command -v curl >/dev/null 2>&1 || die "'curl' not found in PATH"
  if running kube-apiserver && running etcd; then
    load_ports
    if apiserver_ready; then
      log "already up in $DIR (apiserver https://127.0.0.1:$API_PORT); 'down' it first to restart"
      return 0
    fi
  fi
  local name
  for name in "${SERVERS[@]}"; do
    if running "$name"; then
      die "$name already runs from $DIR (pid $(pid_of "$name")) but the cluster is not healthy; run '$0 down $DIR' first"
    fi
  done
  local t0=$SECONDS
  cmd_build
  UP_IN_PROGRESS=1
  mkdir -p "$RUN" "$LOGS" "$DIR/nodes" "$DIR/flexvolume"
  if [[ -n "$(strays)" ]]; then
    log "found processes left from an earlier run in $DIR; stopping them"
    stop_all
  fi
  ensure_pki

  # Ports: reuse those of an earlier run in this DIR when free (etcd keeps
  # its peer URL in its data), else pick free ones.
  load_ports
  local var
  for var in ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT; do
    pick_port "$var" "${!var}"
  done
  ADVERTISE_ADDRESS=${CELLET_APISERVER_ADVERTISE_ADDRESS:-127.0.0.1}
  ENDPOINT_RECONCILER=${CELLET_APISERVER_ENDPOINT_RECONCILER:-}
  if [[ -z "$ENDPOINT_RECONCILER" ]]; then
    # Endpoints may not hold loopback addresses, so with the default
    # advertise address the `kubernetes` Service gets no endpoints.
    case $ADVERTISE_ADDRESS in 127.*) ENDPOINT_RECONCILER=none ;; *) ENDPOINT_RECONCILER=lease ;; esac
  fi

  : >"$LOGS/etcd.log"
  : >"$LOGS/kube-apiserver.log"
  : >"$LOGS/kube-controller-manager.log"
  : >"$LOGS/kube-scheduler.log"

  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  launch etcd etcd_args ETCD_PORT ETCD_PEER_PORT -- "etcd /health" etcd_healthy
  save_ports

  log "starting kube-apiserver on 127.0.0.1:$API_PORT"
  launch kube-apiserver apiserver_args API_PORT -- "kube-apiserver /readyz" apiserver_ready

  write_kubeconfig "$DIR/admin.kubeconfig" cellet-admin "$PKI/admin.crt" "$PKI/admin.key"
  write_kubeconfig "$DIR/kube-controller-manager.kubeconfig" system:kube-controller-manager \
    "$PKI/kube-controller-manager.crt" "$PKI/kube-controller-manager.key"
  write_kubeconfig "$DIR/kube-scheduler.kubeconfig" system:kube-scheduler \
    "$PKI/kube-scheduler.crt" "$PKI/kube-scheduler.key"

  # A DIR that ran before keeps the leases of the previous controller-manager
  # and scheduler in etcd; the new ones would wait for them to expire.
  drop_lease kube-controller-manager
  drop_lease kube-scheduler

  log "starting kube-controller-manager on 127.0.0.1:$KCM_PORT"
  launch kube-controller-manager controller_manager_args KCM_PORT -- \
    "kube-controller-manager /healthz" component_healthy_kcm
  log "starting kube-scheduler on 127.0.0.1:$SCHED_PORT"
  launch kube-scheduler scheduler_args SCHED_PORT -- \
    "kube-scheduler /healthz" component_healthy_sched

  save_ports
  write_env

  wait_for kube-controller-manager "the default namespace and its service account" "$READY_TIMEOUT" \
    kube -n default get serviceaccount default ||
    { log_tail kube-controller-manager; log_tail kube-apiserver; die "the default service account did not appear"; }

  UP_IN_PROGRESS=0
  log "up in $((SECONDS - t0))s: apiserver https://127.0.0.1:$API_PORT, etcd 127.0.0.1:$ETCD_PORT"
  log "env: . $DIR/env   (KUBECONFIG=$DIR/admin.kubeconfig)"
}

drop_lease() {
  kube -n kube-system delete lease "$1" --ignore-not-found >/dev/null 2>&1 || true
}

component_healthy_kcm() { component_healthy "$KCM_PORT"; }
component_healthy_sched() { component_healthy "$SCHED_PORT"; }

# ----------------------------------------------------------- other cmds ----

cmd_down() {
  if ! set_existing_dir "$1"; then
    log "nothing to stop: $1 does not exist"
    return 0
  fi
  stop_all
  if [[ -n "$(strays)" ]]; then
    die "some processes of $DIR are still running: $(strays | tr '\n' ' ')"
  fi
  log "down: $DIR"
}

# restart-apiserver DIR [--kill]: SIGTERM (or SIGKILL, a crash) the
# apiserver and start it again with the same flags and port.
cmd_restart_apiserver() {
  set_existing_dir "$1" || die "$1 does not exist"
  local mode=${2:-}
  [[ -z "$mode" || "$mode" == --kill ]] || usage
  [[ -f "$RUN/kube-apiserver.args" ]] || die "no cluster was started in $DIR"
  running etcd || die "etcd of $DIR is not running; use 'up'"
  load_ports
  local t0=$SECONDS i pid
  if [[ "$mode" == --kill ]]; then
    pid=$(pid_of kube-apiserver)
    if is_ours kube-apiserver "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        is_ours kube-apiserver "$pid" || break
        sleep 0.05
      done
      log "killed kube-apiserver (pid $pid)"
    fi
    rm -f "$RUN/kube-apiserver.pid"
  else
    stop kube-apiserver
  fi
  for ((i = 0; i < 50; i++)); do
    port_listening "$API_PORT" || break
    sleep 0.1
  done
  port_listening "$API_PORT" && die "port $API_PORT is still taken after stopping kube-apiserver"
  start kube-apiserver
  wait_for kube-apiserver "kube-apiserver /readyz" "$READY_TIMEOUT" apiserver_ready ||
    { log_tail kube-apiserver; die "kube-apiserver did not come back"; }
  log "kube-apiserver restarted on 127.0.0.1:$API_PORT in $((SECONDS - t0))s (pid $(pid_of kube-apiserver))"
  # Should the outage have outlasted a leader-election renew deadline, the
  # controller-manager or scheduler exited; bring it back like a kubelet would.
  local name check
  for name in kube-controller-manager kube-scheduler; do
    if ! running "$name"; then
      log "$name exited during the apiserver restart; starting it again"
      drop_lease "$name"
      start "$name"
      case $name in
        kube-controller-manager) check=component_healthy_kcm ;;
        *) check=component_healthy_sched ;;
      esac
      wait_for "$name" "$name /healthz" "$READY_TIMEOUT" "$check" ||
        { log_tail "$name"; die "$name did not come back"; }
    fi
  done
}

port_listening() { [[ -n "$(ss -Htln "( sport = :$1 )" 2>/dev/null)" ]]; }

cmd_kubectl() {
  set_existing_dir "$1" || die "$1 does not exist"
  shift
  [[ -f "$DIR/admin.kubeconfig" ]] || die "no admin.kubeconfig in $DIR; run '$0 up $DIR'"
  exec "$BIN_DIR/kubectl" --kubeconfig "$DIR/admin.kubeconfig" "$@"
}

# node-kubeconfig DIR NODE: a client identity for a kubelet (the cellet
# host) named NODE: CN=system:node:NODE, O=system:nodes, which the Node
# authorizer and NodeRestriction admission expect.
cmd_node_kubeconfig() {
  set_existing_dir "$1" || die "$1 does not exist"
  local node=${2:-}
  [[ "$node" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || die "invalid node name '$node'"
  [[ -f "$PKI/.complete" ]] || die "no PKI in $DIR; run '$0 up $DIR' first"
  load_ports
  [[ -n "$API_PORT" ]] || die "no apiserver port recorded in $DIR"
  mkdir -p "$DIR/nodes"
  new_cert ca "node-$node" "/O=system:nodes/CN=system:node:$node" client_ext
  mv -f "$PKI/node-$node.crt" "$DIR/nodes/$node.crt"
  mv -f "$PKI/node-$node.key" "$DIR/nodes/$node.key"
  write_kubeconfig "$DIR/nodes/$node.kubeconfig" "system:node:$node" \
    "$DIR/nodes/$node.crt" "$DIR/nodes/$node.key"
  printf '%s\n' "$DIR/nodes/$node.kubeconfig"
}

cmd_status() {
  set_existing_dir "$1" || die "$1 does not exist"
  local name rc=0
  load_ports
  for name in "${SERVERS[@]}"; do
    if running "$name"; then
      printf '%-24s running (pid %s)\n' "$name" "$(pid_of "$name")"
    else
      printf '%-24s stopped\n' "$name"
      rc=1
    fi
  done
  if [[ -n "$API_PORT" ]] && apiserver_ready; then
    printf '%-24s https://127.0.0.1:%s ready\n' apiserver "$API_PORT"
  else
    rc=1
  fi
  return $rc
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1
  shift
  case "$cmd" in
    build) cmd_build ;;
    up) [[ $# -eq 1 ]] || usage; cmd_up "$1" ;;
    down) [[ $# -eq 1 ]] || usage; cmd_down "$1" ;;
    restart-apiserver) [[ $# -eq 1 || $# -eq 2 ]] || usage; cmd_restart_apiserver "$@" ;;
    kubectl) [[ $# -ge 1 ]] || usage; cmd_kubectl "$@" ;;
    node-kubeconfig) [[ $# -eq 2 ]] || usage; cmd_node_kubeconfig "$1" "$2" ;;
    status) [[ $# -eq 1 ]] || usage; cmd_status "$1" ;;
    bin-dir) printf '%s\n' "$BIN_DIR" ;;
    -h|--help|help) usage ;;
    *) usage ;;
  esac
}

main "$@"
exit $?

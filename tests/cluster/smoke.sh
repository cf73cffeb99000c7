#!/usr/bin/env bash
# Self-check of tests/cluster: build → up → API checks (version, node CIDR
# allocation by the controller-manager, scheduling by the scheduler, Node
# authorization, apiserver restart) → down → no process left.
#
#   tests/cluster/smoke.sh [DIR]      (DIR defaults to a new temp dir)
#
# Last line: "N passed, N failed"; exits non-zero if anything failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER=$HERE/cluster.sh
ARG_DIR=${1:-}
DIR=${1:-$(mktemp -d "${TMPDIR:-/tmp}/cellet-smoke.XXXXXX")}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
NODE=smoke-node
PASSED=0
FAILED=0
UP=0

pass() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$*"; }

kc() { "$CLUSTER" kubectl "$DIR" --request-timeout=10s "$@"; }

# poll SECONDS CMD...: until CMD succeeds.
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# Processes of this cluster: anything whose command line mentions DIR.
cluster_processes() {
  local p cmd
  for p in /proc/[0-9]*; do
    [[ "${p#/proc/}" != "$$" ]] || continue
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *"$DIR/"*)
        case "$cmd" in *smoke.sh*|*cluster.sh*) continue ;; esac
        [[ "$(awk '{print $3}' "$p/stat" 2>/dev/null)" != Z ]] || continue
        printf '%s %s\n' "${p#/proc/}" "${cmd:0:80}" ;;
    esac
  done
}

finish() {
  local rc=$?
  trap - EXIT
  if ((UP)); then
    if "$CLUSTER" down "$DIR"; then pass "down"; else fail "down"; fi
    local left
    left=$(cluster_processes)
    if [[ -z "$left" ]]; then pass "no cluster process remains"; else fail "processes remain: $left"; fi
    if "$CLUSTER" down "$DIR" >/dev/null 2>&1; then pass "down is idempotent"; else fail "second down"; fi
  fi
  if ((rc != 0 && FAILED == 0)); then
    fail "smoke.sh stopped early (exit $rc)"
  fi
  if ((FAILED == 0)) && [[ -z "$ARG_DIR" && "${CELLET_SMOKE_KEEP:-0}" != 1 ]]; then
    rm -rf "$DIR"
  else
    printf 'state and logs kept in %s\n' "$DIR"
  fi
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  ((FAILED == 0))
}
trap finish EXIT

# 1. build
t0=$SECONDS
if "$CLUSTER" build; then pass "build ($((SECONDS - t0))s)"; else fail "build"; exit 1; fi

# 2. up
t0=$SECONDS
UP=1
if "$CLUSTER" up "$DIR"; then pass "up ($((SECONDS - t0))s)"; else fail "up"; exit 1; fi
# shellcheck disable=SC1091
source "$DIR/env"
for f in "$DIR/admin.kubeconfig" "$CELLET_CA_CERT" "$CELLET_CA_KEY" "$DIR/logs/kube-apiserver.log" \
         "$DIR/run/kube-apiserver.pid"; do
  [[ -s "$f" ]] || fail "up did not write $f"
done
if [[ "$CELLET_APISERVER_URL" == https://127.0.0.1:* && -n "$CELLET_ETCD_PORT" ]]; then
  pass "env file ($CELLET_APISERVER_URL)"
else
  fail "env file: $(cat "$DIR/env")"
fi

# 3. only loopback listeners
listeners=$(ss -Htlnp 2>/dev/null | grep -E 'etcd|kube-' || true)
if [[ -n "$listeners" ]] && ! grep -vE '127\.0\.0\.1:' <<<"$listeners" | grep -q .; then
  pass "components listen on 127.0.0.1 only"
else
  fail "listeners not loopback-only: $listeners"
fi

# 4. readyz
if [[ "$(kc get --raw /readyz 2>&1)" == ok ]]; then pass "/readyz"; else fail "/readyz"; fi

# 5. versions
ver=$(kc version 2>&1 || true)
if grep -q '^Client Version: v1.37.2$' <<<"$ver" && grep -q '^Server Version: v1.37.2$' <<<"$ver"; then
  pass "kubectl version: client and server v1.37.2"
else
  fail "kubectl version: $ver"
fi

# 6. a node registers itself with its own identity (Node authorizer +
#    NodeRestriction), like the cellet host will.
nodekc=$("$CLUSTER" node-kubeconfig "$DIR" "$NODE")
node_yaml=$(cat <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $NODE
  labels:
    kubernetes.io/hostname: $NODE
    kubernetes.io/os: linux
    type: virtual-kubelet
spec:
  taints:
  - key: virtual-kubelet.io/provider
    value: cellet
    effect: NoSchedule
status:
  capacity: {cpu: "8", memory: 32Gi, pods: "110"}
  allocatable: {cpu: "8", memory: 32Gi, pods: "110"}
YAML
)
if out=$("$CELLET_KUBECTL" --kubeconfig "$nodekc" create -f - <<<"$node_yaml" 2>&1); then
  pass "node $NODE created with its own identity"
else
  fail "create node: $out"
fi
if out=$("$CELLET_KUBECTL" --kubeconfig "$nodekc" get secrets -A 2>&1); then
  fail "node identity may list all secrets (authorization not Node,RBAC?)"
elif grep -qi forbidden <<<"$out"; then
  pass "node identity is denied cluster-wide secrets"
else
  fail "node identity secrets check: $out"
fi

# 7. the controller-manager allocates the node a PodCIDR from 10.244.0.0/16
cidr_assigned() {
  cidr=$(kc get node "$NODE" -o 'jsonpath={.spec.podCIDR}' 2>/dev/null) &&
    [[ "$cidr" =~ ^10\.244\.[0-9]{1,3}\.0/24$ ]]
}
cidr=''
if poll 60 cidr_assigned; then pass "node podCIDR $cidr"; else fail "no podCIDR within 60s (got '$cidr')"; fi

# 8. the scheduler binds a Deployment's pod to the node
deploy_yaml=$(cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: smoke
  namespace: default
spec:
  replicas: 1
  selector:
    matchLabels: {app: smoke}
  template:
    metadata:
      labels: {app: smoke}
    spec:
      nodeSelector:
        kubernetes.io/hostname: $NODE
      tolerations:
      - key: virtual-kubelet.io/provider
        operator: Equal
        value: cellet
        effect: NoSchedule
      - key: node.kubernetes.io/not-ready
        operator: Exists
      - key: node.kubernetes.io/unreachable
        operator: Exists
      containers:
      - name: pause
        image: registry.k8s.io/pause:3.10
YAML
)
if out=$(kc apply -f - <<<"$deploy_yaml" 2>&1); then pass "deployment created"; else fail "deployment: $out"; fi
pod_bound() {
  bound=$(kc -n default get pods -l app=smoke -o 'jsonpath={.items[*].spec.nodeName}' 2>/dev/null) &&
    [[ "$bound" == "$NODE" ]]
}
bound=''
if poll 60 pod_bound; then pass "scheduler bound the pod to $NODE"; else fail "pod not bound within 60s (nodeName '$bound')"; fi

# 9. restart-apiserver keeps the port and the data; the controller-manager
#    and scheduler stay up through it
node_cidr() { kc get node "$NODE" -o 'jsonpath={.spec.podCIDR}' 2>&1; }
pids() { cat "$DIR/run/kube-controller-manager.pid" "$DIR/run/kube-scheduler.pid" 2>/dev/null | tr '\n' ' '; }
before=$(pids)
t0=$SECONDS
if "$CLUSTER" restart-apiserver "$DIR"; then
  if [[ "$(node_cidr)" == "$cidr" ]]; then
    pass "restart-apiserver ($((SECONDS - t0))s); state survives"
  else
    fail "after restart-apiserver the node is gone or changed"
  fi
else
  fail "restart-apiserver"
fi
t0=$SECONDS
if "$CLUSTER" restart-apiserver "$DIR" --kill && [[ "$(node_cidr)" == "$cidr" ]]; then
  pass "restart-apiserver --kill ($((SECONDS - t0))s)"
else
  fail "restart-apiserver --kill"
fi
if [[ "$(pids)" == "$before" ]] && "$CLUSTER" status "$DIR" >/dev/null; then
  pass "controller-manager and scheduler kept running"
else
  fail "status after restarts: $("$CLUSTER" status "$DIR" 2>&1)"
fi

# 10. down, then up again on the same DIR: same CA, data kept, controllers work
if "$CLUSTER" down "$DIR" && "$CLUSTER" up "$DIR"; then
  if [[ "$(node_cidr)" == "$cidr" ]]; then pass "down + up keeps the cluster's data"; else fail "data lost over down + up"; fi
  kc -n default delete deployment smoke --wait=false >/dev/null 2>&1 || true
  kc -n default create deployment smoke2 --image=registry.k8s.io/pause:3.10 >/dev/null 2>&1 || true
  rs_made() { [[ -n "$(kc -n default get rs -l app=smoke2 -o name 2>/dev/null)" ]]; }
  if poll 60 rs_made; then pass "controller-manager works after re-up"; else fail "no ReplicaSet for smoke2 after re-up"; fi
else
  fail "down + up on the same DIR"
fi

# 11. down and leftovers: in finish

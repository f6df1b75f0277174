#!/usr/bin/env bash
# Manages the local test cluster: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok (fake nodes whose pods go Running/Ready) and a local volume
# provisioner, each an upstream binary running as a plain process bound to 127.0.0.1.
#
#   hack/cluster.sh up       build what is missing, start everything, wait until all is ready;
#                            with REAL_NODES=N also N real nodes (each its own network
#                            namespace, containerd, kubelet and kube-proxy) where pods run for
#                            real (see hack/node.sh; REAL_NODE=1 is one)
#   hack/cluster.sh down     stop exactly the processes `up` started and remove the state
#   hack/cluster.sh status   show each component and its health (exit 1 if any is unhealthy)
#   hack/cluster.sh env      print the exports that point kubectl and the tests at the cluster
#   hack/cluster.sh restart COMPONENT
#                            stop one component and start it again with the same arguments,
#                            as a control-plane upgrade would (waits until it is healthy)
#   hack/cluster.sh node-kill I
#                            power loss of real node I: its network dark, every process of it
#                            killed at once, nothing restarted (hack/faults.sh kill uses it)
#   hack/cluster.sh node-boot I [empty]
#                            boot real node I after node-kill, with its disk or an empty one
#
# State (certificates, kubeconfig, logs, pid files, etcd data) lives in
# $OPERATOR_KIT_CLUSTER_DIR (default: .cluster/ in the repository).
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.sh
source "$repo_root/hack/versions.sh"

state_dir=${OPERATOR_KIT_CLUSTER_DIR:-$repo_root/.cluster}
etcd_port=${ETCD_PORT:-2379}
etcd_peer_port=${ETCD_PEER_PORT:-2380}
apiserver_port=${APISERVER_PORT:-6443}
controller_manager_port=${CONTROLLER_MANAGER_PORT:-10257}
scheduler_port=${SCHEDULER_PORT:-10259}
kwok_port=${KWOK_PORT:-10247}
node_count=${NODE_COUNT:-3}
startup_timeout=${STARTUP_TIMEOUT_SECONDS:-120}

# Start order; `down` stops them in reverse.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok local-provisioner)
# shellcheck source=node.sh
source "$repo_root/hack/node.sh"
# The real nodes' components, when this cluster has some (or `up` is asked for some): each
# node's containerd, kubelet and kube-proxy, then the cluster's DNS.
real_nodes=$(real_node_count)
# `up` asks for the environment's count; a running cluster keeps its own (see cmd_up).
wanted_real_nodes=$real_nodes
if [ "${1:-}" = up ]; then
  if [ -n "${REAL_NODES:-}" ]; then wanted_real_nodes=$REAL_NODES
  elif [ "${REAL_NODE:-0}" = 1 ]; then wanted_real_nodes=1
  else wanted_real_nodes=0; fi
  [ -d "$state_dir" ] || real_nodes=$wanted_real_nodes
fi
for ((node_index = 0; node_index < real_nodes; node_index++)); do
  # shellcheck disable=SC2207 # three words, no globbing
  components+=($(node_components_of "$node_index"))
done
[ "$real_nodes" -eq 0 ] || components+=(coredns host-proxy)
# What a failed start does: `up` stops everything it started; `restart` leaves the rest running.
on_failure=abort_up

log() { printf '[cluster] %s\n' "$*" >&2; }

binary_of() {
  case $1 in
    etcd) echo "$ETCD_BIN_DIR/bin/etcd" ;;
    kwok) echo "$KWOK_BIN_DIR/bin/kwok" ;;
    local-provisioner) echo "$LOCAL_PROVISIONER_BIN_DIR/bin/local-provisioner" ;;
    containerd-*) command -v containerd ;;
    coredns) echo "$COREDNS_BIN_DIR/bin/coredns" ;;
    host-proxy) echo "$KUBERNETES_BIN_DIR/bin/kube-proxy" ;;
    kubelet-* | kube-proxy-*) echo "$KUBERNETES_BIN_DIR/bin/${1%-*}" ;;
    *) echo "$KUBERNETES_BIN_DIR/bin/$1" ;;
  esac
}

# What a component is started through: node components run inside their node
# (hack/in-node.sh, which execs the binary: the pid stays the same).
launcher_of() {
  case $1 in
    containerd-* | kubelet-* | kube-proxy-*) echo "$repo_root/hack/in-node.sh ${1##*-}" ;;
  esac
}
kubectl() { "$KUBERNETES_BIN_DIR/bin/kubectl" --kubeconfig "$state_dir/admin.kubeconfig" "$@"; }

# The pid of a component we started, if that process is still alive and still runs our binary
# (a recycled pid must never be signalled).
running_pid() {
  local pid_file=$state_dir/pids/$1.pid pid executable
  [ -f "$pid_file" ] || return 1
  pid=$(<"$pid_file")
  [ -n "$pid" ] || return 1
  executable=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  # A binary rebuilt while its process runs shows as "<path> (deleted)": still ours.
  [ "$executable" = "$(binary_of "$1")" ] || [ "$executable" = "$(binary_of "$1") (deleted)" ] || return 1
  echo "$pid"
}

show_log_tail() {
  local log_file=$state_dir/logs/$1.log
  [ -f "$log_file" ] || return 0
  log "last lines of $log_file:"
  tail -n 25 "$log_file" | sed 's/^/    /' >&2
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid of a component's supervisor (hack/supervise.sh), if it still runs for this cluster.
supervisor_pid() {
  local pid_file=$state_dir/pids/$1.supervisor.pid pid
  [ -f "$pid_file" ] || return 1
  pid=$(<"$pid_file")
  [ -n "$pid" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "supervise.sh $state_dir/pids/$1.pid " || return 1
  echo "$pid"
}

# Stops the supervisor first (so that it does not start the component again), which passes
# SIGTERM on; a component that ignores it for 10 s is killed.
stop_component() {
  local name=$1 pid supervisor
  pid=$(running_pid "$name") || pid=
  if supervisor=$(supervisor_pid "$name"); then
    kill -TERM "$supervisor" 2>/dev/null || true
  elif [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
  fi
  if [ -n "$pid" ]; then
    for _ in $(seq 100); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
      log "$name (pid $pid) ignored SIGTERM for 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  if [ -n "${supervisor:-}" ]; then
    for _ in $(seq 20); do
      [ -d "/proc/$supervisor" ] || break
      sleep 0.1
    done
    kill -KILL "$supervisor" 2>/dev/null || true
  fi
  rm -f "$state_dir/pids/$name.pid" "$state_dir/pids/$name.supervisor.pid"
}

cmd_down() {
  local index demo_pid
  # The operator `hack/demo.sh` started, if it still runs.
  if [ -f "$state_dir/redis-operator.pid" ]; then
    demo_pid=$(<"$state_dir/redis-operator.pid")
    # "(deleted)": the binary was rebuilt (cargo test relinks it) while the demo ran.
    case "$(readlink "/proc/$demo_pid/exe" 2>/dev/null)" in
      */redis-operator | */redis-operator" (deleted)") kill "$demo_pid" 2>/dev/null || true ;;
    esac
  fi
  for ((index = ${#components[@]} - 1; index >= 0; index--)); do stop_component "${components[index]}"; done
  # The real node's containers, mounts, cgroups and network (nothing when there was none).
  node_teardown
  if [ -d "$state_dir" ]; then
    rm -rf "$state_dir"
    log "stopped and removed $state_dir"
  fi
}

# Called when `up` fails half-way: explain, then leave nothing running.
abort_up() {
  local message=$1 component=${2:-}
  log "error: $message"
  [ -z "$component" ] || show_log_tail "$component"
  log "stopping the components already started"
  cmd_down
  exit 1
}

# Runs a component under hack/supervise.sh in its own session, so that it outlives the shell
# and is started again if it exits; records the pids and the arguments (for `restart`).
start_component() {
  local name=$1 binary launcher
  shift
  binary=$(binary_of "$name")
  [ -x "$binary" ] || $on_failure "binary $binary is missing: run hack/build-binaries.sh"
  launcher=$(launcher_of "$name")
  mkdir -p "$state_dir/args"
  printf '%s\0' "$@" >"$state_dir/args/$name"
  rm -f "$state_dir/pids/$name.pid"
  # shellcheck disable=SC2086 # the launcher is a command and its arguments, or nothing
  setsid bash "$repo_root/hack/supervise.sh" "$state_dir/pids/$name.pid" $launcher "$binary" "$@" \
    >>"$state_dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$state_dir/pids/$name.supervisor.pid"
  # Started once its process runs the binary (a launcher execs it under the same pid).
  for _ in $(seq 50); do
    running_pid "$name" >/dev/null && return 0
    sleep 0.1
  done
  $on_failure "$name did not start under its supervisor" "$name"
}

# Polls a check until it passes; fails early with the log when the component has died.
wait_for() {
  local component=$1 description=$2 deadline=$((SECONDS + startup_timeout))
  shift 2
  until "$@" >/dev/null 2>&1; do
    running_pid "$component" >/dev/null || $on_failure "$component exited while waiting for $description" "$component"
    [ $SECONDS -lt $deadline ] || $on_failure "timed out after ${startup_timeout}s waiting for $description" "$component"
    sleep 0.2
  done
}

generate_credentials() {
  local pki=$state_dir/pki
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=operator-kit-local-ca \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf '%s\n' \
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:$node_address,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      'extendedKeyUsage=serverAuth' 'keyUsage=digitalSignature,keyEncipherment' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # The API server's client certificate for kubelets (logs, exec, port-forward).
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      -keyout kubelet-client.key -out kubelet-client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >kubelet-client.ext
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile kubelet-client.ext -out kubelet-client.crt 2>/dev/null
    openssl genrsa -out service-account.key 2048 2>/dev/null
    echo "$(openssl rand -hex 24),admin,admin,system:masters" >tokens.csv
    local index name
    for ((index = 0; index < real_nodes; index++)); do
      name=$(node_name_of "$index")
      echo "$(openssl rand -hex 24),system:node:$name,$name,system:nodes" >>tokens.csv
    done
    chmod 600 ./*.key tokens.csv
  )
  local token
  token=$(awk -F, '$2 == "admin" {print $1}' "$pki/tokens.csv")
  cat >"$state_dir/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
EOF
  chmod 600 "$state_dir/admin.kubeconfig"
}

# kwok simulates nothing without Stages. Its own "fast" set (nodes initialize and renew their
# leases, pods become Ready at once, Job pods complete, deleted pods go away) is read from the
# pinned kwok module in the Go module cache, so it always matches the kwok binary.
write_kwok_config() {
  local module_dir stage
  module_dir=$(cd "$repo_root/tools/kwok" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/kwok) ||
    abort_up "failed to locate the sigs.k8s.io/kwok module (run hack/build-binaries.sh kwok)"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    [ -f "$module_dir/kustomize/stage/$stage.yaml" ] || abort_up "kwok stage $stage.yaml is missing in $module_dir"
    echo "---"
    cat "$module_dir/kustomize/stage/$stage.yaml"
  done >"$state_dir/kwok.yaml"
}

print_env() {
  echo "export KUBECONFIG=$state_dir/admin.kubeconfig"
  echo "export PATH=$KUBERNETES_BIN_DIR/bin:$HELM_BIN_DIR/bin:\$PATH"
}

# Each kwok node takes 4,000 pods, so the three hold the 10,000 of `hack/bench.sh redis 10000`
# with room for the tests' own.
create_nodes() {
  local index zones=(zone-a zone-b zone-c)
  for ((index = 0; index < node_count; index++)); do
    cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$index
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels:
    kubernetes.io/hostname: kwok-node-$index
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    node.kubernetes.io/instance-type: kwok
    topology.kubernetes.io/region: local
    topology.kubernetes.io/zone: ${zones[index % ${#zones[@]}]}
    type: kwok
status:
  allocatable: {cpu: "1000", memory: 4Ti, pods: "4000", ephemeral-storage: 10Ti}
  capacity: {cpu: "1000", memory: 4Ti, pods: "4000", ephemeral-storage: 10Ti}
  nodeInfo: {architecture: amd64, kubeletVersion: v$KUBERNETES_VERSION, operatingSystem: linux}
---
EOF
  done | kubectl apply -f - >/dev/null
}

all_nodes_ready() {
  local ready
  ready=$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)
  [ "$ready" -ge "$node_count" ]
}

https_ok() { curl -fsS --max-time 2 --cacert "$state_dir/pki/ca.crt" "$1"; }
https_ok_insecure() { curl -fsSk --max-time 2 "$1"; }
http_ok() { curl -fsS --max-time 2 "$1"; }

# Health checks per component, shared by `up` and `status`.
check_component() {
  case $1 in
    etcd) http_ok "http://127.0.0.1:$etcd_port/health" ;;
    kube-apiserver) https_ok "https://127.0.0.1:$apiserver_port/readyz" ;;
    # Their serving certificates are self-signed in memory, hence no CA to verify them with.
    kube-controller-manager) https_ok_insecure "https://127.0.0.1:$controller_manager_port/healthz" ;;
    kube-scheduler) https_ok_insecure "https://127.0.0.1:$scheduler_port/healthz" ;;
    kwok) http_ok "http://127.0.0.1:$kwok_port/healthz" ;;
    local-provisioner) [ -f "$state_dir/local-provisioner.ready" ] ;;
    containerd-*) node_check_containerd "${1##*-}" ;;
    kubelet-*) node_check_kubelet "${1##*-}" ;;
    kube-proxy-*) node_check_kube_proxy "${1##*-}" ;;
    coredns) node_check_coredns ;;
    host-proxy) node_check_host_proxy ;;
  esac
}

cluster_healthy() {
  local name
  for name in "${components[@]}"; do
    running_pid "$name" >/dev/null && check_component "$name" >/dev/null 2>&1 || return 1
  done
}

cmd_up() {
  if [ -d "$state_dir" ] && cluster_healthy; then
    if [ "$real_nodes" != "$wanted_real_nodes" ]; then
      log "error: the running cluster has $real_nodes real nodes, not $wanted_real_nodes; stop it (hack/cluster.sh down) first"
      exit 1
    fi
    log "cluster already running"
    print_env
    return 0
  fi
  if [ -d "$state_dir" ]; then
    log "removing the state of a stopped or broken cluster"
    cmd_down
    # Started anew with the count asked for.
    exec "$0" up
  fi
  command -v openssl >/dev/null || { log "error: openssl is missing: run hack/install-deps.sh"; exit 1; }
  command -v curl >/dev/null || { log "error: curl is missing: run hack/install-deps.sh"; exit 1; }
  "$repo_root/hack/build-binaries.sh" kubernetes local_provisioner etcd kwok

  local port name
  for port in $etcd_port $etcd_peer_port $apiserver_port $controller_manager_port $scheduler_port $kwok_port; do
    if port_taken "$port"; then
      log "error: port 127.0.0.1:$port is already taken; the process holding it:"
      (ss -ltnpH "sport = :$port" 2>/dev/null || true) | sed 's/^/    /' >&2
      log "stop it, or choose other ports (ETCD_PORT, APISERVER_PORT, ... see hack/cluster.sh)"
      exit 1
    fi
  done

  local start=$SECONDS
  mkdir -p "$state_dir/logs" "$state_dir/pids" "$state_dir/etcd"
  trap 'abort_up "interrupted"' INT TERM
  generate_credentials
  local pki=$state_dir/pki kubeconfig=$state_dir/admin.kubeconfig

  start_component etcd --name=local --data-dir="$state_dir/etcd" --unsafe-no-fsync \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="local=http://127.0.0.1:$etcd_peer_port" \
    --listen-metrics-urls="http://127.0.0.1:$((etcd_port + 2))" \
    --quota-backend-bytes=4294967296 --log-level=warn
  wait_for etcd "etcd /health" check_component etcd

  start_component kube-apiserver --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$apiserver_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/service-account.key" \
    --service-account-signing-key-file="$pki/service-account.key" \
    --service-cluster-ip-range=10.0.0.0/16 --allow-privileged=true \
    --endpoint-reconciler-type=none --cert-dir="$pki/apiserver-generated" \
    --kubelet-client-certificate="$pki/kubelet-client.crt" --kubelet-client-key="$pki/kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --max-requests-inflight=800 --max-mutating-requests-inflight=400
  wait_for kube-apiserver "kube-apiserver /readyz" check_component kube-apiserver

  start_component kube-controller-manager --kubeconfig="$kubeconfig" \
    --authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$controller_manager_port" --leader-elect=false \
    --cert-dir="$pki/controller-manager-generated" \
    --service-account-private-key-file="$pki/service-account.key" --root-ca-file="$pki/ca.crt" \
    --use-service-account-credentials=true --kube-api-qps=200 --kube-api-burst=400 \
    --concurrent-deployment-syncs=10 --concurrent-replicaset-syncs=10 --concurrent-statefulset-syncs=10 \
    --concurrent-gc-syncs=40 --concurrent-namespace-syncs=10
  start_component kube-scheduler --kubeconfig="$kubeconfig" \
    --authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$scheduler_port" --leader-elect=false \
    --cert-dir="$pki/scheduler-generated"
  wait_for kube-controller-manager "kube-controller-manager /healthz" check_component kube-controller-manager
  wait_for kube-scheduler "kube-scheduler /healthz" check_component kube-scheduler

  write_kwok_config
  start_component kwok --kubeconfig="$kubeconfig" --config="$state_dir/kwok.yaml" \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr=10.244.0.0/16 --node-ip=10.1.0.1 --server-address="127.0.0.1:$kwok_port" \
    --node-lease-duration-seconds=40
  start_component local-provisioner --kubeconfig="$kubeconfig" --ready-file="$state_dir/local-provisioner.ready" \
    --host-root="$state_dir/volumes"
  wait_for kwok "kwok /healthz" check_component kwok
  wait_for local-provisioner "the local provisioner's caches" check_component local-provisioner

  create_nodes || abort_up "failed to create the fake nodes" kube-apiserver
  wait_for kube-controller-manager "the default ServiceAccount" kubectl -n default get serviceaccount default
  wait_for kwok "$node_count nodes Ready" all_nodes_ready
  if [ "$real_nodes" -gt 0 ]; then
    echo "$real_nodes" >"$state_dir/real-nodes"
    node_write_corefile
    node_up "$real_nodes"
  fi
  trap - INT TERM

  print_env >"$state_dir/env"
  local real=
  [ "$real_nodes" -eq 0 ] || real=" and $real_nodes real nodes"
  log "cluster ready in $((SECONDS - start)) s (kubernetes v$KUBERNETES_VERSION, $node_count kwok nodes$real); state in $state_dir"
  print_env
}

# A failed restart names the component and shows its log, and leaves the rest running.
abort_restart() {
  log "error: $1"
  [ -z "${2:-}" ] || show_log_tail "$2"
  exit 1
}

cmd_restart() {
  local name=${1:-} known=false component
  for component in "${components[@]}"; do [ "$component" != "$name" ] || known=true; done
  $known || { log "error: unknown component ${name@Q} (one of: ${components[*]})"; exit 2; }
  running_pid "$name" >/dev/null || { log "error: $name is not running (hack/cluster.sh status)"; exit 1; }
  [ -f "$state_dir/args/$name" ] || { log "error: no recorded arguments for $name; restart the cluster"; exit 1; }
  local args=()
  mapfile -d '' args <"$state_dir/args/$name"
  on_failure=abort_restart
  local start=$SECONDS
  stop_component "$name"
  log "$name stopped; starting it again"
  start_component "$name" "${args[@]}"
  wait_for "$name" "$name to be healthy again" check_component "$name"
  log "$name restarted in $((SECONDS - start)) s"
}

cmd_status() {
  local name pid healthy=0
  if [ ! -d "$state_dir" ]; then
    log "no cluster state in $state_dir (run hack/cluster.sh up)"
    return 1
  fi
  printf '%-26s %-8s %s\n' COMPONENT PID HEALTH
  for name in "${components[@]}"; do
    if pid=$(running_pid "$name"); then
      if check_component "$name" >/dev/null 2>&1; then
        printf '%-26s %-8s %s\n' "$name" "$pid" ok
      else
        printf '%-26s %-8s %s\n' "$name" "$pid" unhealthy; healthy=1
      fi
    else
      printf '%-26s %-8s %s\n' "$name" - "not running"; healthy=1
    fi
  done
  if [ $healthy -eq 0 ]; then
    kubectl get nodes -o wide 2>/dev/null || true
  fi
  return $healthy
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  restart) cmd_restart "${2:-}" ;;
  node-kill | node-boot)
    index=${2:-}
    [[ $index =~ ^[0-9]+$ ]] && [ "$index" -lt "$real_nodes" ] ||
      { log "error: no real node ${index@Q} (this cluster has $real_nodes)"; exit 2; }
    if [ "$1" = node-kill ]; then node_kill "$index"; else node_boot "$index" "${3:-keep}"; fi
    ;;
  env)
    [ -f "$state_dir/admin.kubeconfig" ] || { log "no cluster in $state_dir (run hack/cluster.sh up)"; exit 1; }
    print_env
    ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

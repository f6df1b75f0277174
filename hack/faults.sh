#!/usr/bin/env bash
# Faults on the real nodes of the local cluster (hack/node.sh), for the fault tests and the
# fault benchmark. Every fault is undone by this tool: `heal` undoes all of them.
#
#   hack/faults.sh partition A B [one-way]
#        drop traffic between the nodes of A and those of B (comma-separated node indexes),
#        both ways, or with `one-way` only what A sends to B; nftables rules in A's network
#        namespaces, for the nodes' addresses and their pod networks
#   hack/faults.sh cut-api I
#        node I no longer reaches the API server, nor the API server its kubelet; DNS stays
#   hack/faults.sh cut-pods IPS IPS
#        drop traffic between two sets of pod addresses (comma-separated), on every node
#   hack/faults.sh freeze I | thaw I
#        stop (cgroup v1 freezer) or resume every process of node I: containerd, the kubelet,
#        kube-proxy and every container (a long GC pause or a VM stall)
#   hack/faults.sh kill I
#        power loss: the node's network dark, every process of it killed at once
#   hack/faults.sh boot I [empty]
#        the node starts again after `kill`, with its disk or an empty one
#   hack/faults.sh drain I | uncordon I
#        kubectl drain (evictions honour PodDisruptionBudgets), and back
#   hack/faults.sh heal
#        undo every fault: partitions and cuts removed, nodes thawed, killed nodes booted with
#        their disks, drained nodes uncordoned
#   hack/faults.sh status
#        the faults in place, one per line (nothing when none)
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.sh
source "$repo_root/hack/versions.sh"
state_dir=${OPERATOR_KIT_CLUSTER_DIR:-$repo_root/.cluster}
# shellcheck source=node.sh
source "$repo_root/hack/node.sh"
table=okit_faults
faults_dir=$state_dir/faults

log() { printf '[faults] %s\n' "$*" >&2; }
fail() { log "error: $*"; exit 1; }
kubectl() { "$KUBERNETES_BIN_DIR/bin/kubectl" --kubeconfig "$state_dir/admin.kubeconfig" "$@"; }

count=$(real_node_count)
[ "$count" -gt 0 ] || fail "the cluster has no real nodes (REAL_NODES=3 hack/cluster.sh up)"
mkdir -p "$faults_dir"

# Validates a comma-separated list of node indexes; prints them one per line.
nodes_of() {
  local index
  [ -n "$1" ] || fail "no nodes given"
  for index in ${1//,/ }; do
    [[ $index =~ ^[0-9]+$ ]] && [ "$index" -lt "$count" ] || fail "no real node ${index@Q} (the cluster has $count)"
    echo "$index"
  done
}

# The addresses of nodes (node IPs and pod networks), as an nftables set's elements.
addresses_of() {
  local index elements=()
  for index in $(nodes_of "$1"); do
    elements+=("$(node_ip_of "$index")" "$(node_pod_cidr_of "$index")")
  done
  local IFS=,
  echo "${elements[*]}"
}

# Our table in node I's namespace, with its chains (filter hooks before anything else of the
# node's, so that established connections are cut too); idempotent.
ensure_table() {
  in_node "$1" nft -f - <<NFT
table inet $table {
  chain input { type filter hook input priority -200; policy accept; }
  chain output { type filter hook output priority -200; policy accept; }
  chain forward { type filter hook forward priority -200; policy accept; }
}
NFT
}

add_rules() {
  local index=$1
  shift
  ensure_table "$index"
  local rule
  for rule in "$@"; do
    # shellcheck disable=SC2086 # the rule's words
    in_node "$index" nft add rule inet "$table" $rule
  done
}

cmd_partition() {
  local from=$1 to=$2 mode=${3:-both} index peers
  [ "$mode" = both ] || [ "$mode" = one-way ] || fail "the third argument is 'one-way' or nothing"
  nodes_of "$to" >/dev/null
  peers="{ $(addresses_of "$to") }"
  for index in $(nodes_of "$from"); do
    add_rules "$index" "output ip daddr $peers drop" "forward ip daddr $peers drop"
    if [ "$mode" = both ]; then
      add_rules "$index" "input ip saddr $peers drop" "forward ip saddr $peers drop"
    fi
  done
  if [ "$mode" = both ]; then log "partition: $from <-/-> $to"; else log "partition: $from -/-> $to (one way)"; fi
}

cmd_cut_api() {
  local index
  index=$(nodes_of "$1")
  # The API server (6443, also what the kubernetes Service leads to), and its connections to
  # this kubelet (10250).
  add_rules "$index" \
    "output ip daddr $node_gateway tcp dport $APISERVER_PORT drop" \
    "forward ip daddr $node_gateway tcp dport $APISERVER_PORT drop" \
    "input ip saddr $node_gateway tcp sport $APISERVER_PORT drop" \
    "forward ip saddr $node_gateway tcp sport $APISERVER_PORT drop" \
    "input ip saddr $node_gateway tcp dport 10250 drop" \
    "output ip daddr $node_gateway tcp sport 10250 drop"
  log "cut: $(node_name_of "$index") from the API server"
}

cmd_cut_pods() {
  local left=$1 right=$2 index
  [[ $left =~ ^[0-9.,]+$ && $right =~ ^[0-9.,]+$ ]] || fail "pod addresses are comma-separated IPv4 addresses"
  for ((index = 0; index < count; index++)); do
    [ ! -f "$(node_dir_of "$index")/down" ] || continue
    add_rules "$index" \
      "forward ip saddr { $left } ip daddr { $right } drop" \
      "forward ip saddr { $right } ip daddr { $left } drop"
  done
  log "cut: pods $left from pods $right"
}

freezer_state() { echo "/sys/fs/cgroup/freezer/$node_cgroup_root/node-$1/freezer.state"; }

cmd_freeze() {
  local index state
  index=$(nodes_of "$1")
  state=$(freezer_state "$index")
  [ -f "$state" ] || fail "node $index has no freezer cgroup"
  echo FROZEN >"$state"
  # The kernel freezes every task of the cgroup and its children; FREEZING until all are.
  until [ "$(cat "$state")" = FROZEN ]; do sleep 0.05; done
  log "froze $(node_name_of "$index")"
}

cmd_thaw() {
  local index
  index=$(nodes_of "$1")
  node_thaw "$index"
  log "thawed $(node_name_of "$index")"
}

cmd_kill() {
  local index
  index=$(nodes_of "$1")
  "$repo_root/hack/cluster.sh" node-kill "$index"
  log "killed $(node_name_of "$index")"
}

cmd_boot() {
  local index
  index=$(nodes_of "$1")
  "$repo_root/hack/cluster.sh" node-boot "$index" "${2:-keep}"
  log "booted $(node_name_of "$index") (disk: ${2:-keep})"
}

cmd_drain() {
  local index name
  index=$(nodes_of "$1")
  name=$(node_name_of "$index")
  touch "$faults_dir/drained-$index"
  kubectl drain "$name" --ignore-daemonsets --delete-emptydir-data --timeout="${DRAIN_TIMEOUT:-180s}" >&2
  log "drained $name"
}

cmd_uncordon() {
  local index
  index=$(nodes_of "$1")
  kubectl uncordon "$(node_name_of "$index")" >/dev/null
  rm -f "$faults_dir/drained-$index"
  log "uncordoned $(node_name_of "$index")"
}

cmd_status() {
  local index
  for ((index = 0; index < count; index++)); do
    [ ! -f "$(node_dir_of "$index")/down" ] || echo "node $index: down"
    [ "$(cat "$(freezer_state "$index")" 2>/dev/null)" != FROZEN ] || echo "node $index: frozen"
    [ ! -f "$faults_dir/drained-$index" ] || echo "node $index: drained"
    if [ ! -f "$(node_dir_of "$index")/down" ] && in_node "$index" nft list table inet "$table" >/dev/null 2>&1; then
      in_node "$index" nft list table inet "$table" | awk -v node="$index" '/ drop/ {sub(/^[ \t]+/, ""); print "node " node ": " $0}'
    fi
  done
}

# Undoes everything; each step is tried on every node, and a step that fails is reported and
# makes `heal` fail, after the others were tried.
cmd_heal() {
  local index failed=0
  for ((index = 0; index < count; index++)); do
    node_thaw "$index" || { log "failed to thaw node $index"; failed=1; }
  done
  for ((index = 0; index < count; index++)); do
    if [ -f "$(node_dir_of "$index")/down" ]; then
      "$repo_root/hack/cluster.sh" node-boot "$index" keep || { log "failed to boot node $index"; failed=1; }
    fi
  done
  for ((index = 0; index < count; index++)); do
    if in_node "$index" nft list table inet "$table" >/dev/null 2>&1; then
      in_node "$index" nft delete table inet "$table" || { log "failed to remove the rules of node $index"; failed=1; }
    fi
  done
  for ((index = 0; index < count; index++)); do
    if [ -f "$faults_dir/drained-$index" ]; then
      cmd_uncordon "$index" || { log "failed to uncordon node $index"; failed=1; }
    fi
  done
  [ "$failed" -eq 0 ] || fail "some faults could not be undone (see above)"
  log "healed"
}

APISERVER_PORT=${APISERVER_PORT:-6443}
case ${1:-} in
  partition) cmd_partition "${2:?partition A B [one-way]}" "${3:?partition A B [one-way]}" "${4:-both}" ;;
  cut-api) cmd_cut_api "${2:?cut-api I}" ;;
  cut-pods) cmd_cut_pods "${2:?cut-pods IPS IPS}" "${3:?cut-pods IPS IPS}" ;;
  freeze) cmd_freeze "${2:?freeze I}" ;;
  thaw) cmd_thaw "${2:?thaw I}" ;;
  kill) cmd_kill "${2:?kill I}" ;;
  boot) cmd_boot "${2:?boot I [empty]}" "${3:-keep}" ;;
  drain) cmd_drain "${2:?drain I}" ;;
  uncordon) cmd_uncordon "${2:?uncordon I}" ;;
  heal) cmd_heal ;;
  status) cmd_status ;;
  *)
    sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

# The real node of the local cluster, sourced by hack/cluster.sh when REAL_NODE=1: containerd
# (Debian's, with runc) and a kubelet built from k8s.io/kubernetes, on a pod network of our own;
# kube-proxy (nftables mode) for Services, and CoreDNS for cluster DNS on the bridge address.
# Everything it creates is inside this machine and removed by `node_teardown`:
#   - the bridge $node_bridge (10.88.0.1/24), pods' veths and network namespaces (CNI bridge and
#     host-local plugins, under the state directory);
#   - the nftables table inet $node_nft_table, which lets pods reach the API server at
#     10.88.0.1:6443 and at the `kubernetes` Service (10.0.0.1:443): DNAT to 127.0.0.1, with
#     route_localnet on the bridge only; kube-proxy's own tables (ip/ip6 kube-proxy);
#   - the cgroup /$node_cgroup_root in each cgroup v1 hierarchy (the kubelet's cgroupRoot: the
#     machine's own layout is left as it is);
#   - mounts under the state directory (containerd's snapshots, the kubelet's volumes).
# The node is tainted (operator-kit.io/real-node:NoSchedule) so that only pods that ask for it
# run there; kwok keeps its fake nodes for the scale tests.

node_name=real-node
node_bridge=okit0
node_address=10.88.0.1
node_pod_cidr=10.88.0.0/24
node_nft_table=operator_kit
node_cgroup_root=operator-kit
node_dir=$state_dir/node
node_socket=$node_dir/containerd.sock
kubelet_healthz_port=${KUBELET_HEALTHZ_PORT:-10248}
kube_proxy_healthz_port=${KUBE_PROXY_HEALTHZ_PORT:-10256}
kube_proxy_metrics_port=${KUBE_PROXY_METRICS_PORT:-10249}
coredns_health_port=${COREDNS_HEALTH_PORT:-10255}
coredns_ready_port=${COREDNS_READY_PORT:-10254}
kubernetes_service_ip=10.0.0.1

node_check_containerd() { ctr --address "$node_socket" version; }
node_check_kubelet() { curl -fsS --max-time 2 "http://127.0.0.1:$kubelet_healthz_port/healthz"; }
node_check_kube_proxy() { curl -fsS --max-time 2 "http://127.0.0.1:$kube_proxy_healthz_port/healthz"; }
node_check_coredns() { curl -fsS --max-time 2 "http://127.0.0.1:$coredns_ready_port/ready"; }

node_ready() {
  [ "$(kubectl get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# The bridge, its address, and the one DNAT rule that brings pods to the API server.
node_network_up() {
  ip link add "$node_bridge" type bridge
  ip addr add "$node_address/24" dev "$node_bridge"
  ip link set "$node_bridge" up
  sysctl -qw "net.ipv4.conf.$node_bridge.route_localnet=1"
  sysctl -qw net.ipv4.ip_forward=1
  nft -f - <<NFT
table inet $node_nft_table {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "$node_bridge" ip daddr $node_address tcp dport $apiserver_port dnat ip to 127.0.0.1:$apiserver_port
  }
  # Before kube-proxy's chain (dstnat): the kubernetes Service's endpoint is the API server on
  # 127.0.0.1, which an EndpointSlice cannot name. A connection is translated once, so
  # kube-proxy's rules never see these.
  chain kubernetes-service {
    type nat hook prerouting priority dstnat - 10; policy accept;
    iifname "$node_bridge" ip daddr $kubernetes_service_ip tcp dport 443 dnat ip to 127.0.0.1:$apiserver_port
  }
}
NFT
}

# cgroup v1: one cgroup of ours per hierarchy, the kubelet's cgroupRoot. cpuset needs its CPUs
# and memory nodes before any task can join.
node_cgroups_up() {
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [ "$(stat -f -c %T "$hierarchy")" = cgroupfs ] || continue
    [ "$hierarchy" != /sys/fs/cgroup/unified/ ] || continue
    mkdir -p "$hierarchy$node_cgroup_root"
  done
  if [ -d /sys/fs/cgroup/cpuset/$node_cgroup_root ]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >/sys/fs/cgroup/cpuset/$node_cgroup_root/cpuset.cpus
    cat /sys/fs/cgroup/cpuset/cpuset.mems >/sys/fs/cgroup/cpuset/$node_cgroup_root/cpuset.mems
  fi
}

node_write_config() {
  local pki=$state_dir/pki
  mkdir -p "$node_dir/cni" "$node_dir/containerd" "$node_dir/kubelet"
  cat >"$node_dir/cni/10-operator-kit.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "operator-kit",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$node_bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$node_dir/cni-ipam",
        "ranges": [[{"subnet": "$node_pod_cidr", "gateway": "$node_address"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON
  cat >"$node_dir/containerd.toml" <<TOML
version = 2
root = "$node_dir/containerd/root"
state = "$node_dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$node_socket"
[ttrpc]
  address = "$node_socket.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node_dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  # This machine does not let a process lower its OOM score (no CAP_SYS_RESOURCE): the
  # sandbox's -998 and Guaranteed pods' -997 are raised to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni"
TOML
  # The node's identity: a token of system:node:$node_name (the Node authorizer's user).
  local token
  token=$(awk -F, -v user="system:node:$node_name" '$2 == user {print $1}' "$pki/tokens.csv")
  cat >"$node_dir/kubelet.kubeconfig" <<EOF_KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$apiserver_port", certificate-authority: "$pki/ca.crt"}
users:
- name: $node_name
  user: {token: "$token"}
contexts:
- name: local
  context: {cluster: local, user: $node_name}
current-context: local
EOF_KUBECONFIG
  chmod 600 "$node_dir/kubelet.kubeconfig"
  : >"$node_dir/resolv.conf"
  cat >"$node_dir/Corefile" <<COREFILE
.:53 {
    bind $node_address
    errors
    health 127.0.0.1:$coredns_health_port
    ready 127.0.0.1:$coredns_ready_port
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $state_dir/admin.kubeconfig local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
    loadbalance
}
COREFILE
  cat >"$node_dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_address
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: "unix://$node_socket"
cgroupDriver: cgroupfs
cgroupRoot: /$node_cgroup_root
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failCgroupV1: false
failSwapOn: false
podCIDR: $node_pod_cidr
clusterDomain: cluster.local
clusterDNS: [$node_address]
resolvConf: "$node_dir/resolv.conf"
registerWithTaints:
- {key: operator-kit.io/real-node, effect: NoSchedule}
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
YAML
}

# The kubelet adds iptables chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) through
# iptables-nft. Teardown removes them, and the tables they created when the machine had none.
node_record_tables() { nft list tables >"$node_dir/nft-tables-before" 2>/dev/null || true; }

node_remove_kubelet_chains() {
  local command table rule chain family
  for command in iptables ip6tables; do
    command -v "$command" >/dev/null || continue
    family=ip; [ "$command" = iptables ] || family=ip6
    for table in filter nat mangle; do
      nft list table "$family" "$table" >/dev/null 2>&1 || continue
      # `|| true`: with pipefail, a table without jumps would end the teardown at grep.
      { "$command" -t "$table" -S 2>/dev/null | grep -- ' -j KUBE-' || true; } | sed 's/^-A /-D /' |
        while read -r rule; do
          # shellcheck disable=SC2086 # the rule's words are its arguments
          "$command" -t "$table" $rule 2>/dev/null || true
        done
      for chain in $("$command" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
        "$command" -t "$table" -F "$chain" 2>/dev/null || true
        "$command" -t "$table" -X "$chain" 2>/dev/null || true
      done
      if [ -f "$node_dir/nft-tables-before" ] && ! grep -qx "table $family $table" "$node_dir/nft-tables-before"; then
        nft delete table "$family" "$table" 2>/dev/null || true
      fi
    done
  done
}

node_up() {
  command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] ||
    abort_up "the real node needs containerd, runc and the CNI plugins: run REAL_NODE=1 hack/install-deps.sh"
  "$repo_root/hack/build-binaries.sh" node
  node_network_up || abort_up "failed to set up the bridge $node_bridge"
  node_cgroups_up || abort_up "failed to create the cgroup /$node_cgroup_root"
  node_write_config
  node_record_tables
  start_component containerd --config "$node_dir/containerd.toml"
  wait_for containerd "containerd's socket" node_check_containerd
  "$repo_root/hack/images.sh" import "$node_socket" || abort_up "failed to import the local images" containerd
  start_component kubelet --config="$node_dir/kubelet.yaml" --kubeconfig="$node_dir/kubelet.kubeconfig" \
    --hostname-override="$node_name" --node-ip="$node_address" --root-dir="$node_dir/kubelet" \
    --cert-dir="$node_dir/kubelet/pki" --node-labels=operator-kit.io/real-node=true
  wait_for kubelet "the kubelet's /healthz" node_check_kubelet
  start_component kube-proxy --kubeconfig="$state_dir/admin.kubeconfig" --proxy-mode=nftables \
    --hostname-override="$node_name" --cluster-cidr="$node_pod_cidr" \
    --bind-address=127.0.0.1 --healthz-bind-address="127.0.0.1:$kube_proxy_healthz_port" \
    --metrics-bind-address="127.0.0.1:$kube_proxy_metrics_port" \
    --nodeport-addresses="$node_address/32" --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
  start_component coredns -conf "$node_dir/Corefile"
  wait_for kubelet "node $node_name Ready" node_ready
  wait_for kube-proxy "kube-proxy's /healthz" node_check_kube_proxy
  wait_for coredns "CoreDNS's /ready" node_check_coredns
}

# Stops every container (their processes live in our cgroups, children of containerd's shims,
# which outlive containerd), then removes the mounts, cgroups, network namespaces, bridge and
# nftables table. Safe to run when nothing of it exists.
node_teardown() {
  local hierarchy pid mount_point veth
  for pid in $(cat /sys/fs/cgroup/pids/$node_cgroup_root/cgroup.procs \
    $(find /sys/fs/cgroup/pids/$node_cgroup_root -mindepth 1 -name cgroup.procs 2>/dev/null) 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # containerd's shims for this node (they serve its socket).
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $node_socket" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -d "$node_dir" ]; then
    # Deepest first, so that nested mounts come off before their parents.
    for mount_point in $(awk -v dir="$node_dir" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r); do
      umount -l "$mount_point" 2>/dev/null || true
    done
  fi
  for hierarchy in /sys/fs/cgroup/*/; do
    [ -d "$hierarchy$node_cgroup_root" ] || continue
    find "$hierarchy$node_cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  for veth in $(ip -o link show master "$node_bridge" 2>/dev/null | awk -F'[ :@]+' '{print $2}'); do
    ip link delete "$veth" 2>/dev/null || true
  done
  ip link delete "$node_bridge" 2>/dev/null || true
  nft delete table inet "$node_nft_table" 2>/dev/null || true
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  node_remove_kubelet_chains
}

# The real nodes of the local cluster, sourced by hack/cluster.sh when REAL_NODES is 1 or more
# (REAL_NODE=1 means one). Each node is a machine of its own as far as the network and its
# processes go: a network namespace with its own address, its own containerd (Debian's, with
# runc), kubelet and kube-proxy (nftables mode), a pod network of its own routed to the
# others', and cgroups of its own (what `hack/faults.sh freeze` stops and `kill` kills). They
# share this machine's file systems, so node-local volumes live in a folder per node.
#
# Everything it creates is inside this machine and removed by `node_teardown`:
#   - the bridge $node_bridge ($node_gateway/24): the nodes' network, the host's address on it
#     (the API server and CoreDNS as the nodes see them; an nftables table inet
#     $node_nft_table DNATs $node_gateway:6443 to 127.0.0.1, with route_localnet on the bridge
#     only);
#   - per node: the network namespace okit-node-<i> with its veth (eth0, 10.88.0.1<i>), the pod
#     bridge and pods' veths inside it (CNI bridge and host-local plugins), its own nftables
#     tables (ours: the kubernetes Service to the API server; kube-proxy's; the faults'), and a
#     route on the host to its pod network 10.89.<i>.0/24;
#   - the cgroup /$node_cgroup_root/node-<i> in each cgroup v1 hierarchy (the kubelet's
#     cgroupRoot, and `daemons` for containerd, the kubelet and kube-proxy: the machine's own
#     layout is left as it is);
#   - mounts under the state directory (containerd's snapshots, the kubelet's volumes).
# The nodes are tainted (operator-kit.io/real-node:NoSchedule) so that only pods that ask for it
# run there; kwok keeps its fake nodes for the scale tests. Node i is called real-node-<i>, in
# zone a, b, c, ... (topology.kubernetes.io/zone).

node_bridge=okit0
node_gateway=10.88.0.1
# Kept for the API server's certificate: the address pods and nodes reach it at.
node_address=$node_gateway
node_cluster_cidr=10.89.0.0/16
node_nft_table=operator_kit
node_cgroup_root=operator-kit
nodes_dir=$state_dir/nodes
node_zones=(a b c d e f g h i)
kubernetes_service_ip=10.0.0.1
coredns_health_port=${COREDNS_HEALTH_PORT:-10255}
coredns_ready_port=${COREDNS_READY_PORT:-10254}
# kube-proxy on the host too, so that the host reaches Services by cluster IP as a machine of
# the cluster would (the tests' clients on the host do).
host_proxy_healthz_port=${HOST_PROXY_HEALTHZ_PORT:-10266}
host_proxy_metrics_port=${HOST_PROXY_METRICS_PORT:-10269}
# Ports inside each node's network namespace, which has a loopback of its own.
kubelet_healthz_port=10248
kube_proxy_healthz_port=10256
kube_proxy_metrics_port=10249

# How many real nodes this cluster has: recorded at `up`, else asked for by the environment.
real_node_count() {
  if [ -f "$state_dir/real-nodes" ]; then
    cat "$state_dir/real-nodes"
  elif [ -n "${REAL_NODES:-}" ]; then
    echo "$REAL_NODES"
  elif [ "${REAL_NODE:-0}" = 1 ]; then
    echo 1
  else
    echo 0
  fi
}

node_name_of() { echo "real-node-$1"; }
node_ip_of() { echo "10.88.0.$((10 + $1))"; }
node_pod_cidr_of() { echo "10.89.$1.0/24"; }
node_pod_gateway_of() { echo "10.89.$1.1"; }
node_netns_of() { echo "okit-node-$1"; }
node_dir_of() { echo "$nodes_dir/$1"; }
node_socket_of() { echo "$nodes_dir/$1/containerd.sock"; }
# Where node i's volumes live (its "disk"; the local provisioner makes them).
node_volumes_of() { echo "$state_dir/volumes/$(node_name_of "$1")"; }
# Runs a command in node i's network namespace (only that: same mounts and processes).
in_node() {
  local index=$1
  shift
  nsenter --net="/run/netns/$(node_netns_of "$index")" -- "$@"
}

node_check_containerd() { ctr --address "$(node_socket_of "$1")" version; }
node_check_kubelet() { in_node "$1" curl -fsS --max-time 2 "http://127.0.0.1:$kubelet_healthz_port/healthz"; }
node_check_kube_proxy() { in_node "$1" curl -fsS --max-time 2 "http://127.0.0.1:$kube_proxy_healthz_port/healthz"; }
node_check_host_proxy() { curl -fsS --max-time 2 "http://127.0.0.1:$host_proxy_healthz_port/healthz"; }
node_check_coredns() { curl -fsS --max-time 2 "http://127.0.0.1:$coredns_ready_port/ready"; }

node_ready() {
  [ "$(kubectl get node "$(node_name_of "$1")" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# The components of node i, in start order.
node_components_of() { echo "containerd-$1 kubelet-$1 kube-proxy-$1"; }

# The host's side: the nodes' bridge, its address, the DNAT that brings nodes and pods to the
# API server, and forwarding.
node_network_up() {
  ip link add "$node_bridge" type bridge
  ip addr add "$node_gateway/24" dev "$node_bridge"
  ip link set "$node_bridge" up
  sysctl -qw "net.ipv4.conf.$node_bridge.route_localnet=1"
  sysctl -qw net.ipv4.ip_forward=1
  nft -f - <<NFT
table inet $node_nft_table {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "$node_bridge" ip daddr $node_gateway tcp dport $apiserver_port dnat ip to 127.0.0.1:$apiserver_port
  }
}
NFT
}

# Node i's link up, and its routes through it (the kernel drops them when the link goes
# down): the default through the host, every other node's pod network directly.
node_link_up() {
  local index=$1 count=$2 other
  in_node "$index" ip link set eth0 up
  in_node "$index" ip route replace default via "$node_gateway"
  for ((other = 0; other < count; other++)); do
    [ "$other" != "$index" ] || continue
    in_node "$index" ip route replace "$(node_pod_cidr_of "$other")" via "$(node_ip_of "$other")"
  done
}

# One node's network namespace: its address on the bridge, routes to every other node's pod
# network (directly, over the bridge, as between machines on one switch), the host's route
# to its pods, and the kubernetes Service's address translation.
node_namespace_up() {
  local index=$1 count=$2 netns address
  netns=$(node_netns_of "$index")
  address=$(node_ip_of "$index")
  ip netns add "$netns"
  ip link add "okit-n$index" type veth peer name eth0 netns "$netns"
  ip link set "okit-n$index" master "$node_bridge" up
  in_node "$index" ip link set lo up
  in_node "$index" ip addr add "$address/24" dev eth0
  in_node "$index" sysctl -qw net.ipv4.ip_forward=1
  node_link_up "$index" "$count"
  ip route add "$(node_pod_cidr_of "$index")" via "$address"
  # The kubernetes Service's endpoint is the API server on the host's 127.0.0.1, which an
  # EndpointSlice cannot name: translated to the host's address here, before kube-proxy's
  # chains (dstnat - 10) could reject it as a Service without endpoints; the host translates
  # that to 127.0.0.1.
  in_node "$index" nft -f - <<NFT
table inet $node_nft_table {
  chain kubernetes-service {
    type nat hook prerouting priority dstnat - 20; policy accept;
    ip daddr $kubernetes_service_ip tcp dport 443 dnat ip to $node_gateway:$apiserver_port
  }
}
NFT
}

# cgroup v1: /$node_cgroup_root/node-<i> in every hierarchy (the kubelet's cgroupRoot), and
# its `daemons` child in the hierarchies node processes join (hack/in-node.sh). cpuset needs
# its CPUs and memory nodes before any task can join.
node_cgroups_up() {
  local index=$1 hierarchy path
  for hierarchy in /sys/fs/cgroup/*/; do
    [ "$(stat -f -c %T "$hierarchy")" = cgroupfs ] || continue
    [ "$hierarchy" != /sys/fs/cgroup/unified/ ] || continue
    mkdir -p "$hierarchy$node_cgroup_root/node-$index/daemons"
  done
  if [ -d /sys/fs/cgroup/cpuset/$node_cgroup_root ]; then
    for path in "$node_cgroup_root" "$node_cgroup_root/node-$index" "$node_cgroup_root/node-$index/daemons"; do
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$path/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$path/cpuset.mems"
    done
  fi
}

# A kubeconfig for processes in the nodes' namespaces: the API server at the host's address.
node_kubeconfig() {
  local user=$1 token=$2
  cat <<EOF_KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://$node_gateway:$apiserver_port", certificate-authority: "$state_dir/pki/ca.crt"}
users:
- name: $user
  user: {token: "$token"}
contexts:
- name: local
  context: {cluster: local, user: $user}
current-context: local
EOF_KUBECONFIG
}

node_write_config() {
  local index=$1 pki=$state_dir/pki dir name address token
  dir=$(node_dir_of "$index")
  name=$(node_name_of "$index")
  address=$(node_ip_of "$index")
  mkdir -p "$dir/cni" "$dir/containerd" "$dir/kubelet" "$dir/pod-logs"
  cat >"$dir/cni/10-operator-kit.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "operator-kit",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "okit-pods",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/containerd/state/cni-ipam",
        "ranges": [[{"subnet": "$(node_pod_cidr_of "$index")", "gateway": "$(node_pod_gateway_of "$index")"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON
  cat >"$dir/containerd.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
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
        # runc's state of this node's containers only (its default is shared by every
        # containerd on the machine); runtime state, gone when the node "loses power".
        Root = "$dir/containerd/state/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
TOML
  # The node's identity: a token of system:node:<name> (the Node authorizer's user).
  token=$(awk -F, -v user="system:node:$name" '$2 == user {print $1}' "$pki/tokens.csv")
  node_kubeconfig "$name" "$token" >"$dir/kubelet.kubeconfig"
  # kube-proxy reads Services and EndpointSlices cluster-wide, as the admin here.
  token=$(awk -F, '$2 == "admin" {print $1}' "$pki/tokens.csv")
  node_kubeconfig admin "$token" >"$dir/kube-proxy.kubeconfig"
  chmod 600 "$dir/kubelet.kubeconfig" "$dir/kube-proxy.kubeconfig"
  : >"$dir/resolv.conf"
  cat >"$dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $address
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: "unix://$dir/containerd.sock"
cgroupDriver: cgroupfs
cgroupRoot: /$node_cgroup_root/node-$index
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failCgroupV1: false
failSwapOn: false
podCIDR: $(node_pod_cidr_of "$index")
# Every kubelet of this machine would otherwise write to /var/log/pods and remove the
# others' logs there as those of pods it does not know.
podLogsDir: "$dir/pod-logs"
clusterDomain: cluster.local
clusterDNS: [$node_gateway]
resolvConf: "$dir/resolv.conf"
registerWithTaints:
- {key: operator-kit.io/real-node, effect: NoSchedule}
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
YAML
}

# The arguments of one node component.
node_component_args() {
  local component=$1 index=${1##*-} dir name
  dir=$(node_dir_of "$index")
  name=$(node_name_of "$index")
  case ${component%-*} in
    containerd) printf '%s\0' --config "$dir/containerd.toml" ;;
    kubelet)
      printf '%s\0' --config="$dir/kubelet.yaml" --kubeconfig="$dir/kubelet.kubeconfig" \
        --hostname-override="$name" --node-ip="$(node_ip_of "$index")" --root-dir="$dir/kubelet" \
        --cert-dir="$dir/kubelet/pki" \
        --node-labels="operator-kit.io/real-node=true,topology.kubernetes.io/zone=${node_zones[index]},topology.kubernetes.io/region=local"
      ;;
    kube-proxy)
      printf '%s\0' --kubeconfig="$dir/kube-proxy.kubeconfig" --proxy-mode=nftables \
        --hostname-override="$name" --cluster-cidr="$node_cluster_cidr" \
        --healthz-bind-address="127.0.0.1:$kube_proxy_healthz_port" \
        --metrics-bind-address="127.0.0.1:$kube_proxy_metrics_port" \
        --nodeport-addresses="$(node_ip_of "$index")/32" --conntrack-max-per-core=0 \
        --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
      ;;
  esac
}

node_start_component() {
  local args=()
  mapfile -d '' args < <(node_component_args "$1")
  start_component "$1" "${args[@]}"
}

# Starts node i's processes (its network and cgroups exist); `import` imports the images
# first (a node whose disk is new).
node_start() {
  local index=$1 import=${2:-import} name
  name=$(node_name_of "$index")
  mkdir -p "$(node_volumes_of "$index")"
  node_start_component "containerd-$index"
  wait_for "containerd-$index" "containerd's socket on $name" node_check_containerd "$index"
  if [ "$import" = import ]; then
    "$repo_root/hack/images.sh" import "$(node_socket_of "$index")" ||
      $on_failure "failed to import the local images into $name" "containerd-$index"
  fi
  node_start_component "kubelet-$index"
  node_start_component "kube-proxy-$index"
}

node_wait() {
  local index=$1 name
  name=$(node_name_of "$index")
  wait_for "kubelet-$index" "the kubelet's /healthz on $name" node_check_kubelet "$index"
  wait_for "kubelet-$index" "node $name Ready" node_ready "$index"
  wait_for "kube-proxy-$index" "kube-proxy's /healthz on $name" node_check_kube_proxy "$index"
}

node_up() {
  local count=$1 index
  command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] ||
    abort_up "the real nodes need containerd, runc and the CNI plugins: run REAL_NODES=$count hack/install-deps.sh"
  "$repo_root/hack/build-binaries.sh" node
  node_network_up || abort_up "failed to set up the bridge $node_bridge"
  for ((index = 0; index < count; index++)); do
    node_namespace_up "$index" "$count" || abort_up "failed to set up the network of $(node_name_of "$index")"
    node_cgroups_up "$index" || abort_up "failed to create the cgroups of $(node_name_of "$index")"
    node_write_config "$index"
  done
  # The images are built once (the first import builds what is missing) and imported into
  # every node's containerd.
  "$repo_root/hack/images.sh" build >/dev/null || abort_up "failed to build the local images"
  for ((index = 0; index < count; index++)); do node_start "$index"; done
  start_component coredns -conf "$nodes_dir/Corefile"
  for ((index = 0; index < count; index++)); do node_wait "$index"; done
  # As a machine next to the first node (kube-proxy waits for its Node object to exist).
  start_component host-proxy --kubeconfig="$state_dir/admin.kubeconfig" --proxy-mode=nftables \
    --hostname-override="$(node_name_of 0)" --cluster-cidr="$node_cluster_cidr" \
    --healthz-bind-address="127.0.0.1:$host_proxy_healthz_port" \
    --metrics-bind-address="127.0.0.1:$host_proxy_metrics_port" \
    --nodeport-addresses="$node_gateway/32" --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
  wait_for coredns "CoreDNS's /ready" node_check_coredns
  wait_for host-proxy "the host's kube-proxy /healthz" node_check_host_proxy
}

node_write_corefile() {
  mkdir -p "$nodes_dir"
  cat >"$nodes_dir/Corefile" <<COREFILE
.:53 {
    bind $node_gateway
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
}

# Every process of node i: its daemons and its containers (their shims are containerd's
# children, in its cgroup). A frozen process only dies once thawed.
node_pids() {
  local index=$1
  cat $(find "/sys/fs/cgroup/pids/$node_cgroup_root/node-$index" -name cgroup.procs 2>/dev/null) 2>/dev/null || true
}

node_thaw() {
  local state=/sys/fs/cgroup/freezer/$node_cgroup_root/node-$1/freezer.state
  [ ! -f "$state" ] || echo THAWED >"$state"
}

# Unmounts what node i's containerd and kubelet mounted (deepest first).
node_unmount() {
  local dir mount_point
  dir=$(node_dir_of "$1")
  for mount_point in $(awk -v dir="$dir/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$mount_point" 2>/dev/null || true
  done
}

# Power loss of node i: its network goes dark first (its peers see silence, not refused
# connections), then its supervisors and every process of it are killed at once. Its disk
# stays as it was.
node_kill() {
  local index=$1 component pid
  in_node "$index" ip link set eth0 down 2>/dev/null || true
  for component in $(node_components_of "$index"); do
    if pid=$(supervisor_pid "$component"); then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  node_thaw "$index"
  for pid in $(node_pids "$index"); do kill -KILL "$pid" 2>/dev/null || true; done
  for component in $(node_components_of "$index"); do
    rm -f "$state_dir/pids/$component.pid" "$state_dir/pids/$component.supervisor.pid"
  done
  touch "$(node_dir_of "$index")/down"
}

# Boots node i after a power loss: what lived in memory is gone (containerd's runtime state,
# the pods' network namespaces, the kubelet's memory-backed volumes), its disk is kept, or,
# with `empty`, replaced by a new one (images, the kubelet's pods, the node's volumes).
node_boot() {
  local index=$1 disk=${2:-keep} dir pid
  dir=$(node_dir_of "$index")
  for pid in $(node_pids "$index"); do kill -KILL "$pid" 2>/dev/null || true; done
  node_unmount "$index"
  rm -rf "$dir/containerd/state"
  if [ "$disk" = empty ]; then
    rm -rf "$dir/containerd/root" "$dir/kubelet" "$dir/pod-logs"
    # Its volumes come back empty, each as the local provisioner made it (0777): a kubelet
    # recreating a missing hostPath makes it root's, 0755, which the pods' user cannot write.
    find "$(node_volumes_of "$index")" -mindepth 2 -maxdepth 2 -exec rm -rf {} +
    mkdir -p "$dir/kubelet" "$dir/pod-logs"
  fi
  node_link_up "$index" "$(real_node_count)"
  on_failure=abort_restart
  if [ "$disk" = empty ]; then
    node_start "$index" import
    # A new disk pulls its images again, the operators' too where this machine built them
    # (hack/test.sh imports them into every node; there is no registry to pull from).
    local release=${CARGO_TARGET_DIR:-$OPERATOR_KIT_CACHE/cargo-target}/release
    if [ -x "$release/redis-operator" ] && [ -x "$release/app-operator" ]; then
      "$repo_root/hack/images.sh" import-operators "$(node_socket_of "$index")" ||
        $on_failure "failed to import the operators' images into node $index" "containerd-$index"
    fi
  else
    node_start "$index" keep
  fi
  node_wait "$index"
  rm -f "$dir/down"
}

# Stops every container of every node (their processes live in our cgroups, children of
# containerd's shims, which outlive containerd), then removes the mounts, cgroups, network
# namespaces, bridge and nftables table. Safe to run when nothing of it exists.
node_teardown() {
  local hierarchy pid netns index
  for state in /sys/fs/cgroup/freezer/$node_cgroup_root/node-*/freezer.state; do
    [ ! -f "$state" ] || echo THAWED >"$state"
  done
  for pid in $(cat $(find /sys/fs/cgroup/pids/$node_cgroup_root -name cgroup.procs 2>/dev/null) 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $nodes_dir/" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -d "$nodes_dir" ]; then
    for index in $(ls "$nodes_dir" 2>/dev/null | grep -E '^[0-9]+$'); do node_unmount "$index"; done
  fi
  for hierarchy in /sys/fs/cgroup/*/; do
    [ -d "$hierarchy$node_cgroup_root" ] || continue
    find "$hierarchy$node_cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  for netns in $(ip netns list 2>/dev/null | awk '$1 ~ /^okit-node-/ {print $1}'); do
    ip netns delete "$netns" 2>/dev/null || true
  done
  ip link delete "$node_bridge" 2>/dev/null || true
  nft delete table inet "$node_nft_table" 2>/dev/null || true
  # The host's kube-proxy's tables.
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
}

#!/usr/bin/env bash
# Benchmark (not a test): N objects of an operator created at once on the local cluster, until
# all are Ready. Reports the time, the operator's peak RSS, the requests it made, and the
# mutating requests it made while idle afterwards.
#   hack/bench.sh website|redis|app [count] [idle-seconds]     (defaults: 1000 and 120)
# `redis-sentinel` creates RedisSentinels of 3 replicas instead. Their kwok pods run no Redis,
# so no set ever becomes Ready: it waits until every StatefulSet's pods are ready, then
# measures the operator at rest over the idle period (requests/s, port-forwards/s — each one
# connection attempt to a Redis or Sentinel —, CPU seconds and RSS):
#   hack/bench.sh redis-sentinel 1000 120
# With `floor` as a fourth argument (redis only), the same children the operator makes for
# one Redis (ConfigMap, StatefulSet with its claim template, two Services) are first created
# for `count` names directly with kubectl, with no operator, and timed until every StatefulSet
# is ready: the floor the control plane sets on this machine, reported next to the operator's
# time (measured after it, on the cluster emptied again):
#   hack/bench.sh redis 1000 120 floor
# With `chaos` as a fourth argument the operator is killed with SIGKILL once a quarter of the
# objects are Ready and started again, and the API server is restarted once half are; the run
# then checks every object Ready, one more object created afterwards Ready (the watches came
# back without restarting the operator), no orphaned and no duplicate children:
#   hack/bench.sh redis 1000 120 chaos
# BENCH_KEEP=1 leaves the objects in place at the end; `restarts` then starts the operator on
# them 3 times (time to /readyz and to a first reconcile of each, peak RSS; medians):
#   BENCH_KEEP=1 hack/bench.sh redis 10000 60 && hack/bench.sh redis 10000 0 restarts
# And the failover benchmark of Redis with Sentinel (real redis-server/redis-sentinel processes
# behind the pods; see tests/benches/failover.rs):
#   hack/bench.sh failover [runs] [down-after-milliseconds]    (defaults: 10 and 5000)
# And the same on real pods: examples/redis-sentinel.yaml on the real node, the master's pod
# deleted and its redis-server killed, `runs` times each (see tests/benches/failover_pods.rs):
#   hack/bench.sh failover-pods [runs] [delete|kill|both]      (defaults: 5 and both)
# And the fault suite on the three real nodes at length (tests/tests/fault_suite.rs):
# `rounds` rounds over every nemesis kind from `seed`, clients in every zone, the checker's
# table at the end (optional FAULT_KINDS=a,b narrows the kinds, FAULT_HISTORY=path keeps the
# history as JSON lines):
#   hack/bench.sh faults [rounds] [seed]                       (defaults: 100 and a new seed)
# And the local one (tests/tests/redis_sentinel_faults.rs: redis-server processes on this
# machine, two racing data-plane loops):
#   hack/bench.sh faults-local [rounds] [seed]                 (defaults: 30 and a new seed)
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=versions.sh
source hack/versions.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$OPERATOR_KIT_CACHE/cargo-target}
operator=${1:?usage: hack/bench.sh website|redis|app [count] [idle-seconds] | failover [runs] [down-after-ms] | failover-pods [runs] [fault] | faults [rounds] [seed] | faults-local [rounds] [seed]}
if [ "$operator" = failover ]; then
  hack/install-deps.sh
  hack/cluster.sh up >/dev/null
  exec cargo bench --locked -p integration-tests --bench failover -- "${2:-10}" "${3:-5000}"
fi
if [ "$operator" = failover-pods ]; then
  export REAL_NODES=3
  hack/install-deps.sh
  hack/build-binaries.sh
  hack/cluster.sh up >/dev/null
  exec cargo bench --locked -p integration-tests --bench failover_pods -- "${2:-5}" "${3:-both}"
fi
if [ "$operator" = faults ]; then
  export REAL_NODES=3
  hack/install-deps.sh
  hack/build-binaries.sh
  hack/cluster.sh up >/dev/null
  cargo build --locked --release --bin redis-operator
  for socket in .cluster/nodes/*/containerd.sock; do
    hack/images.sh import-operators "$socket"
  done
  export FAULT_ROUNDS=${2:-100}
  [ -z "${3:-}" ] || export FAULT_SEED=$3
  exec cargo test --locked --release -p integration-tests --features operator-kit/testing \
    --test fault_suite -- --nocapture
fi
if [ "$operator" = faults-local ]; then
  hack/install-deps.sh
  export FAULT_ROUNDS=${2:-30}
  [ -z "${3:-}" ] || export FAULT_SEED=$3
  exec cargo test --locked --release -p integration-tests --test redis_sentinel_faults -- --nocapture
fi
count=${2:-1000}
idle_seconds=${3:-120}
chaos=${4:-}
floor= restarts=
if [ "$chaos" = floor ]; then floor=yes chaos=; fi
if [ "$chaos" = restarts ]; then restarts=yes chaos=; fi
[ -z "$chaos" ] || [ "$chaos" = chaos ] || { echo "the fourth argument is 'chaos', 'floor', 'restarts' or nothing" >&2; exit 2; }
[ -z "$floor" ] || [ "$operator" = redis ] || { echo "the floor mode is for redis" >&2; exit 2; }
namespace=bench-$operator
admin=127.0.0.1:18081
# How often Ready is counted: each count lists every object, which at 10,000 costs the API
# server (the machine's busiest process) more than the operator does, so less often there.
poll_seconds=$((count > 1000 ? count / 500 : 2))
case $operator in
  website)
    binary=website-operator crds=crds/website-operator.yaml resource=websites
    object() { printf -- '---\napiVersion: examples.operator-kit.io/v1alpha1\nkind: Website\nmetadata: {name: site-%d}\nspec: {html: "<p>%d</p>", replicas: 1}\n' "$1" "$1"; }
    ;;
  redis)
    binary=redis-operator crds=crds/redis-operator.yaml resource=redises.redis.operator-kit.io
    object() { printf -- '---\napiVersion: redis.operator-kit.io/v1beta1\nkind: Redis\nmetadata: {name: cache-%d}\nspec: {kubernetesConfig: {image: "redis:7.4"}, storage: {volumeClaimTemplate: {spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}}}}\n' "$1"; }
    ;;
  redis-sentinel)
    binary=redis-operator crds=crds/redis-operator.yaml resource=redissentinels.redis.operator-kit.io
    object() { printf -- '---\napiVersion: redis.operator-kit.io/v1beta1\nkind: RedisSentinel\nmetadata: {name: ha-%d}\nspec: {replicas: 3, kubernetesConfig: {image: "redis:7.4"}}\n' "$1"; }
    ;;
  app)
    binary=app-operator crds=crds/app-operator.yaml resource=apps.app.operator-kit.io
    object() { printf -- '---\napiVersion: app.operator-kit.io/v1beta1\nkind: App\nmetadata: {name: web-%d}\nspec: {image: "registry.example.com/web:1", port: 8080, expose: {host: "web-%d.example.com"}}\n' "$1" "$1"; }
    ;;
  *) echo "unknown operator ${operator@Q}: expected website, redis, redis-sentinel or app" >&2; exit 2 ;;
esac

hack/cluster.sh up >/dev/null
eval "$(hack/cluster.sh env)"
cargo build --locked --release --bin "$binary"
kubectl apply --server-side -f "$crds" >/dev/null
kubectl wait --for=condition=Established --timeout=60s -f "$crds" >/dev/null
log=$(mktemp)
start_operator() {
  "$CARGO_TARGET_DIR/release/$binary" --watch-namespace "$namespace" --admin-address "$admin" \
    --log-level warn >>"$log" 2>&1 &
  operator_pid=$!
  until curl -fs "http://$admin/readyz" >/dev/null 2>&1; do sleep 0.05; done
}
# The objects go with the namespace at the end, unless BENCH_KEEP is set or they were an
# earlier run's (`restarts`).
trap 'kill $operator_pid 2>/dev/null || true; [ -n "${BENCH_KEEP:-}$restarts" ] || kubectl delete namespace "$namespace" --wait=false >/dev/null 2>&1 || true' EXIT
metric() { curl -fs "http://$admin/metrics" | awk -v name="$1" '$1 == name {print $2}'; }
mutating() {
  local total=0 method value
  for method in POST PUT PATCH DELETE; do
    value=$(metric "rest_client_requests_total{method=\"$method\"}")
    total=$((total + ${value:-0}))
  done
  echo "$total"
}
all_requests() { curl -fs "http://$admin/metrics" | awk '$1 ~ /^rest_client_requests_total/ {sum += $2} END {print sum + 0}'; }
reconciled() { curl -fs "http://$admin/metrics" | awk '$1 ~ /^controller_runtime_reconcile_total/ {sum += $2} END {print sum + 0}'; }
since() { echo "$(date +%s.%N) - $1" | bc; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$operator_pid/stat"; }
peak_rss_mib() { echo "$(awk '/VmHWM/ {print $2}' "/proc/$operator_pid/status") / 1024" | bc -l; }

if [ -n "$restarts" ]; then
  # Starts on the `count` objects an earlier run left in place (BENCH_KEEP=1), 3 times: time
  # to /readyz, to a first reconcile of each, requests and peak RSS of each start; medians.
  [ "$(kubectl -n "$namespace" get "$resource" -o name | wc -l)" -ge "$count" ] ||
    { echo "fewer than $count $resource in $namespace: run BENCH_KEEP=1 hack/bench.sh $operator $count first" >&2; exit 1; }
  results=$(mktemp)
  for run in 1 2 3; do
    started=$(date +%s.%N)
    start_operator
    ready_after=$(since "$started")
    until [ "$(reconciled)" -ge "$count" ]; do sleep 0.2; done
    pass_after=$(since "$started")
    cpu=$(echo "$(cpu_ticks) / $(getconf CLK_TCK)" | bc -l)
    printf '%.2f %.1f %s %.1f %.1f\n' "$ready_after" "$pass_after" "$(all_requests)" "$(peak_rss_mib)" "$cpu" |
      tee -a "$results" | awk -v run="$run" '{printf "  start %d: /readyz after %s s, each reconciled once after %s s, %s requests, peak RSS %s MiB, %s CPU-seconds\n", run, $1, $2, $3, $4, $5}'
    kill "$operator_pid"; wait "$operator_pid" 2>/dev/null || true
  done
  median() { cut -d' ' -f"$1" "$results" | sort -n | sed -n 2p; }
  printf '%s restarted on %d %s (medians of 3): /readyz %s s, each reconciled once %s s, %s requests, peak RSS %s MiB, %s CPU-seconds\n' \
    "$binary" "$count" "$resource" "$(median 1)" "$(median 2)" "$(median 3)" "$(median 4)" "$(median 5)"
  exit 0
fi
kubectl delete namespace "$namespace" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$namespace" >/dev/null
start_operator

manifest=$(mktemp)
for ((index = 0; index < count; index++)); do object "$index"; done >"$manifest"

if [ -n "$floor" ]; then
  # The children of one Redis, as the operator makes them; then the Redis goes again.
  object 0 | sed 's/cache-0/floorseed/' | kubectl -n "$namespace" create -f - >/dev/null
  kubectl -n "$namespace" wait --for=condition=Ready --timeout=120s redis/floorseed >/dev/null
  seed=$(mktemp)
  kubectl -n "$namespace" get configmaps,services,statefulsets \
    -l app.kubernetes.io/instance=floorseed -o json >"$seed"
  kubectl -n "$namespace" delete redis floorseed --wait=true >/dev/null
  kubectl -n "$namespace" wait --for=delete --timeout=120s statefulset/floorseed >/dev/null 2>&1 || true
  floor_namespace=bench-floor
  kubectl delete namespace "$floor_namespace" --ignore-not-found --wait=true >/dev/null
  kubectl create namespace "$floor_namespace" >/dev/null
  floor_manifest=$(mktemp)
  python3 hack/floor-children.py floorseed floor "$count" <"$seed" >"$floor_manifest"
  count_floor_ready() {
    kubectl -n "$floor_namespace" get statefulsets -o jsonpath='{range .items[*]}{.status.readyReplicas}{"\n"}{end}' | grep -c '^1$' || true
  }
  floor_start=$(date +%s.%N)
  kubectl -n "$floor_namespace" create -f "$floor_manifest" >/dev/null
  floor_created=$(since "$floor_start")
  until [ "$(count_floor_ready)" -ge "$count" ]; do sleep "$poll_seconds"; done
  floor_ready=$(since "$floor_start")
  # The operator's run starts on a cluster as empty as the floor's did.
  kubectl delete namespace "$floor_namespace" --wait=true >/dev/null
fi
requests_before=$(all_requests)
mutating_before=$(mutating)
gets_before=$(metric 'rest_client_requests_total{method="GET"}')
start=$(date +%s.%N)
kubectl -n "$namespace" create -f "$manifest" >/dev/null
created=$(date +%s.%N)
count_ready() {
  if [ "$operator" = redis-sentinel ]; then
    # No Redis runs in kwok's pods: "ready" here is every pod of the set ready.
    kubectl -n "$namespace" get statefulsets -o jsonpath='{range .items[*]}{.status.readyReplicas}{"\n"}{end}' | grep -c '^3$' || true
    return
  fi
  kubectl -n "$namespace" get "$resource" -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true
}
wait_ready() {
  ready=0
  while [ "$ready" -lt "$1" ]; do
    sleep "$poll_seconds"
    ready=$(count_ready)
  done
}
if [ -n "$chaos" ]; then
  wait_ready $((count / 4))
  kill -9 "$operator_pid"
  killed_at=$(date +%s.%N) ready_when_killed=$(count_ready)
  start_operator
  restarted_after=$(since "$killed_at")
  wait_ready $((count / 2))
  ready_when_api_restarted=$(count_ready)
  api_restart_started=$(date +%s.%N)
  hack/cluster.sh restart kube-apiserver >/dev/null
  api_restarted_after=$(since "$api_restart_started")
fi
wait_ready "$count"
done_at=$(date +%s.%N)
requests_at_ready=$(($(all_requests) - requests_before))
gets_at_ready=$(($(metric 'rest_client_requests_total{method="GET"}') - gets_before))
mutating_at_ready=$(($(mutating) - mutating_before))
cpu_at_ready=$(cpu_ticks)
port_forwards_at_ready=$(metric operator_kit_port_forward_requests_total)
sleep "$idle_seconds"
idle_cpu=$(echo "($(cpu_ticks) - $cpu_at_ready) / $(getconf CLK_TCK)" | bc -l)
idle_port_forwards=$(($(metric operator_kit_port_forward_requests_total) - ${port_forwards_at_ready:-0}))
idle_mutating=$(($(mutating) - mutating_before - mutating_at_ready))
idle_requests=$(($(all_requests) - requests_before - requests_at_ready))
peak_rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$operator_pid/status")
rss_at_end_kib=$(awk '/VmRSS/ {print $2}' "/proc/$operator_pid/status")
# A restart with every object in place: time to /readyz, then to a first reconcile of each
# (not with chaos, which goes on with the same process).
if [ -z "$chaos" ]; then
  kill "$operator_pid"
  wait "$operator_pid" 2>/dev/null || true
  restart_start=$(date +%s.%N)
  start_operator
  restart_ready=$(since "$restart_start")
  until [ "$(reconciled)" -ge "$count" ]; do sleep 0.5; done
  restart_pass=$(since "$restart_start")
  restart_requests=$(all_requests)
  restart_gets=$(metric 'rest_client_requests_total{method="GET"}')
  restart_peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$operator_pid/status")
fi

printf '\n%s benchmark: %d objects\n' "$binary" "$count"
printf '  kubectl create of all objects:   %.1f s\n' "$(echo "$created - $start" | bc)"
printf '  time to all Ready:               %.1f s\n' "$(echo "$done_at - $start" | bc)"
printf '  operator peak RSS:               %.1f MiB (%.1f MiB at the end)\n' "$(echo "$peak_rss_kib / 1024" | bc -l)" \
  "$(echo "$rss_at_end_kib / 1024" | bc -l)"
printf '  operator API requests to Ready:  %s (%s mutating)\n' "$requests_at_ready" "$mutating_at_ready"
printf '  requests in %d s idle:           %s (%s mutating)\n' "$idle_seconds" "$idle_requests" "$idle_mutating"
printf '  requests to Ready per object:    %.1f (%.1f GET)\n' "$(echo "$requests_at_ready / $count" | bc -l)" \
  "$(echo "$gets_at_ready / $count" | bc -l)"
printf '  at rest for %d s: %.2f requests/s, %.2f port-forwards/s, %.1f CPU-seconds\n' "$idle_seconds" \
  "$(echo "$idle_requests / $idle_seconds" | bc -l)" "$(echo "$idle_port_forwards / $idle_seconds" | bc -l)" "$idle_cpu"
[ -n "$chaos" ] || printf '  restarted with all %d in place: /readyz after %.1f s, each reconciled once after %.1f s, %s requests (%s GET), peak RSS %.1f MiB\n' \
  "$count" "$restart_ready" "$restart_pass" "$restart_requests" "$restart_gets" "$(echo "$restart_peak_kib / 1024" | bc -l)"
if [ -n "$floor" ]; then
  printf '  floor (same children, kubectl create, no operator): created in %.1f s, all ready in %.1f s\n' \
    "$floor_created" "$floor_ready"
  printf '  time to all Ready / floor:       %.2f\n' "$(echo "($done_at - $start) / $floor_ready" | bc -l)"
fi
if [ -n "$chaos" ]; then
  printf '  chaos: SIGKILL with %d Ready; the operator ready again after %.1f s\n' "$ready_when_killed" "$restarted_after"
  printf '  chaos: API server restarted with %d Ready; it took %.1f s\n' "$ready_when_api_restarted" "$api_restarted_after"
  # The same operator process must still see new objects: one more, created now.
  after_start=$(date +%s.%N)
  object "$count" | kubectl -n "$namespace" create -f - >/dev/null
  wait_ready $((count + 1))
  printf '  chaos: an object created after both faults Ready in %.1f s (operator pid unchanged: %s)\n' \
    "$(since "$after_start")" "$(kill -0 "$operator_pid" && echo yes)"
  # Every child has exactly one controller, a live object of ours; each kind has one per object.
  owners=$(mktemp)
  # (A claim's owners are its Redis and, by its retention policy, its StatefulSet.)
  for kind in "$resource" statefulsets; do
    kubectl -n "$namespace" get "$kind" -o jsonpath='{range .items[*]}{.metadata.uid}{"\n"}{end}'
  done | sort >"$owners"
  orphans=0
  for kind in statefulsets services configmaps persistentvolumeclaims; do
    listed=$(kubectl -n "$namespace" get "$kind" -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.ownerReferences[*].uid}{"\n"}{end}' | grep -v '^kube-root-ca.crt ')
    total=$(grep -c . <<<"$listed" || true)
    unowned=$(awk '{ for (i = 2; i <= NF; i++) print $i }' <<<"$listed" | sort -u | comm -23 - "$owners" | wc -l)
    without=$(awk 'NF < 2' <<<"$listed" | wc -l)
    orphans=$((orphans + without))
    printf '  chaos: %-22s %5d (%d per object), owned by no live object: %d, with no owner: %d\n' \
      "$kind" "$total" "$((total / (count + 1)))" "$unowned" "$without"
  done
  printf '  chaos: orphans %d\n' "$orphans"
fi
curl -fs "http://$admin/metrics" | grep -E '^(rest_client_requests_total|controller_runtime_reconcile_total)' | sed 's/^/  /'

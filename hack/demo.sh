#!/usr/bin/env bash
# The main job on a fresh machine: builds and starts the local cluster, installs the CRDs,
# runs redis-operator, applies examples/redis-standalone.yaml and shows it Ready.
# The cluster and the operator keep running; `hack/cluster.sh down` stops both.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=versions.sh
source hack/versions.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$OPERATOR_KIT_CACHE/cargo-target}

hack/install-deps.sh
hack/cluster.sh up >/dev/null
eval "$(hack/cluster.sh env)"
state_dir=${OPERATOR_KIT_CLUSTER_DIR:-$repo_root/.cluster}

cargo build --locked --bin redis-operator
kubectl apply --server-side -f crds/redis-operator.yaml
kubectl wait --for=condition=Established --timeout=60s -f crds/redis-operator.yaml

pid_file=$state_dir/redis-operator.pid
if [ -f "$pid_file" ] && kill -0 "$(<"$pid_file")" 2>/dev/null; then
  kill "$(<"$pid_file")"
  while kill -0 "$(<"$pid_file")" 2>/dev/null; do sleep 0.2; done
fi
admin_address=${REDIS_OPERATOR_ADMIN_ADDRESS:-127.0.0.1:8080}
if holder=$(ss -Hltnp "sport = :${admin_address##*:}" 2>/dev/null) && [ -n "$holder" ]; then
  echo "demo: ${admin_address} is taken, so redis-operator cannot serve its metrics there:" >&2
  echo "  $holder" >&2
  echo "demo: stop that process or set REDIS_OPERATOR_ADMIN_ADDRESS=127.0.0.1:<port>" >&2
  exit 1
fi
operator_log=$state_dir/logs/redis-operator.log
# It watches the demo's namespace only: the tests' operators run next to it, in namespaces of
# their own, and must be the only ones reconciling their objects.
setsid "$CARGO_TARGET_DIR/debug/redis-operator" --admin-address "$admin_address" \
  --watch-namespace default \
  >"$operator_log" 2>&1 </dev/null &
echo $! >"$pid_file"
# Ready once its watches have listed everything; a failed start is shown, not waited out.
until curl -fsS "http://$admin_address/readyz" >/dev/null 2>&1; do
  if ! kill -0 "$(<"$pid_file")" 2>/dev/null; then
    echo "demo: redis-operator exited; its log ($operator_log):" >&2
    tail -n 20 "$operator_log" >&2
    exit 1
  fi
  sleep 0.2
done

kubectl apply -n default -f examples/redis-standalone.yaml
kubectl wait -n default --for=condition=Ready --timeout=120s redises/redis-standalone
# `redis` is also the category of both Redis kinds, so name the resource type in full.
kubectl get -n default redises.redis.operator-kit.io redis-standalone -o wide
kubectl get -n default statefulsets,services,configmaps,persistentvolumeclaims -l app.kubernetes.io/instance=redis-standalone
echo
echo "redis-operator runs in the background (log: $operator_log, metrics: http://$admin_address/metrics)."
echo "The pods are kwok's: scheduled and Ready, but no redis-server runs in them (see README)."
echo "Use the cluster with:"
hack/cluster.sh env

#!/usr/bin/env bash
# The main job on a fresh machine: builds and starts the local cluster, installs the example
# operator's CRD, runs the operator, applies examples/website.yaml and shows it Ready.
# The cluster and the operator keep running; stop them with `hack/cluster.sh down`.
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

cargo build --locked --bin website-operator
operator=$CARGO_TARGET_DIR/debug/website-operator
kubectl apply --server-side -f crds/website-operator.yaml
kubectl wait --for=condition=Established --timeout=60s crd/websites.examples.operator-kit.io

if [ -f "$state_dir/website-operator.pid" ] && kill -0 "$(<"$state_dir/website-operator.pid")" 2>/dev/null; then
  kill "$(<"$state_dir/website-operator.pid")"
fi
setsid "$operator" --admin-address 127.0.0.1:8080 >"$state_dir/logs/website-operator.log" 2>&1 </dev/null &
echo $! >"$state_dir/website-operator.pid"

kubectl apply -f examples/website.yaml
kubectl wait --for=condition=Ready --timeout=120s website/hello
kubectl get websites,deployments,services,configmaps -l app.kubernetes.io/instance=hello
echo
echo "website-operator runs in the background (log: $state_dir/logs/website-operator.log, metrics: http://127.0.0.1:8080/metrics)."
echo "Use the cluster with:"
hack/cluster.sh env

#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the integration tests against the
# local cluster. Builds what is missing, starts the cluster unless one is already running,
# and stops the cluster it started even when tests fail.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=versions.sh
source hack/versions.sh
# One target folder for every checkout on the machine keeps CI's fresh clones warm.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$OPERATOR_KIT_CACHE/cargo-target}
start=$SECONDS
step() { printf '\n[test] %s (%d s elapsed)\n' "$*" $((SECONDS - start)) >&2; }

# The integration tests include pods on the local cluster's three real nodes (each with its
# containerd, kubelet and kube-proxy in a network namespace of its own): the fault suite
# partitions, freezes, kills and drains them.
export REAL_NODES=3
step "pruning stale build output (a full disk puts the real node under DiskPressure)"
hack/prune-target.sh
step "installing system packages"
hack/install-deps.sh
step "building the cluster binaries"
hack/build-binaries.sh

started_cluster=false
if ! hack/cluster.sh status >/dev/null 2>&1; then
  step "starting the local cluster"
  hack/cluster.sh up >/dev/null
  started_cluster=true
fi
state_dir=${OPERATOR_KIT_CLUSTER_DIR:-$repo_root/.cluster}
if [ "$(cat "$state_dir/real-nodes" 2>/dev/null || echo 0)" != "$REAL_NODES" ]; then
  echo "[test] error: the running cluster does not have $REAL_NODES real nodes; stop it (hack/cluster.sh down) and run again" >&2
  exit 1
fi
stop_cluster() { if $started_cluster; then hack/cluster.sh down; fi; }
trap stop_cluster EXIT
eval "$(hack/cluster.sh env)"

step "building the operators' images for the real node"
# The chart test installs the operator as users do, from its image: the release binary in an
# image named as the chart's default, imported into the real node's containerd.
cargo build --release --locked --bin redis-operator --bin app-operator
for socket in "$state_dir"/nodes/*/containerd.sock; do hack/images.sh import-operators "$socket"; done

step "checking formatting, lints and docs"
# Not --all-features: operator-kit's v1_* features each pick a Kubernetes version, and
# k8s-openapi builds with exactly one.
cargo fmt --all --check
cargo clippy --workspace --all-targets --features operator-kit/testing --locked -- -D warnings
# The library selects no Kubernetes version; check it against the oldest one k8s-openapi
# supports too, and its docs with missing_docs denied.
cargo check --locked -p operator-kit --lib --features testing,k8s-openapi/earliest
RUSTDOCFLAGS="-D warnings" K8S_OPENAPI_ENABLED_VERSION=1.37 cargo doc --locked --no-deps -p operator-kit --features testing
step "building and testing the template outside the workspace"
hack/check-template.sh
step "running unit and integration tests"
cargo test --workspace --features operator-kit/testing --locked --no-fail-fast
step "all tests passed"

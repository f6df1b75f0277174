#!/usr/bin/env bash
# The newcomer's path, checked on every change: templates/greeting-operator copied out of this
# workspace into a temporary directory, pointed at this checkout by path (as a user's crate
# would be at a release), then formatted, linted, built, tested, and asked for its CRD.
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=versions.sh
source hack/versions.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$OPERATOR_KIT_CACHE/cargo-target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r templates/greeting-operator "$work/"
crate=$work/greeting-operator
sed -i "s|path = \"../../operator-kit\"|path = \"$repo_root/operator-kit\"|" "$crate/Cargo.toml"
grep -q "path = \"$repo_root/operator-kit\"" "$crate/Cargo.toml" || {
  echo "[template] error: the template's Cargo.toml no longer names ../../operator-kit" >&2
  exit 1
}
# The versions this checkout is tested with; cargo trims the lock file to what the template uses.
cp Cargo.lock "$crate/"
cd "$crate"
if grep -Eq '^(kube|k8s-openapi|schemars)[ =]' Cargo.toml; then
  echo "[template] error: the template depends on kube, k8s-openapi or schemars itself" >&2
  exit 1
fi
start=$SECONDS
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test
cargo run --quiet -- --print-crds | grep -q '^kind: CustomResourceDefinition$'
cargo run --quiet -- --help | grep -q -- '--leader-election'
cargo run --quiet -- --help | grep -q -- '--image <IMAGE>'
cargo run --quiet -- --print-rbac | grep -q 'greetings.example.com'
# And it works: on the cluster of the kubeconfig (hack/test.sh runs this with the local
# cluster up), a Greeting reaches Ready. Everything it makes is deleted afterwards.
if [ -n "${KUBECONFIG:-}" ]; then
  namespace=template-check-$$
  binary=$CARGO_TARGET_DIR/debug/greeting-operator
  log=$work/operator.log
  cleanup() {
    [ -z "${operator_pid:-}" ] || kill "$operator_pid" 2>/dev/null || true
    kubectl delete namespace "$namespace" --wait=false >/dev/null 2>&1 || true
    kubectl delete crd greetings.greetings.example.com --wait=false >/dev/null 2>&1 || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  "$binary" --print-crds | kubectl apply --server-side -f - >/dev/null
  kubectl wait --for=condition=Established --timeout=60s crd/greetings.greetings.example.com >/dev/null
  kubectl create namespace "$namespace" >/dev/null
  "$binary" --watch-namespace "$namespace" --admin-address 127.0.0.1:0 >"$log" 2>&1 &
  operator_pid=$!
  printf 'apiVersion: greetings.example.com/v1alpha1\nkind: Greeting\nmetadata: {name: hello}\nspec: {message: "hello, world", replicas: 2}\n' |
    kubectl -n "$namespace" apply -f - >/dev/null
  if ! kubectl -n "$namespace" wait --for=condition=Ready --timeout=90s greeting/hello >/dev/null; then
    echo "[template] error: the Greeting did not become Ready; the operator's log:" >&2
    cat "$log" >&2
    kubectl -n "$namespace" get greeting/hello -o yaml >&2 || true
    exit 1
  fi
  echo "[template] greeting-operator: a Greeting became Ready on the cluster"
fi
lines=$(cat Cargo.toml src/*.rs | wc -l)
echo "[template] greeting-operator: built, linted and tested outside the workspace in $((SECONDS - start)) s ($lines lines)"
